"""strkit-create-lmdb INPUT OUT: convert a folder dataset or a gt file into an STR LMDB, streaming.

INPUT is a folder holding labels.tsv or a gt file of 'path<TAB>label' lines (paths relative to the gt
file's folder). Every image is stored as its original bytes (never re-encoded), after a check that it
decodes (OpenCV, PIL as fallback; --no-check skips it). Items that cannot be used (missing or unreadable
file, undecodable image, an image whose header announces more than --max-pixels pixels) are skipped,
listed with their reason and counted in the summary. The LMDB is written to OUT.partial and renamed to
OUT when complete; an existing OUT is only replaced with --overwrite, and an interrupted run is continued
with --resume.
Exit status: 0 done, 2 on a user error (input, output, arguments), printed as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from strkit.cli.common import Parser, add_max_pixels, positive_int, user_errors
from strkit.data.folder import read_gt_file, resolve_gt_file
from strkit.data.image_limits import DEFAULT_MAX_PIXELS, ImageTooLargeError, check_encoded
from strkit.data.lmdb.format import decode_image
from strkit.data.lmdb.writer import LmdbWriter

POSITION_KEY = "create-lmdb-position"  # input lines consumed, committed with the records (for --resume)
SOURCE_KEY = "create-lmdb-source"
SHOWN_SKIPS = 20


def parse_size(text: str) -> int:
    """``"1G"``, ``"512M"``, ``"64K"`` or a plain number of bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size '{text}': give bytes or a number with K, M, G or T") \
            from None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="strkit-create-lmdb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="example: strkit-create-lmdb shared/benchmarks/IIIT5K_3000 lmdb/IIIT5K_3000")
    p.add_argument("input", type=Path, help="folder with labels.tsv, or a gt file (path<TAB>label lines)")
    p.add_argument("out", type=Path, help="the LMDB folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and an unfinished OUT.partial)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.partial")
    p.add_argument("--map-size", type=parse_size, default=1 << 30,
                   help="initial LMDB map size (grows as needed), e.g. 4G (default 1G)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="check that every image decodes before writing it (default: on)")
    add_max_pixels(p)
    p.add_argument("--commit-every", type=positive_int, default=1000, help="records per transaction (default 1000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _read_image(path: Path, check: bool, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[bytes | None, str]:
    """The file's bytes, or ``None`` and the reason it is skipped. The header's pixel count is checked
    against ``max_pixels`` even without ``check`` (reading a header decodes nothing)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if not data:
        return None, "empty file"
    try:
        check_encoded(data, max_pixels)
        if check and decode_image(data, channels=3, max_pixels=max_pixels) is None:
            return None, "not a decodable image"
    except ImageTooLargeError as exc:
        return None, f"image too large: {exc}"
    return data, ""


def convert(input_path: Path, out: Path, *, overwrite: bool = False, resume: bool = False,
            map_size: int = 1 << 30, check: bool = True, commit_every: int = 1000,
            progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS
            ) -> tuple[Path, int, list[tuple[Path, str]]]:
    """Write the items of ``input_path`` into the LMDB ``out``; images whose header announces more than
    ``max_pixels`` pixels (``None``: no limit) are skipped.

    Returns:
        (final LMDB path, records in it, items skipped in this run as (image path, reason)).
    """
    gt = resolve_gt_file(input_path)
    items = read_gt_file(gt)
    skipped: list[tuple[Path, str]] = []
    with LmdbWriter(out, map_size=map_size, overwrite=overwrite, resume=resume,
                    commit_every=commit_every, tool="tools/create_lmdb.py") as writer:
        raw = writer.get_meta(POSITION_KEY)
        start = int(raw) if raw is not None else 0
        if raw is None and len(writer):
            raise ValueError(f"{writer.partial} holds {len(writer)} records but no resume position; "
                             f"start again with --overwrite")
        if start:
            print(f"resuming {writer.partial}: {len(writer)} records, continuing at input line {start + 1}",
                  file=sys.stderr)
        writer.put_meta(SOURCE_KEY, str(gt.resolve()).encode())
        bar = tqdm(initial=start, total=len(items), unit="img", desc=out.name,
                   disable=None if progress else True)  # None: only on a terminal
        for position, (image_path, label) in enumerate(items[start:], start=start):
            # Staged before the record so that any commit holds both: a resume never repeats a record.
            writer.put_meta(POSITION_KEY, str(position + 1).encode())
            data, reason = _read_image(image_path, check, max_pixels)
            if data is None:
                skipped.append((image_path, reason))
            else:
                writer.put(data, label)
            bar.update()
        bar.close()
        count = len(writer)
    return writer.path, count, skipped


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 2 usage or input error)."""
    args = build_parser().parse_args(argv)
    path, count, skipped = convert(args.input, args.out, overwrite=args.overwrite, resume=args.resume,
                                   map_size=args.map_size, check=args.check,
                                   commit_every=args.commit_every, progress=not args.quiet,
                                   max_pixels=args.max_pixels or None)
    for image_path, reason in skipped[:SHOWN_SKIPS]:
        print(f"skipped {image_path}: {reason}", file=sys.stderr)
    if len(skipped) > SHOWN_SKIPS:
        print(f"... and {len(skipped) - SHOWN_SKIPS} more skipped items", file=sys.stderr)
    reasons = ", ".join(f"{n} {r}" for r, n in Counter(r.split(": ", 1)[0] for _, r in skipped).most_common())
    print(f"wrote {count} records to {path}; skipped {len(skipped)}" + (f" ({reasons})" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
