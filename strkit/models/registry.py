"""Registries of the four pipeline stages (DESIGN.md §1).

Each registry imports the modules that populate it the first time a name is looked up, so importing
this file does no work. Adding a stage module is one class decorated with ``@BACKBONES.register(...)``
(etc.) in a module listed in :data:`STAGE_MODULES`.

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

# Modules imported (once, on first lookup) to populate each registry. Later stages (e.g. the
# searched backbone) add their module here.
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "rectifier": ("strkit.models.rectifiers", "strkit.models.rectifiers.scrn"),
    "backbone": ("strkit.models.backbones", "strkit.models.backbones.itervm"),
    "sequence": ("strkit.models.sequence",),
    "decoder": ("strkit.models.decoders", "strkit.models.decoders.iterative_vl"),
}


def _loader(kind: str) -> Callable[[], None]:
    def load() -> None:
        for module in STAGE_MODULES[kind]:
            importlib.import_module(module)

    return load


RECTIFIERS: Registry = Registry("rectifier", loader=_loader("rectifier"))
BACKBONES: Registry = Registry("backbone", loader=_loader("backbone"))
SEQUENCES: Registry = Registry("sequence", loader=_loader("sequence"))
DECODERS: Registry = Registry("decoder", loader=_loader("decoder"))

__all__ = ["BACKBONES", "DECODERS", "RECTIFIERS", "SEQUENCES", "STAGE_MODULES"]
