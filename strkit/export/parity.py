"""Parity of an exported model (ONNX Runtime, TorchScript) with PyTorch on the same images."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from strkit.data.transforms import ImageTransform
from strkit.export.common import ExportError, eval_mode
from strkit.export.torchscript import load_torchscript
from strkit.inference.images import load_image
from strkit.inference.onnx_backend import OnnxBackend
from strkit.models.recognizer import RecognitionModel


@dataclass
class ParityReport:
    """Agreement between PyTorch and an exported model on the same images.

    Attributes:
        backend: what was compared (``onnxruntime``, ``torchscript``, ``onnxruntime-int8`` ...).
        count: images compared; same_text: images decoded to the same text by both.
        max_prob_diff: max |softmax(torch) − softmax(exported)| over all images, steps and classes.
        max_logit_diff: max |logit difference|.
        batch_size: images per batch fed to both.
        mismatches: up to 20 ``{index, image, torch, exported}`` records of images read differently.
    """

    backend: str
    count: int = 0
    same_text: int = 0
    max_prob_diff: float = 0.0
    max_logit_diff: float = 0.0
    batch_size: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every image gave the same text."""
        return self.count > 0 and self.same_text == self.count

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        return (f"{self.backend}: same text on {self.same_text}/{self.count} images; "
                f"max |prob diff| {self.max_prob_diff:.3g}, max |logit diff| {self.max_logit_diff:.3g}")


def _worse(current: float, new: float) -> float:
    """The larger difference; NaN (a broken graph) wins over any number."""
    if math.isnan(current) or math.isnan(new):
        return math.nan
    return max(current, new)


def compare_with_torch(model: RecognitionModel, run: Callable[[Tensor], Tensor | np.ndarray],
                       images: Sequence[Any], transform: ImageTransform, backend: str,
                       batch_size: int = 32, names: Sequence[str] | None = None) -> ParityReport:
    """Feed the same preprocessed batches to ``model`` and ``run`` (B×C×H×W -> B×L×K logits) and compare
    logits, probabilities and the decoded text (both decoded with the model's decoder).

    Args:
        images: numpy arrays, paths or PIL images (see :func:`strkit.inference.images.load_image`).
        transform: the preprocessing (e.g. :meth:`InputSpec.transform`).
        names: labels for the images in the mismatch list (default: the path or the index).
    """
    if not images:
        raise ValueError("parity check: no images given")
    report = ParityReport(backend=backend, batch_size=batch_size)
    items = list(images)
    names = list(names) if names is not None else [str(x) if isinstance(x, str | Path) else f"#{i}"
                                                     for i, x in enumerate(items)]
    with eval_mode(model):
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start:start + batch_size]
            x = torch.stack([transform(load_image(item)) for item in chunk])
            with torch.inference_mode():
                ref = model(x).logits.float()
                ref_text = [p.text for p in model.decoder.decode(ref, model.codec)]
            raw = run(x)
            out = (raw if isinstance(raw, Tensor) else torch.from_numpy(np.asarray(raw))).float()
            if out.shape != ref.shape:
                raise ExportError(f"{backend}: output shape {tuple(out.shape)} differs from PyTorch's "
                                  f"{tuple(ref.shape)}")
            with torch.inference_mode():
                out_text = [p.text for p in model.decoder.decode(out, model.codec)]
                report.max_logit_diff = _worse(report.max_logit_diff, float((out - ref).abs().max()))
                report.max_prob_diff = _worse(report.max_prob_diff,
                                              float((out.softmax(-1) - ref.softmax(-1)).abs().max()))
            for i, (a, b) in enumerate(zip(ref_text, out_text, strict=True)):
                report.count += 1
                if a == b:
                    report.same_text += 1
                elif len(report.mismatches) < 20:
                    report.mismatches.append({"index": start + i, "image": names[start + i], "torch": a,
                                              "exported": b})
    return report


def parity_check(model: RecognitionModel, onnx_path: str | Path, images: Sequence[Any],
                 transform: ImageTransform | None = None, batch_size: int = 32, threads: int | None = 1,
                 backend: str = "onnxruntime", names: Sequence[str] | None = None) -> ParityReport:
    """Compare ``model`` with the ONNX file run by ONNX Runtime on ``images`` (see
    :func:`compare_with_torch`); ``transform`` defaults to the file's metadata preprocessing."""
    session = OnnxBackend(onnx_path, threads=threads)
    return compare_with_torch(model, session.logits, images, transform or session.input_spec.transform(),
                              backend, batch_size, names)


def torchscript_parity_check(model: RecognitionModel, ts_path: str | Path, images: Sequence[Any],
                             transform: ImageTransform | None = None, batch_size: int = 32,
                             names: Sequence[str] | None = None) -> ParityReport:
    """Compare ``model`` with a module written by :func:`export_torchscript` on ``images``."""
    module, meta = load_torchscript(ts_path)

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return module(x)

    return compare_with_torch(model, run, images, transform or meta.input.transform(), "torchscript",
                              batch_size, names)

