"""The recognition model: four registered stages composed from config.

Importing this package is cheap; the names below load on first use::

    from strkit.models import build_model
    model = build_model(cfg.model, img_h=32, img_w=100, channels=1)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RecognitionModel": "strkit.models.recognizer",
    "ModelOutput": "strkit.models.recognizer",
    "build_model": "strkit.models.recognizer",
    "RECTIFIERS": "strkit.models.registry",
    "BACKBONES": "strkit.models.registry",
    "SEQUENCES": "strkit.models.registry",
    "DECODERS": "strkit.models.registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'strkit.models' has no attribute {name!r}")
