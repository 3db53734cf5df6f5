"""Run a :class:`~strkit.models.recognizer.RecognitionModel` for inference (PyTorch backend)."""

from __future__ import annotations

import torch
from torch import Tensor

from strkit.charset import Charset
from strkit.greedy_decoding import Prediction
from strkit.inference.decoding import scale_logits
from strkit.inference.metadata import ExportMetadata, InputSpec
from strkit.models.optimize import fuse_for_inference
from strkit.models.recognizer import RecognitionModel


class TorchBackend:
    """A model in eval mode, run under ``torch.inference_mode``, optionally channels-last.

    Args:
        model: the recogniser (moved to ``device`` and put in eval mode).
        input_spec: its input geometry (from the run's ``data`` config).
        device: where to run.
        channels_last: store weights and inputs channels-last (NHWC); often faster for convolutions on
            CPUs with AVX-512 (measure: it depends on the backbone).
        fuse: run a copy of ``model`` with every Conv2d + BatchNorm2d pair folded into one convolution
            (:func:`strkit.models.optimize.fuse_for_inference`: the same function, one kernel fewer per
            pair; the caller's model is left as it was). ``False`` runs ``model`` itself.

    Any input width is accepted (``dynamic_width``): convolutions and the sequence stage follow it, and
    a TPS rectifier resamples to its fixed output size.
    """

    name = "torch"
    dynamic_width = True

    def __init__(self, model: RecognitionModel, input_spec: InputSpec, device: str | torch.device = "cpu",
                 channels_last: bool = False, fuse: bool = True) -> None:
        self.device = torch.device(device)
        self.model = (fuse_for_inference(model) if fuse else model).to(self.device).eval()
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.input_spec = input_spec

    @property
    def charset(self) -> Charset:
        return self.model.charset

    def logits(self, images: Tensor) -> Tensor:
        """B×C×H×W float32 images -> B×L×K logits (on the model's device)."""
        with torch.inference_mode():
            x = images.to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).logits

    def predict(self, images: Tensor) -> list[Prediction]:
        """B×C×H×W images -> B predictions, decoded as configured on the model's decoder (from
        ``logits / temperature``)."""
        with torch.inference_mode():
            return self.model.decoder.decode(scale_logits(self.logits(images), self.temperature), self.model.codec)

    @property
    def temperature(self) -> float:
        """The model's calibration temperature (1 = none)."""
        return float(getattr(self.model, "temperature", 1.0))

    @property
    def metadata(self) -> ExportMetadata:
        """The model's decoding metadata, as an export would carry it (charset, codec, decoder config)."""
        return ExportMetadata.from_model(self.model, self.input_spec, dynamic_width=True)
