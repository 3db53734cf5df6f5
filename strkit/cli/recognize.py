"""``tools/recognize.py CHECKPOINT IMAGES...``: read the text of image files, folders or globs."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from strkit.cli.common import add_max_pixels, add_model_overrides, fail

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"}


def expand_inputs(items: list[str]) -> list[str]:
    """Files as given, folders walked recursively for images (sorted), globs expanded (sorted)."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif any(c in item for c in "*?["):
            out += sorted(glob.glob(item, recursive=True))
        else:
            out.append(item)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recognize.py", description=__doc__)
    p.add_argument("checkpoint", help="a checkpoint, or 'default' for the bundled model")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--format", choices=["tsv", "json"], default="tsv")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto (default) = ONNX Runtime when installed, else PyTorch")
    add_max_pixels(p)
    add_model_overrides(p, "; runs with PyTorch")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from strkit.api import Recognizer
    from strkit.checkpoint import CheckpointError

    try:
        if args.checkpoint == "default" and args.overrides:
            return fail("--set changes the model of a checkpoint: pass a checkpoint instead of 'default'")
        if args.checkpoint == "default":
            rec = Recognizer.from_pretrained(device=args.device, threads=args.threads or None,
                                             backend=args.backend)
        else:
            rec = Recognizer.from_checkpoint(args.checkpoint, device=args.device, threads=args.threads or None,
                                             backend=args.backend, overrides=args.overrides)
    except (CheckpointError, FileNotFoundError) as exc:
        return fail(str(exc))
    except ValueError as exc:  # a bad --set
        return fail(f"{args.checkpoint}: {exc}")
    paths = expand_inputs(args.inputs)
    if not paths:
        return fail("no input images found")
    results = rec.recognize(paths, batch_size=args.batch_size, max_pixels=args.max_pixels or None)
    errors = 0
    for path, r in zip(paths, results, strict=True):
        errors += not r.ok
        if args.format == "json":
            print(json.dumps({"image": path, "text": r.text, "confidence": round(r.confidence, 5),
                              "char_probs": [round(c, 5) for c in r.char_probs], "error": r.error,
                              "warning": r.warning}))
        elif r.ok:
            print(f"{path}\t{r.text}\t{r.confidence:.4f}" + (f"\twarning: {r.warning}" if r.warning else ""))
        else:
            print(f"{path}\t\t0.0000\terror: {r.error}")
    if errors:
        print(f"{errors} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if errors == len(paths) else 0
