"""The interface :class:`strkit.api.Recognizer` drives: a model that turns image batches into predictions."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from strkit.charset import Charset
from strkit.greedy_decoding import Prediction
from strkit.inference.metadata import InputSpec


@runtime_checkable
class InferenceBackend(Protocol):
    """A recogniser ready to run.

    Attributes:
        name: ``torch`` or ``onnxruntime`` (for reports).
        charset: the characters the model reads.
        input_spec: the image geometry and preprocessing the model expects.
        dynamic_width: whether batches narrower than ``input_spec.img_w`` may be fed.
        temperature: the calibration temperature ``T``: :meth:`predict` decodes ``logits / T`` (1 = none).
    """

    name: str
    charset: Charset
    input_spec: InputSpec
    dynamic_width: bool
    temperature: float

    def predict(self, images: Tensor) -> list[Prediction]:
        """B×C×H×W float32 images (normalised to [-1, 1]) -> B predictions."""
        ...

    def logits(self, images: Tensor) -> Tensor:
        """B×C×H×W float32 images -> B×L×K float32 logits on the CPU."""
        ...
