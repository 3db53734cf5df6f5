"""int8 quantisation of an ONNX export with ONNX Runtime (static QDQ with calibration images, or dynamic)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from strkit.export.onnx import write_onnx_metadata
from strkit.inference.images import load_image
from strkit.inference.metadata import INPUT_NAME, ExportMetadata
from strkit.inference.onnx_backend import read_onnx_metadata

QUANT_MODES = ("static", "dynamic")


class _CalibrationReader:
    """Feeds calibration batches (``images`` B×C×H×W float32) to ONNX Runtime's calibrator."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = batches
        self._iter = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "LSTM", "GRU")  # ConvInteger: several times slower than fp32 on the CPUs measured
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")


def default_quant_exclusions(meta: ExportMetadata) -> tuple[str, ...]:
    """Node-name prefixes kept in float by :func:`quantize_onnx` unless told otherwise.

    - ``/model/rectifier/MatMul``: the TPS sampling-grid product (int8 coordinates would move every
      sampled pixel);
    - ``/model/decoder/`` of attention decoders: the greedy loop feeds each step's argmax back, so
      rounding errors can change every later character, and its batch-1 matrices are too small to gain.

    The names are the module scopes of PyTorch's TorchScript-based exporter (``/model/<stage>/...``).
    """
    prefixes = ["/model/rectifier/MatMul"]
    if meta.codec_kind == "attention":
        prefixes.append("/model/decoder/")
    return tuple(prefixes)


def _nodes_to_exclude(model_path: Path, prefixes: Sequence[str]) -> list[str]:
    """Names of nodes matching ``prefixes``, plus weight ops whose weight is all zeros (ONNX Runtime's
    quantiser divides by their zero range)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    zero = {init.name for init in graph.initializer
            if init.data_type == onnx.TensorProto.FLOAT and not np.any(numpy_helper.to_array(init))}
    out = []
    for node in graph.node:
        if any(node.name.startswith(p) for p in prefixes):
            out.append(node.name)
        elif node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in zero:
            out.append(node.name)
    return out


class _DropAlreadyQuantizedNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "already quantized" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Hide the quantiser's root-logger notice "check if the model is already quantized", which the
    second (LSTM) pass of static mode triggers by design; the filter is removed afterwards."""
    root = logging.getLogger()
    flt = _DropAlreadyQuantizedNotice()
    root.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"onnxruntime\.quantization")
            yield
    finally:
        root.removeFilter(flt)


def quantize_onnx(src: str | Path, dst: str | Path, mode: str = "static",
                  calibration: Sequence[Any] | None = None, per_channel: bool = True,
                  batch_size: int = 16, exclude: Sequence[str] | None = None,
                  lstm_dynamic: bool = True) -> ExportMetadata:
    """Write an int8 version of the fp32 ONNX model ``src`` to ``dst`` with ONNX Runtime's quantiser.

    Args:
        mode: ``static`` (QDQ format: int8 weights, per channel, and int8 activations whose ranges are
            measured (min/max) on ``calibration``; LSTMs see ``lstm_dynamic``) or ``dynamic`` (int8 weights of
            MatMul / Gemm / LSTM, activation ranges computed at run time, no calibration; convolutions
            stay float).
        calibration: for ``static``: training crops (arrays, paths or PIL images), preprocessed with the
            model's metadata; never benchmark images.
        per_channel: per-output-channel weight scales.
        batch_size: calibration batch size.
        exclude: node-name prefixes to keep in float (default :func:`default_quant_exclusions`).
        lstm_dynamic: in ``static`` mode, also give LSTMs int8 weights (dynamic quantisation: QDQ does
            not cover LSTMs, and they dominate the batch-1 latency of small CNN + BiLSTM models).

    Returns:
        The metadata written into ``dst`` (``extra['quantization']`` describes the settings).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantisation mode '{mode}'; use one of: {', '.join(QUANT_MODES)}")
    meta = read_onnx_metadata(src)
    prefixes = tuple(default_quant_exclusions(meta) if exclude is None else exclude)
    notes: dict[str, Any] = {"mode": mode, "per_channel": per_channel, "weights": "int8",
                             "float_scopes": list(prefixes)}
    with tempfile.TemporaryDirectory(prefix="strkit-quant-") as tmp, _quiet_quantizer():
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(src), str(pre))
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; quantise without it
            notes["pre_process"] = f"skipped ({type(exc).__name__})"
            pre = Path(src)
        skip = _nodes_to_exclude(pre, prefixes)
        notes["float_nodes"] = len(skip)
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=list(DYNAMIC_OP_TYPES), nodes_to_exclude=skip)
            notes["op_types"] = list(DYNAMIC_OP_TYPES)
        else:
            if not calibration:
                raise ValueError("static int8 quantisation needs calibration images (training crops)")
            transform = meta.input.transform()
            items = [transform(load_image(x)).numpy() for x in calibration]
            batches = [np.stack(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
            static_out = Path(tmp) / "static.onnx" if lstm_dynamic else out
            quantize_static(str(pre), str(static_out), _CalibrationReader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=skip)
            notes.update(activations="int8 (QDQ, min/max calibration)", calibration_images=len(items))
            if lstm_dynamic:  # QDQ leaves LSTMs in float; give them int8 weights dynamically
                quantize_dynamic(str(static_out), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                                 op_types_to_quantize=["LSTM"], nodes_to_exclude=skip)
                notes["lstm"] = "int8 weights (dynamic)"
        proto = onnx.load(str(out))
    meta = meta.with_extra(quantization=notes)
    write_onnx_metadata(proto, meta, dst)
    return meta


