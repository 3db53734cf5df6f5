"""The bundle :meth:`strkit.api.Recognizer.from_pretrained` loads (the packaged default model)."""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from strkit.atomic import atomic_path
from strkit.checkpoint import load_checkpoint, save_checkpoint

#: The zoo name of the model ``Recognizer.from_pretrained()`` loads without a name.
DEFAULT_BUNDLE_NAME = "default"
#: How the bundle's checkpoint stores floating-point weights: ``fp32`` as trained, ``fp16`` half the file
#: (loading casts them back to the model's fp32 parameters; the ONNX exports are unchanged).
BUNDLE_WEIGHTS = {"fp32": torch.float32, "fp16": torch.float16}


def write_bundle(checkpoint: str | Path, onnx_path: str | Path, out_dir: str | Path,
                 int8_path: str | Path | None = None, info: dict[str, Any] | None = None,
                 name: str = DEFAULT_BUNDLE_NAME, weights: str = "fp32") -> dict[str, Path]:
    """Write the files :meth:`strkit.api.Recognizer.from_pretrained` loads into ``out_dir``: an
    inference-only copy of ``checkpoint`` (weights, config, charset, architecture; no optimiser state,
    no training-only heads), the fp32 ONNX export and, when given, the int8 export (a stale int8 file
    of an earlier bundle is removed otherwise). Each file is written atomically.

    Args:
        info: notes stored in the checkpoint's ``extra['bundle']`` (e.g. the source run, accuracy).
        name: the zoo name (``NAME.pt``, ``NAME.onnx``, ``NAME.int8.onnx``; ``default`` is the model
            ``from_pretrained()`` loads without a name): letters, digits, ``-`` and ``_``.
        weights: ``fp32`` or ``fp16``: the dtype of the checkpoint's floating-point tensors (see
            :data:`BUNDLE_WEIGHTS`; recorded in ``extra['bundle']['weights']``).

    Returns:
        {"checkpoint", "onnx"[, "int8"]} -> written paths.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ValueError(f"bundle name {name!r}: use letters, digits, '-' and '_' (it names the files)")
    if weights not in BUNDLE_WEIGHTS:
        raise ValueError(f"bundle weights {weights!r}: use one of {', '.join(BUNDLE_WEIGHTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = load_checkpoint(checkpoint)
    dtype = BUNDLE_WEIGHTS[weights]
    state = {k: v.to(dtype) if v.is_floating_point() else v
             for k, v in payload["state_dict"].items() if not k.startswith("aux_head.")}
    config = copy.deepcopy(payload["config"])
    config.setdefault("model", {})["aux_ctc"] = 0.0  # the training-only head is not in the bundle
    extra = {**payload.get("extra", {}), "bundle": {"source": str(checkpoint), "weights": weights,
                                                     **(info or {})}}
    written = {"checkpoint": save_checkpoint(out / f"{name}.pt", config=config,
                                             charset=payload["charset"], state_dict=state,
                                             metrics=payload.get("metrics"), step=payload.get("step", 0),
                                             arch=payload.get("arch"), extra=extra,
                                             calibration=payload.get("calibration"))}
    for key, src, suffix in (("onnx", onnx_path, ".onnx"), ("int8", int8_path, ".int8.onnx")):
        target = out / f"{name}{suffix}"
        if src is None:
            target.unlink(missing_ok=True)
            continue
        with atomic_path(target) as tmp:
            shutil.copyfile(src, tmp)
        written[key] = target
    for path in written.values():
        os.chmod(path, 0o644)  # package data: readable by everyone, whatever the umask
    return written
