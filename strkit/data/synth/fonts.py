"""Font discovery, audit cache, reviewed lists and per-sample font choice.

Fonts are found in the standard folders (matplotlib's bundled fonts, ``/usr/share/fonts``,
``/usr/local/share/fonts``, ``~/.local/share/fonts``, ``~/.fonts``,
``/usr/share/texmf/fonts/opentype`` where Debian puts TeX Gyre, and the macOS/Windows folders) and in
folders the user names. Every face is audited (:mod:`strkit.data.synth.font_audit`); results are cached
in ``<cache>/synth_fonts.json`` keyed by file path, face, mtime and size, so only new or changed files
are audited again. ``<cache>`` is ``$STRKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/strkit``, else
``~/.cache/strkit``.

A face is **usable** for a charset when it loads, is not on the blocklist, is no symbol font (unless
allowlisted), draws what ``fonts.coverage`` asks (default: every letter and digit of the charset;
for a case-insensitive charset either case of a letter suffices), draws no two letters alike, is
not caps-only (unless the charset is case-insensitive), passes the template score (unless
allowlisted) and is not a second copy of a family/style already kept. Faces that lack some
punctuation stay usable: a sample's font is re-drawn until it draws the sample's text, so no
missing glyph is ever drawn. Every rejection is counted in :class:`FontReport`.

The reviewed lists in ``data/fonts/`` are ``blocklist.txt`` (never use), ``allowlist.txt`` (legible
although the symbol or template heuristics reject it) and ``capsonly.txt`` (lowercase drawn as
capitals, which the automatic check misses): one case-insensitive shell pattern per line (``#``
starts a comment), matched against the file name, the family name and ``family:style``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import logging
import os
import sys
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageFont, features

from strkit.atomic import write_text_atomic
from strkit.charset import Charset
from strkit.data.cache import cache_dir
from strkit.data.synth.config import FontConfig
from strkit.data.synth.font_audit import ALNUM, ASCII94, AUDIT_VERSION, AuditRecord, TemplateBank, audit_face

log = logging.getLogger("strkit")

FONT_EXTENSIONS = (".ttf", ".otf", ".ttc", ".otc", ".woff", ".woff2")
SKIPPED_EXTENSIONS = (".pfb", ".pfa", ".pcf", ".bdf", ".afm", ".pfm")
MATPLOTLIB_DIR = "@matplotlib"


# ------------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------------
def matplotlib_font_dir() -> Path | None:
    """matplotlib's bundled ``mpl-data/fonts/ttf`` (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "mpl-data" / "fonts" / "ttf"
        if d.is_dir():
            return d
    return None


def standard_font_dirs() -> list[Path]:
    """The existing standard font folders of this platform, matplotlib's first."""
    home = Path.home()
    cands: list[Path | None] = [matplotlib_font_dir()]
    if sys.platform == "darwin":
        cands += [Path("/System/Library/Fonts"), Path("/Library/Fonts"), home / "Library" / "Fonts"]
    elif sys.platform.startswith("win"):
        cands += [Path(os.environ.get("WINDIR", "C:/Windows")) / "Fonts",
                  Path(os.environ.get("LOCALAPPDATA", home)) / "Microsoft" / "Windows" / "Fonts"]
    else:
        data_home = Path(os.environ.get("XDG_DATA_HOME", home / ".local" / "share"))
        cands += [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), data_home / "fonts",
                  home / ".fonts", Path("/usr/share/texmf/fonts/opentype")]  # Debian's fonts-texgyre
    return [p for p in cands if p is not None and p.is_dir()]


def resolve_font_dir(d: str | Path) -> Path:
    """A user-given font folder (``@matplotlib`` allowed); raises ``FileNotFoundError`` if missing."""
    if str(d) == MATPLOTLIB_DIR:
        m = matplotlib_font_dir()
        if m is None:
            raise FileNotFoundError("@matplotlib: matplotlib's font folder was not found; install matplotlib")
        return m
    p = Path(d).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"font folder '{d}' does not exist; pass an existing folder of "
                                f".ttf/.otf files (or a single font file)")
    return p


def find_font_files(dirs: Iterable[Path]) -> tuple[list[Path], int]:
    """Font files under ``dirs`` (recursive, symlinks resolved, duplicates removed, sorted).

    Returns:
        (files, number of skipped files in unsupported formats such as Type 1 ``.pfb``).
    """
    found: set[Path] = set()
    skipped = 0
    for d in dirs:
        if d.is_file():
            found.add(d.resolve())
            continue
        for root, dirnames, files in os.walk(d, followlinks=True):
            dirnames.sort()
            for f in files:
                ext = os.path.splitext(f)[1].lower()
                if ext in FONT_EXTENSIONS:
                    found.add(Path(root, f).resolve())
                elif ext in SKIPPED_EXTENSIONS:
                    skipped += 1
    return sorted(found, key=str), skipped


def face_count(path: Path) -> int:
    """Number of faces in a font file (collections hold several)."""
    if path.suffix.lower() not in (".ttc", ".otc"):
        return 1
    try:
        from fontTools.ttLib import TTCollection

        coll = TTCollection(str(path), lazy=True)
        n = len(coll.fonts)
        coll.close()
        return max(1, n)
    except Exception:  # unreadable collection: audit face 0, which reports the error
        return 1


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------
def _versions() -> dict[str, Any]:
    import PIL

    return {"audit": AUDIT_VERSION, "pillow": PIL.__version__, "freetype": features.version("freetype2")}


class AuditCache:
    """JSON cache of :class:`AuditRecord` keyed by ``path|face|mtime_ns|size|check-hash``.

    The file is rewritten atomically; a cache of another audit, Pillow or FreeType version is ignored.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else cache_dir() / "synth_fonts.json"
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if data.get("versions") == _versions():
                self.entries = data.get("entries", {})
        except (OSError, ValueError):
            pass

    @staticmethod
    def key(path: Path, index: int, check: str) -> str:
        st = path.stat()
        h = hashlib.sha1(check.encode("utf-8")).hexdigest()[:12]
        return f"{path}|{index}|{st.st_mtime_ns}|{st.st_size}|{h}"

    def get(self, key: str) -> AuditRecord | None:
        d = self.entries.get(key)
        return AuditRecord.from_dict(d) if d is not None else None

    def put(self, key: str, rec: AuditRecord) -> None:
        self.entries[key] = rec.to_dict()
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            write_text_atomic(self.path, json.dumps({"versions": _versions(), "entries": self.entries}))
            self.dirty = False
        except OSError as exc:
            log.warning("font audit cache %s not written (%s); fonts will be audited again next time",
                        self.path, exc)


# ------------------------------------------------------------------------------------------------
# Reviewed lists
# ------------------------------------------------------------------------------------------------
def lists_dir() -> Path:
    """The reviewed allow/block lists: package data ``strkit/data/synth/fontlists`` (``data/fonts`` in the
    repository links to it)."""
    return Path(__file__).resolve().parent / "fontlists"


def read_patterns(path: Path) -> list[str]:
    """Patterns of a list file (comments and blank lines removed, lowercased)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        pat = line.split("#", 1)[0].strip()
        if pat:
            out.append(pat.lower())
    return out


def matches(rec: AuditRecord, patterns: Sequence[str]) -> bool:
    """Whether a face matches a pattern by file name, family or ``family:style``."""
    names = (Path(rec.path).name.lower(), rec.family.lower(), f"{rec.family}:{rec.style}".lower())
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


# ------------------------------------------------------------------------------------------------
# Usable faces
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FontFace:
    """A usable face: the file, face index, names, drawable characters and size ratios."""

    path: str
    index: int
    family: str
    style: str
    covered: frozenset[str]
    line_ratio: float
    ink_ratio: float
    caps_only: bool


@dataclass
class FontReport:
    """Counts of the discovery: files, faces, usable faces/families and rejections by reason; ``undrawn``:
    characters ``fonts.coverage`` asks of every face that no otherwise usable face draws."""

    dirs: list[str] = field(default_factory=list)
    files: int = 0
    skipped_format: int = 0
    faces: int = 0
    usable: int = 0
    families: int = 0
    partial: int = 0
    audited_now: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    adjusted: Counter[str] = field(default_factory=Counter)
    rejected_faces: list[tuple[str, str]] = field(default_factory=list)
    undrawn: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"font folders: {', '.join(self.dirs) or '(none)'}",
                 f"{self.files} font files ({self.skipped_format} skipped: unsupported format, e.g. Type 1), "
                 f"{self.faces} faces, {self.audited_now} audited now (others from the cache)",
                 f"usable: {self.usable} faces in {self.families} families "
                 f"({self.partial} cannot draw every character of the charset, e.g. some punctuation: "
                 f"each text goes to a face that draws it)"]
        for reason, n in sorted(self.rejected.items(), key=lambda kv: -kv[1]):
            lines.append(f"  rejected {n:5d}  {reason}")
        for what, n in sorted(self.adjusted.items()):
            lines.append(f"  adjusted {n:5d}  {what}")
        return "\n".join(lines)


def path_weight(path: str, weights: dict[str, float]) -> float:
    """The weight of the first pattern of ``weights`` matching ``path`` (1.0 if none matches)."""
    for pattern, w in weights.items():
        if fnmatch.fnmatchcase(path, pattern):
            return float(w)
    return 1.0


def core_ok(covered: set[str] | frozenset[str], needed_alnum: Sequence[str], case_insensitive: bool) -> bool:
    """Whether a face draws every needed letter/digit (either case suffices when case-insensitive)."""
    for c in needed_alnum:
        if c in covered:
            continue
        if case_insensitive and c.isalpha() and (c.upper() in covered or c.lower() in covered):
            continue
        return False
    return True


def check_chars(charset: Charset) -> str:
    """The characters audited for a charset: printable ASCII plus the charset's (with both cases)."""
    extra = sorted({v for c in charset.chars for v in (c, c.upper(), c.lower())
                    if len(v) == 1 and not v.isspace() and v not in ASCII94})
    return ASCII94 + "".join(extra)


def _audit_job(args: tuple[str, int, str]) -> AuditRecord:
    path, index, check = args
    return audit_face(path, index, check, _bank())


_BANK: list[TemplateBank] = []


def _bank() -> TemplateBank | None:
    """The template bank of this process (built on first use)."""
    if not _BANK:
        d = matplotlib_font_dir()
        _BANK.append(TemplateBank(d) if d is not None else TemplateBank(Path("/nonexistent")))
    return _BANK[0] if len(_BANK[0]) else None


def audit_files(files: Sequence[Path], check: str, cache: AuditCache | None, workers: int = 1,
                report: FontReport | None = None, progress: bool = False) -> list[AuditRecord]:
    """Audit every face of ``files`` for the characters ``check``, using and filling ``cache``."""
    todo: list[tuple[str, tuple[str, int, str]]] = []
    records: dict[str, AuditRecord] = {}
    order: list[str] = []
    for f in files:
        for index in range(face_count(f)):
            try:
                key = AuditCache.key(f, index, check)
            except OSError:
                continue
            order.append(key)
            rec = cache.get(key) if cache is not None else None
            if rec is None:
                todo.append((key, (str(f), index, check)))
            else:
                records[key] = rec
    if todo:
        if len(todo) > 50:
            where = f"cached in {cache.path}" if cache is not None else "not cached"
            log.info("auditing %d font faces (done once per file; %s)", len(todo), where)
        jobs = [j for _, j in todo]
        it: Iterable[AuditRecord]
        pool = None
        if workers > 1 and len(todo) > 16:
            import multiprocessing as mp

            pool = mp.get_context("spawn" if sys.platform == "win32" else "fork").Pool(workers)
            it = pool.imap(_audit_job, jobs, chunksize=4)
        else:
            it = map(_audit_job, jobs)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(jobs), desc="auditing fonts", unit="face")
        try:
            for (key, _), rec in zip(todo, it, strict=True):
                records[key] = rec
                if cache is not None:
                    cache.put(key, rec)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        if cache is not None:
            cache.save()
    if report is not None:
        report.audited_now += len(todo)
    return [records[k] for k in order]


class FontSet:
    """The usable faces for one charset, with per-sample choice and a cache of loaded fonts.

    Build it with :func:`discover_fonts`. ``faces`` is sorted by (path, face index), which fixes the
    meaning of a random draw for a given set of font files.

    Args:
        faces: the usable faces.
        sampling: ``family`` (over families, then uniformly over their faces) or ``file`` (over faces).
        report: the discovery counts.
        max_loaded: how many (face, size) font objects are kept loaded.
        weights: ``{shell pattern of a font path: weight}``; a family (or face) whose path matches a
            pattern is drawn with that relative weight instead of 1 (first matching pattern wins).
    """

    def __init__(self, faces: Sequence[FontFace], sampling: str = "family", report: FontReport | None = None,
                 max_loaded: int = 512, weights: dict[str, float] | None = None) -> None:
        if not faces:
            raise RuntimeError("no usable font: install fonts (see docs/fonts.md) or pass a folder of "
                               ".ttf/.otf files with --fonts / fonts.dirs")
        self.faces = sorted(faces, key=lambda f: (f.path, f.index))
        self.sampling = sampling
        self.report = report or FontReport()
        fams: dict[str, list[int]] = {}
        for i, f in enumerate(self.faces):
            fams.setdefault(f.family, []).append(i)
        self.families = [fams[k] for k in sorted(fams)]
        units = ([self.faces[fam[0]].path for fam in self.families] if sampling == "family"
                 else [f.path for f in self.faces])
        w = np.array([path_weight(p, weights or {}) for p in units], dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"fonts.family_weights {weights} leave no font with a positive weight")
        self._cdf = None if np.all(w == w[0]) else np.cumsum(w) / w.sum()
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[tuple[int, int], ImageFont.FreeTypeFont] = OrderedDict()
        self.covered_union = frozenset().union(*(f.covered for f in self.faces))

    def __len__(self) -> int:
        return len(self.faces)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = OrderedDict()
        return state

    @property
    def list_hash(self) -> str:
        """SHA-1 of the usable faces (path, face, mtime, size): identifies the font list in LMDB meta."""
        h = hashlib.sha1()
        for f in self.faces:
            try:
                st = os.stat(f.path)
                h.update(f"{f.path}|{f.index}|{st.st_mtime_ns}|{st.st_size}\n".encode())
            except OSError:
                h.update(f"{f.path}|{f.index}|missing\n".encode())
        return h.hexdigest()

    def draw_index(self, rng: np.random.Generator) -> int:
        """Index of a random face (one or two draws from ``rng``)."""
        n = len(self.families) if self.sampling == "family" else len(self.faces)
        if self._cdf is None:
            k = int(rng.integers(n))
        else:
            k = min(int(np.searchsorted(self._cdf, rng.random(), side="right")), n - 1)
        if self.sampling == "family":
            fam = self.families[k]
            return fam[int(rng.integers(len(fam)))] if len(fam) > 1 else fam[0]
        return k

    def sample(self, rng: np.random.Generator, text: str, tries: int = 6) -> int | None:
        """Index of a random face that draws every character of ``text``; ``None`` if no face does."""
        need = set(text)
        for _ in range(tries):
            i = self.draw_index(rng)
            if need <= self.faces[i].covered:
                return i
        ok = [i for i, f in enumerate(self.faces) if need <= f.covered]
        return ok[int(rng.integers(len(ok)))] if ok else None

    def font(self, i: int, size: int) -> ImageFont.FreeTypeFont:
        """Face ``i`` loaded at ``size`` pixels (kept in a small LRU cache).

        The basic layout engine is used (no libraqm shaping): Latin text needs none, it is faster, and
        the pixels do not depend on whether libraqm is installed."""
        key = (i, size)
        f = self._loaded.get(key)
        if f is not None:
            self._loaded.move_to_end(key)
            return f
        face = self.faces[i]
        f = ImageFont.truetype(face.path, size, index=face.index, layout_engine=ImageFont.Layout.BASIC)
        self._loaded[key] = f
        if len(self._loaded) > self.max_loaded:
            self._loaded.popitem(last=False)
        return f


#: Fewer usable families than this from the standard folders: the recommended fonts are not installed
#: (matplotlib's and Debian's base fonts give about 11 families; docs/fonts.md).
FEW_FAMILIES = 40


def discover_fonts(cfg: FontConfig, charset: Charset, extra_dirs: Sequence[str | Path] = (),
                   use_cache: bool = True, workers: int = 1, progress: bool = False) -> FontSet:
    """Find, audit and filter fonts for ``charset`` (see the module docstring).

    Args:
        cfg: the ``fonts`` section of the synth config.
        charset: the charset whose letters and digits every usable face must draw.
        extra_dirs: more folders (or files), e.g. from ``--fonts``.
        use_cache: read and write the audit cache.
        workers: processes for auditing many new fonts.
        progress: show a progress bar while auditing.

    Raises:
        FileNotFoundError: a named folder does not exist.
        RuntimeError: no usable font at all.
    """
    dirs: list[Path] = standard_font_dirs() if cfg.system else []
    for d in [*cfg.dirs, *extra_dirs]:
        p = resolve_font_dir(d)
        if p not in dirs:
            dirs.append(p)
    report = FontReport(dirs=[str(d) for d in dirs])
    files, report.skipped_format = find_font_files(dirs)
    report.files = len(files)
    check = check_chars(charset)
    cache = AuditCache() if use_cache else None
    records = audit_files(files, check, cache, workers=workers, report=report, progress=progress)
    report.faces = len(records)
    faces = select_faces(records, charset, cfg, report)
    if not faces and report.undrawn:
        names = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in report.undrawn[:5])
        raise RuntimeError(f"no usable font: no font found draws {names} of charset '{charset.name}', which "
                           f"fonts.coverage={cfg.coverage} asks of every face; install a font that has "
                           f"{'them' if len(report.undrawn) > 1 else 'it'} (see docs/fonts.md) or add its "
                           f"folder with --fonts (fonts.dirs)")
    if cfg.system and report.families < FEW_FAMILIES:
        log.warning("only %d font families found: synthetic data is far less diverse than with the "
                    "recommended fonts (sudo tools/install_fonts.sh, docs/fonts.md: about 530 families)",
                    report.families)
    return FontSet(faces, sampling=cfg.sampling, report=report, weights=cfg.family_weights)


def _needed(charset: Charset, coverage: str) -> list[str]:
    """What ``fonts.coverage`` asks of every face: ``charset`` (every non-space character), ``alnum``
    (every letter and digit) or ``letters``."""
    return {"charset": [c for c in charset.chars if not c.isspace()],
            "alnum": [c for c in charset.chars if c.isalnum()],
            "letters": [c for c in charset.chars if c.isalpha()]}[coverage]


@dataclass(frozen=True)
class ReviewLists:
    """The reviewed lists of ``data/fonts/`` (lowercase shell patterns)."""

    block: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()

    @classmethod
    def load(cls, folder: Path | None = None) -> ReviewLists:
        d = folder if folder is not None else lists_dir()
        return cls(tuple(read_patterns(d / "blocklist.txt")), tuple(read_patterns(d / "allowlist.txt")),
                   tuple(read_patterns(d / "capsonly.txt")))


def select_faces(records: Sequence[AuditRecord], charset: Charset, cfg: FontConfig,
                 report: FontReport, lists: ReviewLists | None = None) -> list[FontFace]:
    """Apply the usability rules to audit records, counting every rejection in ``report``.

    A digit drawn exactly like a letter (``5``/``S`` in many display fonts) is removed from the
    face's drawable characters, so that face never draws it; letters drawn alike reject the face.
    """
    if lists is None:
        lists = ReviewLists.load() if cfg.lists else ReviewLists()
    insensitive = charset.case_insensitive
    drawable = {v for c in charset.chars for v in ({c, c.upper()} if insensitive else {c}) if len(v) == 1}
    needed = _needed(charset, cfg.coverage)
    faces: list[FontFace] = []
    kept_names: set[tuple[str, str]] = set()
    drawn: set[str] = set()  # by faces that pass every rule but coverage
    for rec in sorted(records, key=lambda r: (r.path, r.index)):
        caps_only = rec.caps_only or (bool(lists.caps) and matches(rec, lists.caps))
        if rejection(rec, (), insensitive, lists, cfg.min_template_score, caps_only) is None:
            drawn.update(rec.covered)
        reason = rejection(rec, needed, insensitive, lists, cfg.min_template_score, caps_only)
        if reason is None and (rec.family, rec.style) in kept_names:
            reason = "duplicate of a family/style already kept"
        if reason is not None:
            report.rejected[reason] += 1
            report.rejected_faces.append((f"{rec.path}#{rec.index}", reason))
            continue
        kept_names.add((rec.family, rec.style))
        unusable = {c for pair in rec.duplicates for c in pair if c.isdigit()}
        if unusable:
            report.adjusted["digits drawn like letters (those digits not drawn in that face)"] += 1
        covered = frozenset(c for c in rec.covered if c in drawable and c not in unusable)
        if not drawable <= covered:
            report.partial += 1
        faces.append(FontFace(rec.path, rec.index, rec.family, rec.style, covered, rec.line_ratio,
                              rec.ink_ratio, caps_only))
    report.usable = len(faces)
    report.families = len({f.family for f in faces})
    report.undrawn = [c for c in needed if not core_ok(drawn, [c], insensitive)]
    return faces


def rejection(rec: AuditRecord, needed: Sequence[str], case_insensitive: bool, lists: ReviewLists,
              min_score: float, caps_only: bool) -> str | None:
    """Why a face is not usable (``None`` if it is)."""
    if rec.error:
        return "does not load"
    if lists.block and matches(rec, lists.block):
        return "blocklisted (data/fonts/blocklist.txt)"
    allowed = bool(lists.allow) and matches(rec, lists.allow)
    if rec.symbol and not allowed:
        return "symbol font"
    if not core_ok(set(rec.covered), needed, case_insensitive):
        return "missing characters of the charset (fonts.coverage)"
    if any(not (a.isdigit() or b.isdigit()) for a, b in rec.duplicates):
        return "letters drawn alike"
    if caps_only and not case_insensitive:
        return "caps-only (usable with a case-insensitive charset)"
    if 0 <= rec.template_score < min_score and not allowed:
        return "low template score (not Latin-like)"
    return None


__all__ = ["ALNUM", "AuditCache", "FontFace", "FontReport", "FontSet", "discover_fonts", "select_faces"]
