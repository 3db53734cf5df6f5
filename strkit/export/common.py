"""What every exporter shares: the logits-only wrapper, eval mode and quiet tracing for the duration,
example inputs, the probe that compares an exported graph with PyTorch, and atomic writes."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from strkit.inference.metadata import InputSpec
from strkit.models.recognizer import RecognitionModel


class ExportError(RuntimeError):
    """The model could not be exported as asked (the message says what failed and what to change)."""


class LogitsOnly(nn.Module):
    """Wraps a recogniser so that ``forward(images: B×C×H×W) -> logits B×L×K`` (a plain tensor)."""

    def __init__(self, model: RecognitionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration; the previous mode is restored (the exporter's own restore would
    follow the *wrapper's* mode, which starts as training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Silence the known, harmless warnings of tracing: nn.LSTM's internal shape checks and the
    deprecation notices of the TorchScript-based exporter. Tracer warnings from strkit code stay."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*feature will be removed.*")
        # nn.LSTM traced at batch 2: the batch axis is checked by running the graph at batch 3 instead
        warnings.filterwarnings("ignore", message=r".*with a batch_size other than 1.*LSTM.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.(jit|onnx)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.(jit|onnx)")
        yield


def default_input_spec(model: RecognitionModel, keep_ratio: bool = False) -> InputSpec:
    """The input geometry the model was built for."""
    return InputSpec(model.img_h, model.img_w, model.channels, keep_ratio=keep_ratio)


def example_input(spec: InputSpec, batch: int = 2, width: int | None = None) -> Tensor:
    """Deterministic B×C×H×W images in [-1, 1] (for tracing and shape probes)."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, spec.channels, spec.img_h, width or spec.img_w, generator=gen) * 2 - 1


def probe_width(spec: InputSpec) -> int:
    """A second input width (wider than ``img_w``, a multiple of 4) used to check a dynamic width axis."""
    w = spec.img_w + max(8, spec.img_w // 2)
    return (w + 3) // 4 * 4


def mismatch(ref: Tensor, out: np.ndarray | Tensor, rtol: float = 1e-3) -> str | None:
    """Why ``out`` differs from ``ref`` (shape, or values beyond ``rtol`` of the logit range), or None."""
    out_t = torch.as_tensor(np.asarray(out)) if not isinstance(out, Tensor) else out
    if tuple(out_t.shape) != tuple(ref.shape):
        return f"output shape {tuple(out_t.shape)} instead of {tuple(ref.shape)}"
    diff = float((out_t.float() - ref.float()).abs().max()) if ref.numel() else 0.0
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    if not diff <= rtol * scale:
        return f"max |logit difference| {diff:.3g} (tolerance {rtol * scale:.3g})"
    return None


def probe(model: RecognitionModel, run: Callable[[Tensor], Any], x: Tensor) -> str | None:
    """Run the exported graph and the model on ``x``; the reason they disagree, or None."""
    with torch.inference_mode():
        ref = model(x).logits
    try:
        out = run(x)
    except Exception as exc:  # noqa: BLE001 - any runtime failure means "this shape is not supported"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return mismatch(ref, out)




