"""Check that a font file draws real Latin letters: cmap, render, symbol and template checks.

:func:`audit_face` looks at one face of one file and returns an :class:`AuditRecord` (plain data,
cached as JSON by :mod:`strkit.data.synth.fonts`):

1. **cmap**: which of the requested characters the font maps (fontTools; a file fontTools cannot
   read is judged by rendering alone).
2. **render**: each character is drawn; it must have ink and must differ from the ``.notdef`` box
   (the glyph drawn for a code point the font lacks).
3. **distinct**: the 62 letters and digits must be pairwise different bitmaps, except within the
   confusable groups ``0/O/o`` and ``1/l/I/i`` and case pairs.
4. **caps-only**: the median over the 26 letters of the similarity between the lowercase and the
   uppercase glyph (each cropped to its ink and scaled to 16×16) is >= 0.85 (small caps, titling
   fonts; text faces score about 0.5), or the lowercase has neither ascenders nor descenders (``h k l
   d b`` no taller than ``x o n u v w z``, ``p g q y`` not below the baseline: unicase fonts, where
   ``c o s v w x z`` look the same in both cases). Usable for case-insensitive charsets only.
5. **symbol**: a Microsoft-Symbol-only cmap, or glyph names of letters that are not the letters
   (``alpha`` for ``a``: Greek-as-Latin and math fonts, dingbats).
6. **template score**: each of the 62 glyphs, cropped to its ink and scaled to 16×16, is classified
   by its nearest neighbour among the same glyphs of trusted plain fonts (DejaVu and STIX from
   matplotlib); the score is the fraction classified correctly. Dingbat and ornament fonts score
   near 0, text faces near 1; legible heavy display faces can score low, hence the reviewed
   allowlist in ``data/fonts/``.
"""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

AUDIT_VERSION = 5
AUDIT_SIZE = 40
CAPS_ONLY_MEDIAN = 0.85
NO_ASCENDER_RATIO = 1.12
NO_DESCENDER_RATIO = 0.12
ALNUM = string.digits + string.ascii_letters
ASCII94 = string.digits + string.ascii_letters + string.punctuation
NOTDEF_PROBE = "\U0010fffd"  # a private-use code point no text font maps
TRUSTED_TEMPLATE_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
                          "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
                          "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono.ttf",
                          "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf",
                          "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmss10.ttf")
_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_ANON_GLYPH = re.compile(r"^(glyph|cid|gid|g|index)\d+$", re.IGNORECASE)


@dataclass
class AuditRecord:
    """What the audit found about one face. Character sets are strings of characters.

    Attributes:
        path, index: the file and the face index in it (collections hold several faces).
        family, style: the font's names (``getname()``), ``""`` if it did not load.
        error: why the face could not be loaded, else ``""``.
        checked: the characters that were checked.
        covered: those present in the cmap (under their own glyph name, when named), drawn with ink
            and different from ``.notdef``.
        duplicates: pairs ``"xy"`` of letters/digits drawn identically across confusable groups.
        caps_median: median lowercase/uppercase glyph similarity (see the module docstring).
        ascender_ratio: median height of ``hkldb`` over that of ``xonuvwz`` (about 1.4 in text faces).
        descender_ratio: median depth of ``pgqy`` below the baseline over the x-height (about 0.3).
        caps_only: lowercase drawn as (small) capitals or without ascenders and descenders.
        symbol: why the font is a symbol font (``""`` if it is not).
        template_score: fraction of the drawn letters/digits recognised by the template classifier
            (``-1`` when fewer than 20 are drawn or no template font is available).
        line_ratio: (ascent + descent) / font size.
        ink_ratio: mean ink height of ``"Hxgb"`` / font size (the size of the letters).
        variable: the font has variation axes (only its default instance is used).
    """

    path: str
    index: int = 0
    family: str = ""
    style: str = ""
    error: str = ""
    checked: str = ""
    covered: str = ""
    duplicates: list[str] = field(default_factory=list)
    caps_median: float = 0.0
    ascender_ratio: float = 0.0
    descender_ratio: float = 0.0
    caps_only: bool = False
    symbol: str = ""
    template_score: float = -1.0
    line_ratio: float = 1.2
    ink_ratio: float = 0.75
    variable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditRecord:
        return cls(**d)


# ------------------------------------------------------------------------------------------------
# Rendering helpers
# ------------------------------------------------------------------------------------------------
def glyph_bitmap(font: ImageFont.FreeTypeFont, ch: str) -> np.ndarray:
    """The ink of ``ch`` as a uint8 array h×w cropped to its ink (0×0 when there is none)."""
    x0, y0, x1, y1 = font.getbbox(ch)
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    im = Image.new("L", (w + 2, h + 2), 0)
    ImageDraw.Draw(im).text((1 - x0, 1 - y0), ch, font=font, fill=255)
    a = np.asarray(im)
    x, y, bw, bh = cv2.boundingRect(a)
    return a[y:y + bh, x:x + bw]


def normalised_glyph(bitmap: np.ndarray) -> np.ndarray | None:
    """A glyph bitmap scaled to 16×16, zero-mean, unit-norm (float32 vector of 256); ``None`` if empty."""
    if bitmap.size == 0 or not bitmap.any():
        return None
    v = cv2.resize(bitmap, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    v -= v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-6 else None


def char_class(ch: str) -> str:
    """The confusion class of a letter or digit: case merged, ``0/O/o`` and ``1/l/I/i`` merged."""
    c = ch.lower()
    return {"0": "o", "1": "l", "i": "l"}.get(c, c)


class TemplateBank:
    """Normalised 16×16 glyphs of ALNUM from trusted plain fonts, for the template score.

    Args:
        font_dir: folder holding :data:`TRUSTED_TEMPLATE_FONTS` (matplotlib's ``fonts/ttf``).
    """

    def __init__(self, font_dir: Path) -> None:
        vecs: list[np.ndarray] = []
        classes: list[str] = []
        for name in TRUSTED_TEMPLATE_FONTS:
            path = font_dir / name
            if not path.is_file():
                continue
            font = ImageFont.truetype(str(path), AUDIT_SIZE)
            for ch in ALNUM:
                v = normalised_glyph(glyph_bitmap(font, ch))
                if v is not None:
                    vecs.append(v)
                    classes.append(char_class(ch))
        self.matrix = np.stack(vecs) if vecs else np.zeros((0, 256), np.float32)
        self.classes = np.array(classes)

    def __len__(self) -> int:
        return len(self.classes)

    def score(self, glyphs: dict[str, np.ndarray]) -> float:
        """Fraction of the given normalised glyphs whose nearest template has their class."""
        if not len(self) or not glyphs:
            return -1.0
        chars = list(glyphs)
        sims = np.stack([glyphs[c] for c in chars]) @ self.matrix.T
        best = self.classes[np.argmax(sims, axis=1)]
        return float(np.mean([best[i] == char_class(c) for i, c in enumerate(chars)]))


# ------------------------------------------------------------------------------------------------
# fontTools checks
# ------------------------------------------------------------------------------------------------
def _plausible_name(ch: str, name: str) -> bool:
    base = re.split(r"[._]", name, maxsplit=1)[0]
    code = f"{ord(ch):04X}"
    if base.upper() in (f"UNI{code}", f"U{code}", f"UNI{ord(ch.upper()):04X}", f"UNI{ord(ch.lower()):04X}"):
        return True
    if ch.isdigit():
        return base == ch or name.lower().startswith(_DIGIT_NAMES[int(ch)])
    return base in (ch, ch.lower(), ch.upper())


_PUNCT_EQUIV: dict[str, tuple[str, ...]] = {
    "'": ("quoteright", "quotesingle", "minute"), '"': ("quotedblright", "quotedblleft", "second"),
    "`": ("quoteleft", "grave"), "^": ("circumflex", "asciicircum"), "~": ("tilde", "asciitilde"),
    "-": ("hyphen", "hyphenminus", "minus", "endash", "sfthyphen"), "|": ("bar", "brokenbar", "verticalbar"),
    "&": ("ampersand",), "_": ("underscore", "underscore_low", "lowline"), "*": ("asterisk", "asteriskmath"),
    "\\": ("backslash",), "#": ("numbersign",), "%": ("percent",), "@": ("at",), "$": ("dollar",),
}


def _wrong_name(ch: str, name: str) -> bool:
    """True when the glyph mapped to a non-alphanumeric ``ch`` is named as something else.

    Anonymous names (``glyph12``, ``cid00034``) are not judged; ``uniXXXX`` must be ``ch``'s code
    point; any other name must be the Adobe Glyph List name of ``ch`` (or a listed equivalent).
    """
    from fontTools.agl import UV2AGL

    base = name.split(".", 1)[0]
    if _ANON_GLYPH.match(base):
        return False
    if base.lower().startswith("uni") and len(base) == 7:
        try:
            return int(base[3:], 16) != ord(ch)
        except ValueError:
            pass
    if base.lower() == f"u{ord(ch):04x}" or base == ch:
        return False
    return base != UV2AGL.get(ord(ch)) and base not in _PUNCT_EQUIV.get(ch, ())


@dataclass
class CmapInfo:
    """What fontTools reads from a face: mapped code points (``None``: unreadable), a symbol-font
    reason, whether it is a variable font, and checked characters whose glyph is named as another."""

    codepoints: set[int] | None = None
    symbol: str = ""
    variable: bool = False
    misnamed: set[str] = field(default_factory=set)


def cmap_info(path: str, index: int, check: str) -> CmapInfo:
    """Read the cmap and glyph names of face ``index`` of ``path`` (see :class:`CmapInfo`)."""
    try:
        from fontTools.ttLib import TTFont

        tt = TTFont(path, fontNumber=index, lazy=True)
    except Exception:  # fontTools raises many types for files it cannot parse; the render check remains
        return CmapInfo()
    try:
        subtables = [(t.platformID, t.platEncID) for t in tt["cmap"].tables]
        cmap = tt.getBestCmap() or {}
        info = CmapInfo(codepoints=set(cmap), variable="fvar" in tt)
        if (3, 0) in subtables and not any(p == 0 or (p, e) in ((3, 1), (3, 10)) for p, e in subtables):
            info.symbol = "Microsoft Symbol cmap only"
            return info
        letters = [(c, cmap[ord(c)]) for c in ALNUM if ord(c) in cmap]
        named = [(c, n) for c, n in letters if not _ANON_GLYPH.match(n)]
        if len(named) >= 20:
            good = sum(_plausible_name(c, n) for c, n in named)
            if good < 0.8 * len(named):
                bad = [f"{c}->{n}" for c, n in named if not _plausible_name(c, n)][:3]
                info.symbol = f"glyph names are not Latin letters ({', '.join(bad)} ...)"
        info.misnamed = {c for c in check if not c.isalnum() and ord(c) in cmap
                         and _wrong_name(c, cmap[ord(c)])}
        return info
    except Exception:  # a damaged table: judge by rendering alone
        return CmapInfo()
    finally:
        tt.close()


def case_shape(font: ImageFont.FreeTypeFont, drawn: dict[str, np.ndarray]) -> tuple[float, float]:
    """(ascender ratio, descender ratio) of the lowercase, from baseline-relative glyph boxes.

    ``(0, 0)`` when the letters needed are not drawn.
    """
    def tops(chars: str) -> list[float]:
        return [-font.getbbox(c, anchor="ls")[1] for c in chars if c in drawn]

    xh = tops("xonuvwz")
    asc = tops("hkldb")
    desc = [font.getbbox(c, anchor="ls")[3] for c in "pgqy" if c in drawn]
    if len(xh) < 3 or len(asc) < 3 or len(desc) < 2:
        return 0.0, 0.0
    x = max(float(np.median(xh)), 1.0)
    return round(float(np.median(asc)) / x, 4), round(float(np.median(desc)) / x, 4)


# ------------------------------------------------------------------------------------------------
# The audit
# ------------------------------------------------------------------------------------------------
def audit_face(path: str, index: int, check: str, bank: TemplateBank | None) -> AuditRecord:
    """Audit face ``index`` of ``path`` for the characters ``check`` (see the module docstring)."""
    rec = AuditRecord(path=path, index=index, checked=check)
    try:
        font = ImageFont.truetype(path, AUDIT_SIZE, index=index)
        rec.family, rec.style = (str(x) for x in font.getname())
    except Exception as exc:  # Pillow/FreeType raise OSError, ValueError ... for unreadable fonts
        rec.error = f"{type(exc).__name__}: {exc}"
        return rec
    info = cmap_info(path, index, check)
    codepoints, rec.symbol, rec.variable = info.codepoints, info.symbol, info.variable
    try:
        notdef = glyph_bitmap(font, NOTDEF_PROBE)
        bitmaps: dict[str, np.ndarray] = {}
        for ch in check:
            if (codepoints is not None and ord(ch) not in codepoints) or ch in info.misnamed:
                continue
            b = glyph_bitmap(font, ch)
            if b.size == 0 or not b.any():
                continue
            if notdef.size and b.shape == notdef.shape and np.array_equal(b, notdef):
                continue
            bitmaps[ch] = b
        ascent, descent = font.getmetrics()
    except Exception as exc:  # a broken glyph program can raise during rendering
        rec.error = f"render failed: {type(exc).__name__}: {exc}"
        return rec
    rec.covered = "".join(c for c in check if c in bitmaps)
    rec.line_ratio = round((ascent + descent) / AUDIT_SIZE, 4)
    inks = [bitmaps[c].shape[0] for c in "Hxgb" if c in bitmaps]
    rec.ink_ratio = round(float(np.mean(inks)) / AUDIT_SIZE, 4) if inks else rec.line_ratio * 0.6
    # distinct glyphs across confusion classes
    seen: dict[bytes, str] = {}
    for ch in ALNUM:
        b = bitmaps.get(ch)
        if b is None:
            continue
        key = bytes(b.shape) + b.tobytes()
        other = seen.get(key)
        if other is not None and char_class(other) != char_class(ch):
            rec.duplicates.append(other + ch)
        seen.setdefault(key, ch)
    norm = {c: v for c in ALNUM if c in bitmaps and (v := normalised_glyph(bitmaps[c])) is not None}
    sims = [float(norm[c] @ norm[c.upper()]) for c in string.ascii_lowercase
            if c in norm and c.upper() in norm]
    rec.caps_median = round(float(np.median(sims)), 4) if len(sims) >= 13 else 0.0
    rec.ascender_ratio, rec.descender_ratio = case_shape(font, bitmaps)
    rec.caps_only = rec.caps_median >= CAPS_ONLY_MEDIAN or (
        0 < rec.ascender_ratio < NO_ASCENDER_RATIO and rec.descender_ratio < NO_DESCENDER_RATIO)
    if bank is not None and len(norm) >= 20:
        rec.template_score = round(bank.score(norm), 4)
    return rec
