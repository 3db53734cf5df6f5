"""Shared test helper: export a module to ONNX in memory and run it beside PyTorch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch


def onnx_and_torch_outputs(module: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Export ``module`` (legacy exporter, opset 17, dynamic batch) with a batch-2 example of ``x``'s
    shape, run ONNX Runtime on ``x``; returns (onnx output, torch output) of the first output."""
    ort = pytest.importorskip("onnxruntime")
    buf = io.BytesIO()
    torch.onnx.export(module, (torch.randn(2, *x.shape[1:]),), buf, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["out"],
                      dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}})
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = module(x).numpy()
    return got, ref
