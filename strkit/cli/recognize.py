"""strkit-recognize CHECKPOINT IMAGES...: read the text of image files, folders or globs.

CHECKPOINT is a best.pt / last.pt, a run folder (its best.pt), an exported .onnx file or the name of a
model bundled with strkit ('default'; 'strkit models' lists them). One line per image is printed as soon
as its batch is read (tab-separated 'path, text, confidence', or JSON lines with --format json); images
that cannot be read get an 'error: ...' line instead. A checkpoint run with ONNX Runtime is exported once
to CHECKPOINT.onnx (announced on stderr).

Reading options: --confidence (how character probabilities make the word confidence), --no-rotate (tall
crops are otherwise also read at +-90 degrees, the more confident reading kept), --max-width (keep the
aspect ratio of long words up to this width instead of squashing them), --lexicon FILE (CTC models: read
the most probable word of the list, in any of its cases unless --lexicon-exact-case).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from strkit.cli.common import (
    Parser,
    add_max_pixels,
    add_model_overrides,
    add_progress_flag,
    check_device,
    fail,
    positive_float,
    positive_int,
    progress_enabled,
    setup_logging,
    threads_arg,
    user_errors,
)

DEFAULT_ROTATE_RATIO = 1.5  # strkit.inference.options.DEFAULT_ROTATE_RATIO (not imported: it imports torch)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"}
EXIT_STATUS = """exit status:
  0  every image was read
  1  some images could not be read (each has an 'error: ...' line; a count goes to stderr)
  2  a user error (checkpoint, argument, no input images), or with --strict the first image that
     could not be read (the lines before it are printed)"""


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
    p = Parser(prog="strkit-recognize", description=__doc__, epilog=EXIT_STATUS,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint, a run folder, an .onnx file, or a bundled model's name "
                                      "('default'; see: strkit models)")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--format", choices=["tsv", "json"], default="tsv",
                   help="tsv: path, text, confidence per line (default); json: one JSON object per line")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=threads_arg, default=0,
                   help="PyTorch or ONNX Runtime threads (0 = the library's default)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto (default) = ONNX Runtime when installed, else PyTorch")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first image that cannot be read, with exit status 2")
    p.add_argument("--confidence", choices=["product", "mean", "min", "geomean"], default="product",
                   help="word confidence from the character probabilities: product (default), mean, min, geomean")
    p.add_argument("--no-rotate", dest="rotate", action="store_false",
                   help="do not also read tall crops (height > --rotate-ratio x width) rotated by +-90 degrees")
    p.add_argument("--rotate-ratio", type=positive_float, default=DEFAULT_ROTATE_RATIO, metavar="R",
                   help=f"height/width ratio above which a crop is also read rotated (default {DEFAULT_ROTATE_RATIO})")
    p.add_argument("--max-width", type=positive_int, default=None, metavar="W",
                   help="keep the aspect ratio of long words up to W pixels wide instead of squashing them into "
                        "the model's width (needs a model that accepts any width)")
    p.add_argument("--lexicon", default=None, metavar="FILE",
                   help="CTC models: read the most probable word of FILE (UTF-8, one word per line)")
    p.add_argument("--lexicon-exact-case", dest="lexicon_any_case", action="store_false",
                   help="match the --lexicon words only as written (default: also in lower case, Capitalised "
                        "and UPPER CASE, printing the form read)")
    add_max_pixels(p)
    add_model_overrides(p, "; runs with PyTorch")
    add_progress_flag(p)
    return p


def _load(args: argparse.Namespace) -> Any:
    from strkit.api import Recognizer
    from strkit.models.zoo import looks_like_path, zoo_models

    options: dict[str, Any] = {"confidence": args.confidence, "rotate": args.rotate,
                               "rotate_ratio": args.rotate_ratio, "max_width": args.max_width}
    if args.lexicon:
        from strkit.models.decoders.ctc import read_lexicon

        options["lexicon"] = read_lexicon(args.lexicon)
        options["lexicon_any_case"] = args.lexicon_any_case
    name = args.checkpoint
    if not Path(name).exists() and (name in zoo_models() or not looks_like_path(name)):
        if args.overrides:
            raise ValueError(f"--set changes the model of a checkpoint: pass a checkpoint instead of '{name}'")
        return Recognizer.from_pretrained(name, device=args.device, threads=args.threads or None,
                                          backend=args.backend, **options)
    try:
        return Recognizer.from_checkpoint(args.checkpoint, device=args.device, threads=args.threads or None,
                                          backend=args.backend, overrides=args.overrides, **options)
    except ValueError as exc:  # a bad --set; a CheckpointError names the file already
        raise ValueError(str(exc) if args.checkpoint in str(exc) else f"{args.checkpoint}: {exc}") from None


def _read(rec: Any, paths: list[str], batch_size: int, progress: bool,
          max_pixels: int | None) -> Iterator[tuple[str, Any]]:
    """(path, result) pairs, one batch at a time (so that the first lines appear at once)."""
    from tqdm import tqdm

    with tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            yield from zip(chunk, rec.recognize(chunk, batch_size=batch_size, max_pixels=max_pixels), strict=True)
            bar.update(len(chunk))


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    check_device(args.device)
    paths = expand_inputs(args.inputs)
    if not paths:
        return fail("no input images found")
    rec = _load(args)
    errors = 0
    for path, r in _read(rec, paths, args.batch_size, progress_enabled(args.progress),
                           args.max_pixels or None):
        errors += not r.ok
        if args.format == "json":
            print(json.dumps({"image": path, "text": r.text, "confidence": round(r.confidence, 5),
                              "char_probs": [round(c, 5) for c in r.char_probs], "error": r.error,
                              "warning": r.warning, "rotation": r.rotation}), flush=True)
        elif r.ok:
            warning = f"\twarning: {r.warning}" if r.warning else ""
            print(f"{path}\t{r.text}\t{r.confidence:.4f}{warning}", flush=True)
        else:
            print(f"{path}\t\t0.0000\terror: {r.error}", flush=True)
        if errors and args.strict:
            what = r.error if path in r.error else f"{path}: {r.error}"
            return fail(f"{what} (--strict stops at the first image that cannot be read)")
    if errors:
        print(f"{errors} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
