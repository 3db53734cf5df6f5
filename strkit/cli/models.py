"""strkit models: what this strkit can run and build.

Lists the bundled models (zoo names for Recognizer.from_pretrained(NAME), tools/eval.py NAME,
tools/export.py NAME, tools/recognize.py NAME: files, size, parameters, pipeline, recorded accuracy), the
model configs (configs/models in a checkout, and any shipped with the package), every registered module
of each pipeline stage (rectifier, backbone, sequence, decoder), and the augmentation presets,
distillation teachers, synthetic-data presets, charset presets and word confidence modes.
With a NAME, shows that bundled model only (an unknown name is an error listing the known ones).
Exit status: 0, 2 on a user error.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

from strkit.cli.common import Parser, user_errors


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="strkit-models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", default=None, help="show this bundled model only (e.g. default)")
    p.add_argument("--json", action="store_true", help="print the whole listing as one JSON object")
    return p


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def config_dirs() -> list[Path]:
    """Folders of model configs: ``configs/models`` of a source checkout (beside the package) and the
    package's own ``strkit/configs/models`` when it ships one."""
    from importlib import resources

    package = Path(str(resources.files("strkit")))
    found = [package.parent / "configs" / "models", package / "configs" / "models"]
    return [d for d in found if d.is_dir()]


def model_configs() -> list[dict[str, str]]:
    """``{name, path, pipeline}`` of every model config (a config that does not load shows its error)."""
    from strkit.config import ConfigError, load_config

    out = []
    for folder in config_dirs():
        for path in sorted(folder.glob("*.yaml")):
            try:
                m = load_config(path).model
                pipeline = "-".join(s if isinstance(s, str) else str(s.get("name", "?"))
                                    for s in (m.rectifier, m.backbone, m.sequence, m.decoder))
            except (ConfigError, OSError, ValueError) as exc:
                pipeline = f"(does not load: {exc})"
            out.append({"name": path.stem, "path": str(path), "pipeline": pipeline})
    return out


def catalogue(name: str | None = None) -> dict[str, Any]:
    """Everything ``strkit models`` lists (``name``: that zoo model only)."""
    from strkit.charset import PRESETS
    from strkit.data.augment import AUGMENTATIONS
    from strkit.data.synth.config import PRESET_NAMES
    from strkit.inference.options import CONFIDENCE_MODES
    from strkit.inference.teachers import TEACHERS
    from strkit.models.registry import BACKBONES, DECODERS, RECTIFIERS, SEQUENCES
    from strkit.models.zoo import describe, get_zoo_model, zoo_models

    if name is not None:
        return {"bundled": [describe(get_zoo_model(name))]}
    stages = {"rectifier": RECTIFIERS, "backbone": BACKBONES, "sequence": SEQUENCES, "decoder": DECODERS}
    return {
        "bundled": [describe(m) for m in zoo_models().values()],
        "configs": model_configs(),
        "stages": {stage: {n: _first_line(reg.get(n)) for n in reg.names()} for stage, reg in stages.items()},
        "augmentations": AUGMENTATIONS.names(),
        "teachers": TEACHERS.names(),
        "synth_presets": list(PRESET_NAMES),
        "charsets": list(PRESETS),
        "confidence_modes": CONFIDENCE_MODES.names(),
    }


def to_text(cat: dict[str, Any]) -> str:
    """The listing as plain text."""
    lines = ["Bundled models (Recognizer.from_pretrained(NAME), tools/eval.py NAME, tools/export.py NAME):"]
    if not cat["bundled"]:
        lines.append("  none (this strkit build ships no bundled model)")
    for m in cat["bundled"]:
        files = ", ".join(f"{f} ({size / 1e6:.1f} MB)" for f, size in m["files"].items())
        lines.append(f"  {m['name']}: {m['pipeline']}, {m['params_m']:.2f} M params, {m['size_mb']:.1f} MB, input "
                     f"{m['input']}, charset {m['charset']}")
        lines.append(f"    files: {files}")
        if m["temperature"] != 1.0:
            lines.append(f"    calibration temperature: {m['temperature']:.3f}")
        if "val_accuracy" in m["metrics"]:
            lines.append(f"    validation accuracy: {m['metrics']['val_accuracy']:.2f}% "
                         f"({int(m['metrics'].get('val_count', 0))} held-out training crops)")
        if m["benchmarks"]:
            protocol = f" ({m['benchmark_protocol']} protocol)" if m.get("benchmark_protocol") else ""
            lines.append(f"    word accuracy{protocol}: "
                         + ", ".join(f"{b} {a:.2f}%" for b, a in m["benchmarks"].items()))
    if "configs" not in cat:
        return "\n".join(lines)
    lines += ["", "Model configs (tools/train.py CONFIG):"]
    lines += [f"  {c['name']}: {c['pipeline']}  ({c['path']})" for c in cat["configs"]] or ["  none found"]
    lines += ["", "Registered modules per pipeline stage (model.<stage>.name):"]
    for stage, names in cat["stages"].items():
        lines.append(f"  {stage}:")
        lines += [f"    {n}: {doc}" if doc else f"    {n}" for n, doc in names.items()]
    for title, key in (("Augmentation presets (data.augment)", "augmentations"),
                       ("Distillation teachers (distill.teacher)", "teachers"),
                       ("Synthetic-data presets (tools/synth.py --preset)", "synth_presets"),
                       ("Charset presets (model.charset)", "charsets"),
                       ("Word confidence modes (confidence=, --confidence)", "confidence_modes")):
        lines += ["", f"{title}: {', '.join(cat[key])}"]
    return "\n".join(lines)


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cat = catalogue(args.name)
    print(json.dumps(cat, indent=2, ensure_ascii=False) if args.json else to_text(cat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
