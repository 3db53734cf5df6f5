"""strkit-synth (tools/synth.py): synthetic word images into an LMDB, previews and font audits.

examples:

    tools/synth.py --preset mjsynth --count 100000 --workers 2 --out data/synth/mj_100k
    tools/synth.py --preset mjsynth --count 100000 --workers 2 --out data/synth/mj_100k --resume
    tools/synth.py --preset hard --preview docs/hard.png
    tools/synth.py --list-fonts -v
    tools/synth.py --preset mjsynth --bench --count 2000
    tools/synth.py --preset realistic --preview docs/synth_realistic_sheet.png
    tools/synth.py --charset my_charset.txt --focus-chars "€£" --focus-p 0.5 --count 20000 --out data_lmdb/euro
    tools/synth.py --fit-palette my_palette.json --from shared/benchmarks/IIIT5K_train \
        shared/benchmarks/SVT_train shared/benchmarks/IC15_train      (then --set style.palette=my_palette.json)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from strkit.cli.common import (
    Parser,
    fail,
    interrupted,
    non_negative_int,
    positive_int,
    setup_logging,
    sigterm_interrupts,
    user_errors,
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="strkit-synth", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.split("\n\n")[1:]))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="mjsynth",
                     help="clean | mjsynth | hard | realistic, or a YAML file (default mjsynth)")
    src.add_argument("--config", help="a synth YAML file (same as --preset PATH)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. geometry.curve_p=0.3 degrade.blur_p=0")
    p.add_argument("--count", type=positive_int, help="number of samples (LMDB size; --bench: samples to time)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="rendering processes")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--start-index", type=non_negative_int, default=0, help="index of the first sample (default 0)")
    p.add_argument("--out", help="LMDB folder to write")
    p.add_argument("--resume", action="store_true", help="continue <out>.partial of an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--charset", help="36_lowercase | 62_mixed | 94_full or a charset file (text.charset)")
    p.add_argument("--gray", action="store_true", help="gray images (output.gray=true)")
    p.add_argument("--height", type=int, help="output height (output.height)")
    p.add_argument("--width", type=int, help="output width (output.width)")
    p.add_argument("--keep-ratio", action="store_true", help="width follows the text (output.keep_ratio)")
    p.add_argument("--fonts", nargs="+", default=[], metavar="DIR", help="extra font folders")
    p.add_argument("--no-system-fonts", action="store_true",
                   help="use only --fonts folders (and fonts.dirs), not the standard font folders")
    p.add_argument("--lexicon", help="word list: a file (one word per line) or wordfreq:<lang>:<n>")
    p.add_argument("--focus-chars", metavar="CHARS",
                   help="characters to train, e.g. '€£' (text.focus_chars): they must be in the charset "
                        "(--charset FILE) and drawn by an installed font")
    p.add_argument("--focus-p", type=float, metavar="P",
                   help="share of samples holding one or two --focus-chars (text.focus_p), e.g. 0.5")
    p.add_argument("--geometry", action="store_true", help="also store geom-%%09d (text boundary polylines)")
    p.add_argument("--preview", metavar="PNG", help="write a contact sheet of samples instead of an LMDB")
    p.add_argument("--preview-count", type=positive_int, default=64, help="samples in the contact sheet (default 64)")
    p.add_argument("--preview-colors", type=int, default=0,
                   help="quantise the contact sheet to this many colours (smaller PNG; 0 = keep)")
    p.add_argument("--list-fonts", action="store_true", help="audit the fonts and print a summary")
    p.add_argument("--font-sheet", metavar="PNG",
                   help="render every usable font (and, with -v, every rejected one) into review pages")
    p.add_argument("--bench", action="store_true", help="time rendering on one process and report images/s")
    p.add_argument("--fit-palette", metavar="JSON",
                   help="fit a colour palette (style.palette) on the real training crops of --from and write it")
    p.add_argument("--from", dest="sources", nargs="+", default=[], metavar="DIR",
                   help="--fit-palette: folder datasets (labels.tsv + images) of training crops; benchmark "
                        "test sets are refused")
    p.add_argument("--palette-size", type=positive_int, default=256, help="--fit-palette: pairs kept (default 256)")
    p.add_argument("--palette-limit", type=non_negative_int, default=0,
                   help="--fit-palette: crops used per folder (default 0 = all)")
    p.add_argument("--benchmark-root", help="--fit-palette: the benchmark folder; only its *_train splits are "
                                             "accepted under it")
    p.add_argument("--no-cache", action="store_true", help="do not use the font audit cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail")
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set)
    if args.charset:
        sets.append(f"text.charset={args.charset}")
    if args.gray:
        sets.append("output.gray=true")
    if args.height:
        sets.append(f"output.height={args.height}")
    if args.width:
        sets.append(f"output.width={args.width}")
    if args.keep_ratio:
        sets.append("output.keep_ratio=true")
    if args.lexicon:
        sets.append(f"text.lexicon={json.dumps(args.lexicon)}")
    if args.no_system_fonts:
        sets.append("fonts.system=false")
    if args.focus_chars is not None:
        sets.append(f"text.focus_chars={json.dumps(args.focus_chars)}")
    if args.focus_p is not None:
        sets.append(f"text.focus_p={args.focus_p!r}")
    return sets


def _list_fonts(renderer: Any, verbose: bool) -> None:
    rep = renderer.fonts.report
    print(rep.summary())
    words = renderer.text.words
    print(f"lexicon {renderer.cfg.text.lexicon}: {len(words)} usable words in charset "
          f"'{renderer.charset.name}' "
          f"(length {renderer.cfg.text.min_len}..{renderer.cfg.text.max_len})")
    for ch in renderer.text.focus:
        faces = [f for f in renderer.fonts.faces if ch in f.covered]
        print(f"focus character {ch!r} (U+{ord(ch):04X}): drawn by {len(faces)} of {len(renderer.fonts)} faces "
              f"in {len({f.family for f in faces})} families (only those render its samples)")
    if verbose:
        print("\nusable faces:")
        for f in renderer.fonts.faces:
            missing = len(set(renderer.text.chars) - f.covered)
            lacks = f" | lacks {missing} chars" if missing else ""
            print(f"  {f.family} | {f.style} | {f.path}#{f.index}{lacks}")
        print("\nrejected faces:")
        for where, reason in rep.rejected_faces:
            print(f"  {where}: {reason}")


def _font_sheet(renderer: Any, path: str, verbose: bool) -> None:
    from strkit.data.synth.fonts import FontFace
    from strkit.data.synth.preview import font_sheets

    faces = list(renderer.fonts.faces)
    pages = font_sheets(faces, path)
    print(f"{len(faces)} usable faces -> {len(pages)} page(s): {pages[0].parent}/{pages[0].stem[:-4]}-*.png")
    if verbose:
        rejected = []
        for where, reason in renderer.fonts.report.rejected_faces:
            if reason.startswith(("does not load", "duplicate")):
                continue
            p, _, idx = where.rpartition("#")
            rejected.append(FontFace(p, int(idx), reason, "", frozenset(renderer.text.chars), 1.2, 0.7,
                                     False))
        if rejected:
            rp = Path(path).with_name(Path(path).stem + "-rejected.png")
            pages = font_sheets(rejected, rp)
            print(f"{len(rejected)} rejected faces -> {len(pages)} page(s): {rp.parent}/{rp.stem}-*.png")


def _bench(renderer: Any, count: int, seed: int) -> None:
    """Time rendering in this process: wall-clock and CPU-time rates (the latter is robust to load)."""
    n = count or 2000
    for i in range(min(50, n)):  # warm the font cache like a long run would
        renderer.render(10**8 + i, seed=seed)
    w, c = time.perf_counter(), time.process_time()
    for i in range(n):
        renderer.render(i, seed=seed)
    render_wall, render_cpu = time.perf_counter() - w, time.process_time() - c
    total = 0
    w, c = time.perf_counter(), time.process_time()
    for i in range(n):
        total += len(renderer.encode(renderer.render(i, seed=seed).image))
    full_wall, full_cpu = time.perf_counter() - w, time.process_time() - c
    cfg = renderer.cfg.output
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"preset {renderer.cfg.name}, {cfg.height}x{cfg.width}{' gray' if cfg.gray else ''}, "
          f"{len(renderer.fonts)} fonts, {len(renderer.text.words)} words, {n} samples on one process "
          f"(load average {load:.2f}):\n"
          f"  render:        {n / render_wall:6.0f} img/s wall, {n / render_cpu:6.0f} img/s per CPU second\n"
          f"  render + JPEG: {n / full_wall:6.0f} img/s wall, {n / full_cpu:6.0f} img/s per CPU second, "
          f"mean JPEG q{cfg.storage_quality} {total / n:.0f} bytes")


def _fit_palette(args: argparse.Namespace) -> int:
    """``--fit-palette``: fit a colour palette on training crops and write it as JSON."""
    from strkit.data.synth.palette import fit_palette, write_palette

    if not args.sources:
        return fail("--fit-palette needs --from DIR [DIR ...] (folder datasets of real training crops)")
    doc = fit_palette(args.sources, size=args.palette_size, limit=args.palette_limit, seed=args.seed,
                      benchmark_root=args.benchmark_root)
    path = write_palette(doc, args.fit_palette)
    s = doc["summary"]
    used = ", ".join(f"{x['name']} {x['used']}" for x in doc["sources"])
    print(f"wrote {path}: {len(doc['pairs'])} pairs from {s['crops']} crops ({used}); "
          f"dark text {s['dark_text_share']:.0%}, median contrast {s['contrast_quantiles']['50']}")
    return 0


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    import cv2

    cv2.setNumThreads(1)
    from strkit.config import ConfigError
    from strkit.data.synth.config import load_synth_config
    from strkit.data.synth.renderer import Renderer

    modes = [bool(args.out), bool(args.preview), args.list_fonts, bool(args.font_sheet), args.bench,
             bool(args.fit_palette)]
    if sum(modes) != 1:
        return fail("give exactly one of --out DIR, --preview PNG, --list-fonts, --font-sheet PNG, --bench, "
                    "--fit-palette JSON")
    if args.fit_palette:
        return _fit_palette(args)
    if args.sources:
        return fail("--from goes with --fit-palette")
    if args.out and not args.count:
        return fail("--out needs --count N (the number of samples)")
    try:
        cfg = load_synth_config(args.config or args.preset, _overrides(args))
        if args.focus_chars and cfg.text.focus_p == 0:
            return fail("--focus-chars needs --focus-p P (text.focus_p, the share of samples that hold them, "
                        "e.g. 0.5)")
        renderer = Renderer(cfg, font_dirs=args.fonts, use_cache=not args.no_cache,
                            workers=max(1, args.workers), progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as exc:
        return fail(str(exc))
    if args.list_fonts:
        _list_fonts(renderer, args.verbose)
        return 0
    if args.font_sheet:
        _font_sheet(renderer, args.font_sheet, args.verbose)
        return 0
    if args.bench:
        _bench(renderer, args.count or 0, args.seed)
        return 0
    if args.preview:
        from strkit.data.synth.preview import contact_sheet, save_sheet

        samples = [renderer.render(args.start_index + i, seed=args.seed, geometry=args.geometry)
                   for i in range(args.preview_count)]
        sheet = contact_sheet([(s.image, s.label) for s in samples],
                              geometry=[s.geometry for s in samples] if args.geometry else None)
        path = save_sheet(sheet, args.preview, colors=args.preview_colors)
        print(f"wrote {path} ({len(samples)} samples of preset '{cfg.name}', "
              f"{path.stat().st_size // 1024} KiB)")
        return 0
    from strkit.data.synth.generate import generate_lmdb

    try:
        with sigterm_interrupts():
            res = generate_lmdb(renderer, args.out, args.count, seed=args.seed, start_index=args.start_index,
                                workers=max(1, args.workers), resume=args.resume, overwrite=args.overwrite,
                                geometry=args.geometry, progress=not args.no_progress)
    except (FileExistsError, ValueError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt as exc:
        return interrupted(exc, f"the samples written so far are in {args.out}.partial; the same command with "
                                "--resume continues")
    print(f"wrote {res.written} samples to {res.path} ({res.resumed_from} resumed) in {res.seconds:.1f} s "
          f"({res.images_per_second:.0f} img/s, {args.workers} workers); "
          f"{res.bytes_on_disk / 2**20:.1f} MiB on disk")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
