"""The model zoo: models bundled with the package, by name (``default``, ...).

A zoo model ``NAME`` is the file ``NAME.pt`` (an inference-only, self-describing checkpoint) in the
package's ``strkit/assets`` folder (or in a bundle folder written by ``tools/export.py CKPT --bundle DIR``),
optionally with its ONNX exports ``NAME.onnx`` and ``NAME.int8.onnx`` beside it. Adding a model to the
zoo is dropping those files into ``strkit/assets``: nothing is listed by hand.

``Recognizer.from_pretrained(NAME)``, ``tools/eval.py NAME``, ``tools/export.py NAME``,
``tools/recognize.py NAME`` and ``strkit models`` all resolve names here; an unknown name is a
:class:`UnknownModelError` that lists the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strkit.checkpoint import CheckpointError, resolve_checkpoint_path

#: The zoo model used when no name is given.
DEFAULT_MODEL = "default"


class UnknownModelError(CheckpointError):
    """A name that is neither a zoo model nor an existing checkpoint file or run folder."""


@dataclass(frozen=True)
class ZooModel:
    """One bundled model: its checkpoint and the exports found beside it.

    Attributes:
        name: the zoo name (the checkpoint's file stem).
        checkpoint: ``NAME.pt``.
        onnx: ``NAME.onnx`` if bundled.
        int8: ``NAME.int8.onnx`` if bundled (only when its accuracy was within 0.5 point of fp32).
    """

    name: str
    checkpoint: Path
    onnx: Path | None = None
    int8: Path | None = None

    @property
    def files(self) -> list[Path]:
        """The model's files that exist (checkpoint first)."""
        return [p for p in (self.checkpoint, self.onnx, self.int8) if p is not None]


def assets_dir() -> Path:
    """The package's ``strkit/assets`` folder (where the bundled models live)."""
    from importlib import resources

    return Path(str(resources.files("strkit") / "assets"))


def zoo_models(folder: str | Path | None = None) -> dict[str, ZooModel]:
    """The models of ``folder`` (default: the package's assets), by name, sorted."""
    root = Path(folder) if folder is not None else assets_dir()
    if not root.is_dir():
        return {}
    out: dict[str, ZooModel] = {}
    for ckpt in sorted(root.glob("*.pt")):
        onnx, int8 = ckpt.with_suffix(".onnx"), ckpt.with_name(f"{ckpt.stem}.int8.onnx")
        out[ckpt.stem] = ZooModel(ckpt.stem, ckpt, onnx if onnx.is_file() else None,
                                  int8 if int8.is_file() else None)
    return out


def unknown_model_message(name: str, known: list[str], what: str = "model") -> str:
    """One line: ``name`` is not a zoo model (nor a file), and the known names."""
    names = ", ".join(known) if known else "none (this strkit build ships no bundled model)"
    return (f"unknown {what} '{name}': not a bundled model nor an existing checkpoint file or run folder; "
            f"bundled models: {names} (list them with: strkit models)")


def get_zoo_model(name: str, folder: str | Path | None = None) -> ZooModel:
    """The zoo model ``name`` (of ``folder``, default the package's assets).

    Raises:
        UnknownModelError: no such model; the message lists the known names.
    """
    models = zoo_models(folder)
    if name not in models:
        where = f" in {folder}" if folder is not None else ""
        raise UnknownModelError(unknown_model_message(name, sorted(models)).replace(
            "bundled models:", f"bundled models{where}:"))
    return models[name]


def looks_like_path(arg: str) -> bool:
    """Whether ``arg`` is written as a file path (a folder separator or a file suffix) rather than a name."""
    return "/" in arg or "\\" in arg or Path(arg).suffix != ""


def resolve_model_arg(arg: str | Path) -> tuple[Path, str, bool]:
    """``(checkpoint file, name, whether it is a zoo model)`` of a model argument: an existing checkpoint
    file or run folder (its ``best.pt``) wins over a zoo name of the same spelling; else a zoo name.

    Raises:
        UnknownModelError: a bare name (no folder, no suffix) that is not in the zoo.
        CheckpointError: a path that does not exist (or a folder without ``best.pt``).
    """
    text = str(arg)
    path = Path(text)
    if not path.exists():
        models = zoo_models()
        if text in models:
            return models[text].checkpoint, text, True
        if not looks_like_path(text):
            raise UnknownModelError(unknown_model_message(text, sorted(models)))
    from strkit.models.pretrained import in_package

    ckpt = resolve_checkpoint_path(path)
    bundled = in_package(ckpt)  # a file inside the installed package: results never go beside it
    return ckpt, ckpt.stem if bundled else ckpt.resolve().parent.name, bundled


def describe(model: ZooModel) -> dict[str, Any]:
    """What ``strkit models`` shows of a zoo model: files and sizes, pipeline, charset, input size,
    parameters, calibration temperature and the accuracy recorded in the checkpoint's metrics (the
    validation accuracy at save time and any benchmark results stored with it)."""
    from strkit.checkpoint import load_checkpoint
    from strkit.models.pretrained import model_from_payload

    payload = load_checkpoint(model.checkpoint)
    net, cfg = model_from_payload(payload)
    count = getattr(net, "num_parameters", None)
    params = count() if callable(count) else sum(p.numel() for p in net.parameters())
    metrics = {k: v for k, v in (payload.get("metrics") or {}).items() if isinstance(v, int | float)}
    return {
        "name": model.name,
        "files": {p.name: p.stat().st_size for p in model.files},
        "size_mb": sum(p.stat().st_size for p in model.files) / 1e6,
        "pipeline": net.pipeline,
        "charset": f"{net.charset.name} ({len(net.charset)} characters)",
        "input": f"{cfg.data.channels}x{cfg.data.img_h}x{cfg.data.img_w}" + (" keep-ratio" if cfg.data.keep_ratio
                                                                             else ""),
        "params_m": params / 1e6,
        "temperature": net.temperature,
        "metrics": metrics,
        "benchmarks": recorded_benchmarks(payload),
        "benchmark_protocol": recorded_protocol(payload),
    }


def bundle_info(payload: dict[str, Any]) -> dict[str, Any]:
    """What :func:`strkit.export.bundle.write_bundle` recorded in a checkpoint (``extra.bundle``: source,
    ``weights`` dtype, ``int8_accuracy``, parity); empty for a checkpoint that is not a bundle's."""
    return (payload.get("extra") or {}).get("bundle") or {}


def recorded_protocol(payload: dict[str, Any]) -> str | None:
    """The scoring protocol (``"36"``, ``"62"``, ``"94"``) of the benchmark accuracies a checkpoint records
    (see :func:`recorded_benchmarks`); ``None`` when none, or when the bundle did not say."""
    protocol = (bundle_info(payload).get("int8_accuracy") or {}).get("protocol")
    return str(protocol) if protocol is not None else None


def recorded_benchmarks(payload: dict[str, Any]) -> dict[str, float]:
    """Benchmark word accuracies recorded in a checkpoint (``extra.bundle.int8_accuracy``: the fp32 accuracy
    measured by ``tools/export.py --int8 --bundle``), by benchmark; empty when none were recorded."""
    rows = (bundle_info(payload).get("int8_accuracy") or {}).get("rows") or []
    out: dict[str, float] = {}
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("fp32"), int | float) and row.get("benchmark"):
            out[str(row["benchmark"])] = float(row["fp32"])
    return out
