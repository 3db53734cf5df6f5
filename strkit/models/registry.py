"""Registries of the four pipeline stages.

Each registry imports its stage package (:data:`STAGE_PACKAGES`) the first time a name is looked up, so
importing this file does no work. Each stage package imports all of its modules, so adding a stage module
is one class decorated with ``@BACKBONES.register(...)`` (etc.) in a new module of that package, imported
by the package's ``__init__``.

Stage contracts (constructor keywords come from the config mapping minus ``name``, plus the shape
arguments supplied by :class:`strkit.models.recognizer.RecognitionModel`):

- rectifier ``(img_h, img_w, in_channels, **cfg)``: ``forward(x: B×C×H×W) -> B×C×H×W``.
- backbone ``(in_channels, img_h, img_w, **cfg)``: attributes ``out_channels`` (C') and ``out_hw``
  ((H', W') for the configured input); ``forward(x: B×C×H×W) -> B×C'×H'×W'``.
- sequence ``(input_size, **cfg)``: attribute ``out_size`` (D'); ``forward(x: B×T×D) -> B×T×D'``.
- decoder ``(input_size, num_classes, max_length, **codec ids, **cfg)``: class attributes
  ``codec_kind`` (``"ctc"`` / ``"attention"``) and ``codec_ids`` (names of codec attributes the
  builder passes as keywords, e.g. ``("blank",)``); ``forward(features: B×T×D, targets) -> B×L×K``
  logits, ``loss(logits, targets) -> scalar``, ``decode(logits, codec) -> list[Prediction]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from strkit.registry import Registry

#: The package of each stage, imported (once, on first lookup) to populate its registry.
STAGE_PACKAGES: dict[str, str] = {
    "rectifier": "strkit.models.rectifiers",
    "backbone": "strkit.models.backbones",
    "sequence": "strkit.models.sequence",
    "decoder": "strkit.models.decoders",
}


def _loader(kind: str) -> Callable[[], None]:
    def load() -> None:
        importlib.import_module(STAGE_PACKAGES[kind])

    return load


RECTIFIERS: Registry = Registry("rectifier", loader=_loader("rectifier"))
BACKBONES: Registry = Registry("backbone", loader=_loader("backbone"))
SEQUENCES: Registry = Registry("sequence", loader=_loader("sequence"))
DECODERS: Registry = Registry("decoder", loader=_loader("decoder"))

__all__ = ["BACKBONES", "DECODERS", "RECTIFIERS", "SEQUENCES", "STAGE_PACKAGES"]
