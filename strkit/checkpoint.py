"""Self-describing checkpoints, written atomically.

A checkpoint is one ``torch.save`` file holding everything needed to rebuild and run the model: the
resolved config, the charset, the architecture of a searched backbone (``arch``) and of a searched
rectifier (``rectifier_arch``, absent in older files), the weights and the metrics
at save time; a ``last`` checkpoint also holds the full training state (optimiser, scheduler, step,
RNG states, sampler position) for an exact resume. A calibrated checkpoint also holds ``calibration``
(``{"temperature": T, ...}``: decoding uses ``logits / T``; see :mod:`strkit.engine.calibration`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from strkit.atomic import atomic_write
from strkit.config import relative_note

FORMAT = "strkit-checkpoint"
VERSION = 1


# The temporary files an interrupted atomic_torch_save of a checkpoint leaves: ``.<name>.pt.<8 characters>.tmp``.
_TEMP_NAME = re.compile(r"^\..+\.pt\.[a-z0-9_]{8}\.tmp$")


class CheckpointError(ValueError):
    """A file is not a readable strkit checkpoint."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the target folder, fsync, then rename over ``path``
    (:func:`strkit.atomic.atomic_write`: a crash at any moment leaves the old file or the new one)."""
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def stale_temporaries(folder: str | Path) -> list[Path]:
    """The temporary files that interrupted :func:`atomic_torch_save` calls left in ``folder``
    while writing a checkpoint (``.last.pt.k3j_x9q2.tmp`` ...; only that name pattern, only plain files,
    not below ``folder``)."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [p for p in entries if _TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink()]


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete :func:`stale_temporaries` of ``folder`` (call it only when no write into ``folder`` runs,
    e.g. when a run starts or resumes); returns the removed paths."""
    removed = []
    for path in stale_temporaries(folder):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def save_checkpoint(path: str | Path, *, config: dict, charset: dict, state_dict: dict[str, torch.Tensor],
                    metrics: dict | None = None, step: int = 0, arch: dict | None = None,
                    train_state: dict | None = None, extra: dict | None = None,
                    rectifier_arch: dict | None = None, calibration: dict | None = None) -> Path:
    """Write a checkpoint atomically. See the module docstring for what it holds; ``calibration``: the
    confidence calibration (``{"temperature": T, ...}``, :mod:`strkit.engine.calibration`), stored under the
    key ``calibration`` when given."""
    from strkit.version import __version__

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "strkit_version": __version__,
        "torch_version": str(torch.__version__),
        "config": config,
        "charset": charset,
        "arch": arch,
        "rectifier_arch": rectifier_arch,
        "state_dict": state_dict,
        "metrics": metrics or {},
        "step": int(step),
        "train_state": train_state,
        "extra": extra or {},
    }
    if calibration is not None:
        payload["calibration"] = calibration
    return atomic_torch_save(payload, path)


#: The first bytes of a ``torch.save`` file: a zip archive (PyTorch >= 1.6), or the pickle of the legacy format.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02")
#: The checkpoint ``resolve_checkpoint_path`` takes from a run folder.
RUN_FOLDER_CHECKPOINT = "best.pt"


def resolve_checkpoint_path(path: str | Path) -> Path:
    """``path`` itself, or for a run folder (``train.out_dir``) its ``best.pt``.

    Raises:
        CheckpointError: ``path`` does not exist, or is a folder without ``best.pt``.
    """
    path = Path(path)
    if path.is_dir():
        best = path / RUN_FOLDER_CHECKPOINT
        if best.is_file():
            return best
        others = sorted(p.name for p in path.glob("*.pt"))
        raise CheckpointError(f"{path} is a folder with no {RUN_FOLDER_CHECKPOINT}; pass a checkpoint file"
                              + (f" ({', '.join(others)})" if others else " (best.pt or last.pt of a run)"))
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}{relative_note(path)}")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and check its format; a run folder stands for its
    ``best.pt`` (:func:`resolve_checkpoint_path`)."""
    path = resolve_checkpoint_path(path)
    with path.open("rb") as fh:
        head = fh.read(4)
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(f"{path} is not a strkit checkpoint (not a file written by torch.save); "
                              "pass a best.pt or last.pt written by tools/train.py")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a strkit checkpoint or is incomplete ({type(exc).__name__}: "
                              f"{first[:200]}); pass a best.pt or last.pt written by tools/train.py") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a strkit checkpoint (no '{FORMAT}' marker); "
                              "pass a file written by tools/train.py")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer strkit (checkpoint version "
                              f"{payload['version']} > {VERSION}); upgrade strkit")
    return payload


def init_from_checkpoint(model: torch.nn.Module, path: str | Path, prefixes: Sequence[str] = ("",)
                         ) -> list[str]:
    """Copy the weights whose names start with one of ``prefixes`` from a strkit checkpoint into
    ``model`` (e.g. the pre-trained language model into the model of the joint-training stage).

    Returns:
        the names of the copied tensors.

    Raises:
        ValueError: no weight matches, or a matching weight has another shape (the model config differs:
            d_model, lm_layers, charset, max_length...).

    ``prefixes=("",)`` copies every weight (fine-tuning from another run with the same architecture).
    """
    state = load_checkpoint(path)["state_dict"]
    own = model.state_dict()
    picked = {k: v for k, v in state.items() if k.startswith(tuple(prefixes))}
    if not picked:
        raise ValueError(f"{path}: no weight starts with {list(prefixes)}; check train.init_prefixes "
                         f"against the checkpoint's weight names")
    for k, v in picked.items():
        if k not in own or own[k].shape != v.shape:
            got = tuple(own[k].shape) if k in own else "missing"
            raise ValueError(f"{path}: weight {k} has shape {tuple(v.shape)} but this model's is {got}; "
                             f"pre-train with the same model config (charset, max_length, decoder sizes)")
    model.load_state_dict(picked, strict=False)
    return sorted(picked)
