"""Rebuild a :class:`~strkit.models.recognizer.RecognitionModel` from a self-describing checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from strkit.charset import Charset
from strkit.checkpoint import load_checkpoint
from strkit.config import Config, from_dict

from .recognizer import RecognitionModel, build_model


def model_from_payload(payload: dict) -> tuple[RecognitionModel, Config]:
    """Build the model described by a loaded checkpoint payload and load its weights."""
    cfg = from_dict(payload["config"])
    charset = Charset.from_dict(payload["charset"])
    if payload.get("arch"):  # a searched backbone: the architecture travels inside the checkpoint
        cfg.model.backbone = {**cfg.model.backbone, "arch": payload["arch"]}
    if payload.get("rectifier_arch"):  # a searched tps localisation body, likewise
        rect = {"name": cfg.model.rectifier} if isinstance(cfg.model.rectifier, str) else dict(cfg.model.rectifier)
        cfg.model.rectifier = {**rect, "loc": {**dict(rect.get("loc") or {}), "arch": payload["rectifier_arch"]}}
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels, charset=charset)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, cfg


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[RecognitionModel, Config]:
    """Load ``path`` (a ``best.pt`` / ``last.pt``) onto ``device``; returns (model in eval mode, config)."""
    model, cfg = model_from_payload(load_checkpoint(path))
    return model.to(device), cfg
