"""Pack what a piece of the campaign needs on a lent accelerator machine that reaches nothing outside itself.

Such a machine (a GPU and 16 cores, lent for minutes, see docs/model_card.md) gets a copy of the work tree of
at most 64 MiB, and no package registry: the synthetic LMDBs (2 GB) are rendered there again from their
seeds, so the fonts, the word list and the real training splits have to travel in that budget.

- ``fonts``: every font file the campaign's synthetic presets use, subset to the printable ASCII characters
  (the 94-character set and the space; outlines, hinting, names and layout tables of those glyphs kept), in
  a tree that mirrors the files' paths (``fonts/usr/share/fonts/...``) so that the presets' path patterns
  (``*/aenigma/*``) still match: 185 MB of fonts become about 20.
- ``lexicon_en_100000.txt.gz``: the presets' ``wordfreq:en:100000`` list, word for word (wordfreq is 58 MB).
- ``real``: the real training splits as the training transform sees them before augmentation (decoded in
  the run's channels, resized to ``img_h × img_w`` with the transform's own resize), as lossless WebP (the
  decoder goes by the bytes, not the name) under the same file names and label files: the training pipeline
  resizes nothing more, so it reads the same pixels.
- ``carry``: the campaign run as ``tools/jobs/carry.py`` carries it (``last.pt`` in 16 bits), ``best.pt``
  left out (the piece writes its own when validation improves on the best the run has recorded).

    python tools/jobs/device_pack.py STATE_RUNS/campaign_v2 .devpack --config configs/train/default_v2.yaml

``tools/jobs/device_piece.sh`` unpacks it on the machine, renders, trains and packs the result back, and
``--take-back`` puts that result in place here (the local campaign stopped first): the parts joined, the
snapshots widened, the local run folder moved aside (``NAME.before_piece``; never deleted) and the piece's run
restored in its place, refused when the local run is further on than the piece:

    python tools/jobs/device_pack.py --take-back FOLDER_OF_PARTS STATE/runs
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import shutil
import sys
import tarfile
from pathlib import Path

import cv2
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from strkit.charset import Charset  # noqa: E402
from strkit.config import load_config  # noqa: E402
from strkit.data.folder import FolderDataset, read_gt_file, resolve_gt_file  # noqa: E402
from strkit.data.synth.config import load_synth_config  # noqa: E402
from strkit.data.synth.fonts import discover_fonts  # noqa: E402
from strkit.data.synth.text import load_lexicon  # noqa: E402
from strkit.data.transforms import ImageTransform  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import carry  # noqa: E402

PRESETS = ("clean", "mjsynth", "realistic")
LEXICON = "wordfreq:en:100000"
PRINTABLE = [*range(32, 127)]


def font_files(presets: tuple[str, ...] = PRESETS) -> list[Path]:
    """The font files the presets draw from on this machine, sorted."""
    files: set[Path] = set()
    for preset in presets:
        cfg = load_synth_config(preset)
        found = discover_fonts(cfg.fonts, Charset.from_spec(cfg.text.charset))
        files |= {Path(face.path) for face in found.faces}
    return sorted(files)


def subset_font(src: Path, dst: Path) -> None:
    """``src`` subset to :data:`PRINTABLE` into ``dst``; a file the subsetter cannot handle is copied whole."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    opts = subset.Options()
    opts.layout_features, opts.name_IDs, opts.name_languages = ["*"], ["*"], ["*"]
    opts.notdef_outline = opts.glyph_names = opts.hinting = opts.legacy_kern = True
    opts.drop_tables = ["DSIG"]  # a signature of the whole file, which subsetting voids anyway
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        font = TTFont(src, lazy=False)
        sub = subset.Subsetter(opts)
        sub.populate(unicodes=PRINTABLE)
        sub.subset(font)
        font.save(dst)
    except Exception:  # noqa: BLE001 - collections and odd tables: the whole file still renders the same
        shutil.copyfile(src, dst)


def pack_fonts(out: Path, work: Path) -> int:
    """Subset every font into ``work`` (skipping files already there) and tar it as ``out``; returns bytes."""
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    for src in font_files():
        dst = work / str(src).lstrip("/")
        if not dst.is_file():
            subset_font(src, dst)
    with tarfile.open(out, "w:xz") as tar:
        tar.add(work, arcname="fonts")
    return out.stat().st_size


def pack_real(sources: list[tuple[str, Path]], out: Path, img_h: int, img_w: int, channels: int) -> int:
    """Each real split ``(name, folder)`` into the tar ``out``: its images as the transform's resize
    (``img_h × img_w``, ``channels``) in lossless WebP under their own names, and its label files."""
    transform = ImageTransform(img_h, img_w, channels)
    with tarfile.open(out, "w:xz") as tar:  # xz: the 512-byte tar blocks of 6,700 small files
        for name, root in sources:
            gt = resolve_gt_file(root)
            ds = FolderDataset(root, channels=channels)
            for extra in sorted(root.glob("*.tsv")):
                tar.add(extra, arcname=f"{name}/{extra.name}")
            for path, _label in read_gt_file(gt):
                image = transform._resize(ds._decode(path.read_bytes(), str(path)))
                ok, webp = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])  # 101: lossless
                back = ds._decode(webp.tobytes(), "webp")  # as the training loader will decode it
                if not ok or back.shape != image.shape or not (back == image).all():
                    raise RuntimeError(f"cannot encode {path} losslessly")
                info = tarfile.TarInfo(f"{name}/{path.relative_to(root).as_posix()}")
                info.size = len(webp)
                tar.addfile(info, io.BytesIO(webp.tobytes()))
    return out.stat().st_size


def retype_snapshot(path: Path, narrow: bool) -> bool:
    """Narrow a weights-only snapshot to 16 bits (:func:`carry.narrow`) or widen it back; False when it is
    already so."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or (carry.NARROWED in payload) == narrow:
        return False
    if narrow:
        payload, paths = carry.narrow(payload)
        payload[carry.NARROWED] = paths
    else:
        carry.widen(payload)
    torch.save(payload, path)
    return True


class PackError(RuntimeError):
    """A pack or a piece that cannot be used (one line for the user)."""


def take_back(parts_dir: Path, runs: Path, force: bool = False) -> list[str]:
    """Put a piece's result (``piece.tar.part-*`` under ``parts_dir``) in place under ``runs``: each run it
    holds replaces the local one, which moves aside to ``NAME.before_piece[N]``. Returns what it did.

    Raises:
        PackError: no parts, or a local run further on than the piece's (unless ``force``).
    """
    parts = sorted(parts_dir.glob("piece.tar.part-*"))
    if not parts:
        raise PackError(f"no piece.tar.part-* under {parts_dir}: give the folder the device run's files are in")
    tmp = runs.parent / ".piece_back"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        data = b"".join(p.read_bytes() for p in parts)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        for path in sorted(tmp.rglob("snapshots/*.pt")):
            retype_snapshot(path, narrow=False)
        done = []
        for metrics in sorted(tmp.rglob("metrics.csv")):
            rel = metrics.parent.relative_to(tmp)
            theirs, mine = carry.last_step(metrics.parent), carry.last_step(runs / rel)
            if mine is not None and (theirs or 0) <= mine and not force:
                raise PackError(f"the local run {runs / rel} is at step {mine}, the piece at {theirs}: nothing to "
                                "take back (--force takes it anyway)")
            if (runs / rel).exists():
                aside, n = runs / rel.parent / f"{rel.name}.before_piece", 1
                while aside.exists():
                    n += 1
                    aside = runs / rel.parent / f"{rel.name}.before_piece{n}"
                (runs / rel).rename(aside)
                done.append(f"{runs / rel} (step {mine}) moved to {aside}")
            done.append(f"{rel}: step {theirs} from the piece")
        carry.restore(tmp, runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, nargs="?", help="the campaign's run folder (STATE/runs/campaign_v2/train)")
    p.add_argument("out", type=Path, nargs="?", help="the pack folder (ignored by git, e.g. .devpack)")
    p.add_argument("--config", default="configs/train/default_v2.yaml")
    p.add_argument("--fonts-work", type=Path, default=Path("/tmp/devpack_fonts"))
    p.add_argument("--only", nargs="+", choices=["fonts", "lexicon", "real", "carry"],
                   default=["fonts", "lexicon", "real", "carry"])
    p.add_argument("--narrow-snapshots", type=Path, metavar="DIR",
                   help="store the snapshots under DIR in 16 bits (carry.py's narrowing) and exit: the way back")
    p.add_argument("--widen-snapshots", type=Path, metavar="DIR",
                   help="undo --narrow-snapshots under DIR and exit")
    p.add_argument("--take-back", nargs=2, type=Path, metavar=("PARTS", "RUNS"),
                   help="put a piece's result (PARTS/piece.tar.part-*) in place under RUNS and exit")
    p.add_argument("--force", action="store_true", help="with --take-back: also when the local run is further on")
    args = p.parse_args(argv)
    if args.take_back:
        try:
            for line in take_back(*args.take_back, force=args.force):
                print(line)
        except PackError as exc:
            print(f"device_pack: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.narrow_snapshots or args.widen_snapshots:
        for path in sorted((args.narrow_snapshots or args.widen_snapshots).rglob("snapshots/*.pt")):
            print(f"{'narrowed' if args.narrow_snapshots else 'widened'}: {path}"
                  if retype_snapshot(path, narrow=bool(args.narrow_snapshots)) else f"left as it is: {path}")
        return 0
    if args.run is None or args.out is None:
        print("device_pack: name the run folder and the pack folder (or --narrow-snapshots DIR)", file=sys.stderr)
        return 2
    if not (args.run / "last.pt").is_file():
        print(f"device_pack: {args.run}/last.pt not found; name the campaign's run folder", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config)
    if "lexicon" in args.only:
        words = load_lexicon(LEXICON)
        with gzip.open(args.out / "lexicon_en_100000.txt.gz", "wt", encoding="utf-8") as fh:
            fh.write("\n".join(words) + "\n")
    if "real" in args.only:
        real = [(Path(s.path).name, Path(s.path)) for s in cfg.data.train if s.kind == "folder"]
        size = pack_real(real, args.out / "real.tar.xz", cfg.data.img_h, cfg.data.img_w, cfg.data.channels)
        print(f"real splits: {size / 2**20:.1f} MiB ({', '.join(n for n, _ in real)})")
    if "fonts" in args.only:
        print(f"fonts: {pack_fonts(args.out / 'fonts.tar.xz', args.fonts_work) / 2**20:.1f} MiB")
    if "carry" in args.only:
        dst = args.out / "carry" / args.run.parent.name / args.run.name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        step = carry.carry_checkpoint(args.run / "last.pt", dst / "last.pt")
        for name in ("metrics.csv", "config.yaml", carry.CURVE_CACHE):
            if (args.run / name).is_file():
                shutil.copy2(args.run / name, dst / name)
        print(f"carry: step {step}, {sum(f.stat().st_size for f in dst.iterdir()) / 2**20:.1f} MiB")
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {total / 2**20:.1f} MiB in all")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
