"""TorchScript export (``torch.jit.trace``) with the metadata in the extra file ``strkit.json``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from strkit.atomic import atomic_path
from strkit.export.common import (
    ExportError,
    LogitsOnly,
    default_input_spec,
    eval_mode,
    example_input,
    probe,
    probe_width,
    quiet_tracing,
)
from strkit.inference.metadata import TORCHSCRIPT_EXTRA_FILE, ExportedModelError, ExportMetadata, InputSpec
from strkit.models.recognizer import RecognitionModel


def export_torchscript(model: RecognitionModel, path: str | Path, *, input_spec: InputSpec | None = None,
                       keep_ratio: bool = False) -> ExportMetadata:
    """Trace ``model`` to TorchScript at ``path`` (``torch.jit.load`` gives ``images -> logits``); the
    metadata JSON is stored as the extra file ``strkit.json`` (see :func:`load_torchscript`).

    The batch axis is always dynamic; the width axis is reported dynamic when the traced module matches
    PyTorch at a second width.

    Raises:
        ExportError: tracing failed or the traced module does not match PyTorch.
    """
    spec = input_spec or default_input_spec(model, keep_ratio)
    wrapper = LogitsOnly(model).eval()
    try:
        with eval_mode(model), quiet_tracing(), torch.no_grad():
            traced = torch.jit.trace(wrapper, (example_input(spec),), check_trace=False)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"TorchScript tracing of {model.pipeline} failed ({type(exc).__name__}: {exc})") from exc

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return traced(x)

    with eval_mode(model):
        bad = probe(model, run, example_input(spec, 3))
        if bad is not None:
            raise ExportError(f"{model.pipeline}: the traced module does not match PyTorch at batch 3 ({bad})")
        note = probe(model, run, example_input(spec, 3, probe_width(spec)))
    meta = ExportMetadata.from_model(model, spec, dynamic_batch=True, dynamic_width=note is None)
    meta = meta.with_extra(exporter="torch.jit.trace", torch=str(torch.__version__))
    if note is not None:
        meta = meta.with_extra(dynamic_width_note=f"width fixed to {spec.img_w}: at width "
                                                  f"{probe_width(spec)} {note}")
    path = Path(path)
    with atomic_path(path) as tmp, quiet_tracing():
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA_FILE: meta.to_json()})
    return meta


def load_torchscript(path: str | Path, map_location: str | torch.device = "cpu"
                     ) -> tuple[torch.jit.ScriptModule, ExportMetadata]:
    """Load a module written by :func:`export_torchscript` and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise ExportedModelError(f"TorchScript model not found: {path}")
    files = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        with quiet_tracing():
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=files)
    except Exception as exc:  # noqa: BLE001
        raise ExportedModelError(f"{path} is not a loadable TorchScript model ({type(exc).__name__}: {exc})"
                                 ) from None
    return module.eval(), ExportMetadata.from_json(files[TORCHSCRIPT_EXTRA_FILE] or "{}", where=str(path))


