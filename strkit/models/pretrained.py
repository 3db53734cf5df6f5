"""Rebuild a :class:`~strkit.models.recognizer.RecognitionModel` from a self-describing checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from strkit.charset import Charset
from strkit.checkpoint import load_checkpoint
from strkit.config import Config, apply_overrides, from_dict

from .recognizer import RecognitionModel, build_model


def model_from_payload(payload: dict, overrides: Sequence[str] = ()) -> tuple[RecognitionModel, Config]:
    """Build the model described by a loaded checkpoint payload and load its weights.

    Args:
        payload: a loaded checkpoint (:func:`strkit.checkpoint.load_checkpoint`).
        overrides: ``model.key=value`` settings applied to the stored config before the model is built,
            for settings that keep every weight's shape, e.g. ``model.decoder.iterations=1`` to read with
            fewer refinement rounds of an ``iterative_vl`` decoder (its weights are shared across rounds).

    Raises:
        ValueError: an override outside ``model.``, or one that changes the weights (names or shapes).
    """
    for text in overrides:
        if not text.startswith("model."):
            raise ValueError(f"override {text!r}: only model.* settings can change when a trained model is "
                             f"loaded (e.g. model.decoder.iterations=1)")
    cfg = from_dict(apply_overrides(payload["config"], overrides))
    charset = Charset.from_dict(payload["charset"])
    if payload.get("arch"):  # a searched backbone: the architecture travels inside the checkpoint
        cfg.model.backbone = {**cfg.model.backbone, "arch": payload["arch"]}
    if payload.get("rectifier_arch"):  # a searched tps localisation body, likewise
        rect = {"name": cfg.model.rectifier} if isinstance(cfg.model.rectifier, str) else dict(cfg.model.rectifier)
        cfg.model.rectifier = {**rect, "loc": {**dict(rect.get("loc") or {}), "arch": payload["rectifier_arch"]}}
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels, charset=charset)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        if not overrides:
            raise
        raise ValueError(f"the overrides {list(overrides)} change the model's weights, so the trained ones do not "
                         f"fit; only settings that keep every weight (e.g. model.decoder.iterations) can change "
                         f"when a trained model is loaded ({str(exc).splitlines()[0]})") from exc
    model.temperature = checkpoint_temperature(payload)
    model.eval()
    return model, cfg


#: The checkpoint key of the calibration (``{"temperature": T, ...}``), written by
#: :func:`strkit.engine.calibration.save_calibrated`; absent = not calibrated (T = 1).
CALIBRATION_KEY = "calibration"
#: Allowed calibration temperatures: ``0 < T <= MAX_TEMPERATURE`` (the ONNX metadata schema's range too).
MAX_TEMPERATURE = 100.0


def checkpoint_temperature(payload: dict) -> float:
    """The calibration temperature stored in a checkpoint payload (1.0 when there is none).

    Raises:
        ValueError: a stored temperature that is not a number in (0, 100].
    """
    value = (payload.get(CALIBRATION_KEY) or {}).get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) <= MAX_TEMPERATURE:
        raise ValueError(f"checkpoint calibration temperature {value!r} is not a number in (0, {MAX_TEMPERATURE:g}]")
    return float(value)


def load_model(path: str | Path, device: str | torch.device = "cpu", overrides: Sequence[str] = ()
               ) -> tuple[RecognitionModel, Config]:
    """Load ``path`` (a ``best.pt`` / ``last.pt``) onto ``device``; returns (model in eval mode, config).
    ``overrides``: ``model.*`` settings that keep the weights, see :func:`model_from_payload`."""
    model, cfg = model_from_payload(load_checkpoint(path), overrides)
    return model.to(device), cfg


def in_package(path: str | Path) -> bool:
    """Whether ``path`` lies inside the installed strkit package (where no tool should write results)."""
    from importlib import resources

    package = Path(str(resources.files("strkit"))).resolve()
    return Path(path).resolve().is_relative_to(package)
