"""The renderer: one synthetic word image per call, a pure function of (seed, index).

Pipeline of :meth:`Renderer.render_rng` (every random draw from the sample's generator):

1. text and label (:class:`~strkit.data.synth.text.TextSampler`), a font face that draws every
   character (:class:`~strkit.data.synth.fonts.FontSet`), a font size chosen so that the text is about
   as tall on the working canvas as it will be drawn (no large rescaling);
2. the flat text mask (Pillow, optional character tracking and underline);
3. an optional curve (arc or sine), rotation and perspective, crop with random margins; the mask is
   warped once onto a working canvas ``supersample ×`` the output height (keeping the crop's aspect);
4. outline, shadow and stroke-weight changes on the canvas masks, then an area resize of the masks to
   the output size;
5. background (:mod:`~strkit.data.synth.background`), colours with a controlled contrast (checked on
   the composited luminance): random, or with ``style.palette_p`` a (text, background) pair of a colour
   map fitted on real crops (:mod:`~strkit.data.synth.palette`), which also sets the background's
   texture strength; with ``layout.border_text_p`` fragments of other words around the word's box
   (distractor text, drawn from a separate stream of the sample's generator, so the rest of the
   sample is the same with or without them); compositing in float32 at the output size;
6. degradations (:mod:`~strkit.data.synth.degrade`) and optional conversion to gray.

With ``geometry=True`` the sample also carries the text's upper and lower boundary polylines in output
pixel coordinates (continuous: the image spans ``[0, W] × [0, H]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from strkit.charset import Charset
from strkit.config import ConfigError
from strkit.data.synth.background import BACKGROUNDS, BackgroundContext, add_distractors, value_noise
from strkit.data.synth.colors import LUMA, contrasting_luma, luma, random_color, with_luma
from strkit.data.synth.config import SynthConfig
from strkit.data.synth.degrade import degrade
from strkit.data.synth.fonts import FontSet, discover_fonts
from strkit.data.synth.geometry import CURVES, Box, Curve, apply_h, boundary, sample_homography, warp_mask
from strkit.data.synth.palette import Palette, load_palette
from strkit.data.synth.text import TextSampler, _categorical

_KERNELS = {r: cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)) for r in range(1, 9)}
_K3 = np.ones((3, 3), np.uint8)
# gap between distractor text and the word, in text heights: a line gap above/below, a word gap beside
_BORDER_GAP = {"top": (0.2, 0.5), "bottom": (0.2, 0.5), "left": (0.35, 0.7), "right": (0.35, 0.7)}


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``seed``: independent of every other sample."""
    if index < 0 or seed < 0:
        raise ValueError(f"seed and sample index must be >= 0, got seed={seed} index={index}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))


@dataclass
class SynthSample:
    """One rendered sample.

    Attributes:
        image: uint8 H×W×3 RGB, or H×W when the config asks for gray.
        label: the label (in the charset); ``charset.normalize(text)``.
        text: the text as drawn (its case may differ from the label for a case-insensitive charset).
        font: ``"family style"`` of the face used.
        geometry: ``{"top": [[x, y]...], "bottom": [[x, y]...], "width": W, "height": H}`` or ``None``.
    """

    image: np.ndarray
    label: str
    text: str
    font: str
    geometry: dict[str, Any] | None = None


def side_stream(rng: np.random.Generator) -> np.random.Generator:
    """A generator derived from ``rng``'s current state without drawing from it (a jumped copy of its
    bit generator), so optional extras do not shift the sample's other draws."""
    jumped = getattr(rng.bit_generator, "jumped", None)
    if jumped is not None:
        return np.random.Generator(jumped())
    return np.random.Generator(np.random.PCG64(int(rng.integers(2**63))))  # pragma: no cover - SFC64


class _Shifted(Curve):
    """A curve seen from a bitmap placed at ``(dx, dy)`` of render space (for :func:`warp_mask`)."""

    def __init__(self, curve: Curve, dx: float, dy: float) -> None:
        self.curve, self.dx, self.dy = curve, dx, dy

    def forward(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.curve.forward(x + self.dx, y + self.dy)

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rx, ry = self.curve.inverse(x, y)
        return rx - self.dx, ry - self.dy


def glyph_run(font: ImageFont.FreeTypeFont, text: str) -> tuple[np.ndarray, int, int]:
    """``text`` drawn by FreeType: (uint8 bitmap h×w, x and y of its top-left corner relative to the
    left end of the baseline). One layout pass (``getmask2``), no intermediate canvas."""
    core, (ox, oy) = font.getmask2(text, mode="L", anchor="ls")
    if core.size[0] == 0 or core.size[1] == 0:
        return np.zeros((0, 0), np.uint8), int(ox), int(oy)
    try:  # wrap FreeType's bitmap without a second layout pass (Pillow's own idiom for core images)
        return np.asarray(Image.Image()._new(core)), int(ox), int(oy)
    except AttributeError:  # pragma: no cover - a Pillow without it: the public, slower way
        x0, y0, x1, y1 = font.getbbox(text, anchor="ls")
        im = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
        ImageDraw.Draw(im).text((-x0, -y0), text, font=font, fill=255, anchor="ls")
        return np.asarray(im), int(x0), int(y0)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB (H×W×3) or gray (H×W) uint8 image."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV fails only on empty images
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class Renderer:
    """Renders synthetic word images.

    Args:
        cfg: the synth config.
        charset: labels lie in this charset (``None``: ``cfg.text.charset``).
        font_dirs: extra font folders (added to ``cfg.fonts.dirs``).
        fonts: a ready :class:`FontSet` (skips discovery).
        words: a ready lexicon (skips loading ``cfg.text.lexicon``).
        use_cache: use the font audit cache.
        workers: processes for auditing many new fonts.
        progress: show a progress bar while auditing fonts.

    Raises:
        ConfigError: bad config values (e.g. unknown kinds, an empty lexicon).
        FileNotFoundError: a named font or picture folder does not exist.
        RuntimeError: no usable font.
    """

    def __init__(self, cfg: SynthConfig, charset: Charset | str | None = None,
                 font_dirs: Sequence[str | Path] = (), fonts: FontSet | None = None,
                 words: Sequence[str] | None = None, use_cache: bool = True, workers: int = 1,
                 progress: bool = False) -> None:
        self.cfg = cfg
        if charset is None or isinstance(charset, str):
            charset = Charset.from_spec(charset or cfg.text.charset)
        self.charset = charset
        self.fonts = fonts if fonts is not None else discover_fonts(cfg.fonts, charset, font_dirs, use_cache,
                                                                    workers, progress)
        self.text = TextSampler(cfg.text, charset, allowed=self.fonts.covered_union, words=words)
        self.bg = BackgroundContext(cfg.background, cfg.style)
        kinds = dict(cfg.background.kinds)
        if not cfg.background.image_dirs:
            kinds["image"] = 0.0
        self._bg_kinds, self._bg_cdf = _categorical(kinds, BACKGROUNDS.names(), "background.kinds")
        self._curves, self._curve_cdf = _categorical(cfg.geometry.curve, CURVES.names(), "geometry.curve")
        self.canvas_h = int(round(cfg.output.supersample * cfg.output.height))
        self.palette = self._load_palette() if cfg.style.palette_p > 0 else None

    def _load_palette(self) -> Palette:
        """``style.palette`` without the pairs whose contrast is below ``style.min_contrast`` (+ 5)."""
        sty = self.cfg.style
        pal = load_palette(sty.palette)
        keep = pal.contrast >= sty.min_contrast + 5.0
        if not keep.any():
            raise ConfigError(f"style.palette '{sty.palette}': no pair has a contrast of at least "
                              f"style.min_contrast + 5 = {sty.min_contrast + 5:g}")
        return pal.subset(keep)

    # ------------------------------------------------------------------------------------------
    def render(self, index: int, seed: int = 0, geometry: bool = False) -> SynthSample:
        """Sample ``index`` of ``seed`` (a pure function of both, given the fonts and lexicon)."""
        return self.render_rng(sample_rng(seed, index), geometry=geometry)

    def encode(self, image: np.ndarray) -> bytes:
        """Storage bytes of an image (JPEG at ``output.storage_quality``)."""
        return encode_jpeg(image, self.cfg.output.storage_quality)

    def meta(self) -> dict[str, Any]:
        """Provenance of the data: config, charset, font list and lexicon hashes, library versions."""
        import PIL
        from PIL import features

        meta = {"generator": "strkit.data.synth", "config": self.cfg.to_dict(),
                "charset": self.charset.to_dict(),
                "fonts": {"count": len(self.fonts), "families": len(self.fonts.families),
                          "list_sha1": self.fonts.list_hash},
                "lexicon": {"spec": self.cfg.text.lexicon, "words": len(self.text.words),
                            "sha1": self.text.lexicon_hash},
                "versions": {"pillow": PIL.__version__, "freetype": features.version("freetype2"),
                             "opencv": cv2.__version__, "numpy": np.__version__}}
        if self.palette is not None:  # the pairs in use (a palette file can change under the same name)
            meta["palette"] = {"spec": self.cfg.style.palette, "pairs": len(self.palette),
                               "sha1": self.palette.digest()}
        return meta

    # ------------------------------------------------------------------------------------------
    def render_rng(self, rng: np.random.Generator, geometry: bool = False) -> SynthSample:
        """One sample from the generator ``rng`` (see the module docstring)."""
        for _ in range(20):
            text, label = self.text.sample(rng)
            fi = self.fonts.sample(rng, text)
            if fi is None:
                continue
            out = self._draw(rng, text, fi, geometry)
            if out is not None:
                face = self.fonts.faces[fi]
                image, geom = out
                return SynthSample(image, label, text, f"{face.family} {face.style}", geom)
        raise RuntimeError("could not render a sample in 20 attempts: the fonts draw too few characters of "
                           f"charset '{self.charset.name}'")

    def _text_mask(self, rng: np.random.Generator, text: str, fi: int,
                   size: int) -> tuple[np.ndarray, Box, Box, float] | None:
        """Flat text mask (uint8 H×W), its ink box, the box including decorations and the baseline's
        y, render space."""
        lay = self.cfg.layout
        font = self.fonts.font(fi, size)
        if rng.random() < lay.tracking_p and len(text) > 1:
            track = rng.uniform(*lay.tracking) * size
            pieces, x = [], 0.0
            for ch in text:
                bitmap, ox, oy = glyph_run(font, ch)
                pieces.append((bitmap, int(round(x)) + ox, oy))
                x += font.getlength(ch) + track
        else:
            bitmap, ox, oy = glyph_run(font, text)
            pieces = [(bitmap, ox, oy)]
        pieces = [p for p in pieces if p[0].size]
        if not pieces:
            return None
        left = min(px for _, px, _ in pieces)
        top = min(py for _, _, py in pieces)
        right = max(px + b.shape[1] for b, px, _ in pieces)
        bottom = max(py + b.shape[0] for b, _, py in pieces)
        under = rng.random() < lay.underline_p
        pad = 2 + size // 8
        height = bottom - top + 2 * pad + (size // 4 if under else 0)
        mask = np.zeros((height, right - left + 2 * pad), np.uint8)
        for b, px, py in pieces:
            y, x_ = py - top + pad, px - left + pad
            region = mask[y:y + b.shape[0], x_:x_ + b.shape[1]]
            np.maximum(region, b, out=region)
        bx, by, bw, bh = cv2.boundingRect(mask)
        if bw == 0 or bh == 0:
            return None
        ink = Box(float(bx), float(by), float(bx + bw), float(by + bh))
        full = ink
        baseline = pad - top
        if under:
            t = max(1, int(round(size * rng.uniform(0.04, 0.08))))
            y = min(int(round(baseline + size * rng.uniform(0.08, 0.16))), mask.shape[0] - t - 1)
            mask[y:y + t, bx:bx + bw] = 255
            full = Box(ink.x0, ink.y0, ink.x1, max(ink.y1, float(y + t)))
        return mask, ink, full, float(baseline)

    def _draw(self, rng: np.random.Generator, text: str, fi: int,
              want_geometry: bool) -> tuple[np.ndarray, dict[str, Any] | None] | None:
        """Steps 2–6 of the module docstring for one text and face; ``None``: draw another text."""
        cfg = self.cfg
        out, lay, geo, sty = cfg.output, cfg.layout, cfg.geometry, cfg.style
        face = self.fonts.faces[fi]
        hc = self.canvas_h
        fill = rng.uniform(*lay.fill)
        size = int(round(fill * hc / max(face.ink_ratio, 0.2) * rng.uniform(*lay.size_jitter) / 2.0)) * 2
        size = int(np.clip(size, 8, 256))
        drawn = self._text_mask(rng, text, fi, size)
        if drawn is None:
            return None
        mask, ink, full, baseline = drawn

        # -- geometry: curve, rotation/perspective, crop -------------------------------------------
        curve: Curve | None = None
        if rng.random() < geo.curve_p:
            kind = self._curves[int(np.searchsorted(self._curve_cdf, rng.random(), side="right"))]
            curve = CURVES.get(kind)(rng, ink, geo)
        tx, ty, bx_, by_ = boundary(full, 33)
        px, py = np.concatenate([tx, bx_]), np.concatenate([ty, by_])
        if curve is not None:
            px, py = curve.forward(px, py)
        h0 = sample_homography(rng, geo, px, py, ink.h)
        qx, qy = apply_h(h0, px, py)
        ux0, ux1, uy0, uy1 = float(qx.min()), float(qx.max()), float(qy.min()), float(qy.max())
        bh_u = max(uy1 - uy0, 1.0)
        crop_h = bh_u + ink.h * (1.0 / fill - 1.0)  # margins scale with the text, not with its slant
        top = uy0 - (crop_h - bh_u) * rng.uniform(0.0, 1.0)
        ml, mr = rng.uniform(*lay.margin_x) * ink.h, rng.uniform(*lay.margin_x) * ink.h
        left = ux0 - ml
        crop_w = (ux1 - ux0) + ml + mr
        out_h = out.height
        if out.keep_ratio:
            out_w = int(np.clip(round(crop_w / crop_h * out_h), out.min_width, out.max_width))
            want = out_w / out_h * crop_h
            if want > crop_w:  # too short for min_width: widen the crop instead of stretching
                left -= (want - crop_w) * rng.uniform(0.0, 1.0)
                crop_w = want
        else:
            out_w = out.width
            smax = rng.uniform(*out.max_stretch)
            if (out_w / out_h) / (crop_w / crop_h) > smax:
                want = (out_w / out_h) * crop_h / smax
                left -= (want - crop_w) * rng.uniform(0.0, 1.0)
                crop_w = want
        sigma = hc / crop_h
        wc = max(1, int(round(crop_w * sigma)))
        s = np.array([[sigma, 0, -left * sigma], [0, sigma, -top * sigma], [0, 0, 1.0]])
        h_full = s @ h0  # curved space -> canvas (continuous coordinates)

        # -- masks on the canvas --------------------------------------------------------------------
        fc = warp_mask(mask, h_full, curve, (wc, hc))
        text_h = ink.h * sigma
        if rng.random() < sty.weight_p:
            fc = (cv2.dilate if rng.random() < 0.6 else cv2.erode)(fc, _K3 if text_h > 40 else _K3[:2, :2])
        oc = None
        if rng.random() < sty.outline_p:
            r = int(np.clip(round(rng.uniform(*sty.outline_width) * text_h), 1, 8))
            oc = cv2.dilate(fc, _KERNELS[r])
        sc = None
        if rng.random() < sty.shadow_p:
            d = rng.uniform(*sty.shadow_offset) * text_h
            a = rng.uniform(0.15, 0.85) * math.pi if rng.random() < 0.8 else rng.uniform(0, 2 * math.pi)
            m = np.float32([[1, 0, d * math.cos(a)], [0, 1, d * math.sin(a)]])
            sc = cv2.warpAffine(oc if oc is not None else fc, m, (wc, hc))
        size_out = (out_w, out_h)
        f = cv2.resize(fc, size_out, interpolation=cv2.INTER_AREA).astype(np.float32) * (1 / 255)
        o = cv2.resize(oc, size_out, interpolation=cv2.INTER_AREA).astype(np.float32) * (1 / 255) \
            if oc is not None else None
        sh = None
        if sc is not None:
            sh = cv2.resize(sc, size_out, interpolation=cv2.INTER_AREA).astype(np.float32) * (1 / 255)
            blur = rng.uniform(*sty.shadow_blur)
            if blur > 0.3:
                sh = cv2.GaussianBlur(sh, (0, 0), blur)
        inside = f > 0.5
        if not inside.any():
            return None

        # -- background, colours, compositing -------------------------------------------------------
        gray = rng.random() < sty.gray_p
        kind = self._bg_kinds[int(np.searchsorted(self._bg_cdf, rng.random(), side="right"))]
        bg = BACKGROUNDS.get(kind)(self.bg, rng, out_h, out_w, gray)
        pal = None
        if self.palette is not None and rng.random() < sty.palette_p:
            bg, pal = self._palette_colors(rng, bg, gray)
        if rng.random() < cfg.background.distractor_p:
            add_distractors(rng, bg, gray, sty.saturation)
        ring = cv2.dilate(inside.astype(np.uint8), _K3, iterations=2).astype(bool) & (f < 0.05)
        if o is not None:
            ring &= o < 0.05
        if not ring.any():
            ring = ~inside
            if not ring.any():
                return None
        extra = None
        if lay.border_text_p > 0:
            extra = self._border_text(side_stream(rng), text, fi, size, ink, full, baseline, curve, h_full,
                                      sigma, fc, f, ring)
        img = self._composite(rng, bg, f, o, sh, inside, ring, gray, pal, extra)

        # -- degradations: thin strokes must survive them (else one more draw, then none) ----------------
        for _ in range(2):
            degraded = degrade(rng, img, cfg.degrade)
            if contrast_of(degraded, inside, ring) >= sty.min_contrast:
                break
        else:
            degraded = img
        img = degraded
        if out.gray:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        geom = None
        if want_geometry:
            geom = self._geometry(ink, curve, h_full, out_w / wc, out_h / hc, out_w, out_h)
        return img, geom

    def _palette_colors(self, rng: np.random.Generator, bg: np.ndarray,
                        gray: bool) -> tuple[np.ndarray, np.ndarray]:
        """A palette pair: the background recoloured to its background colour (the kind's pattern scaled
        to the pair's luminance std, plus its grain) and its text colour (RGB float32 (3,))."""
        p = self.palette
        assert p is not None
        i = p.draw(rng)
        jit = self.cfg.style.palette_jitter
        ct = np.clip(p.text[i] + rng.uniform(-jit, jit, 3), 0, 255).astype(np.float32)
        cb = np.clip(p.bg[i] + rng.uniform(-jit, jit, 3), 0, 255).astype(np.float32)
        if gray:
            ct, cb = np.full(3, luma(ct), np.float32), np.full(3, luma(cb), np.float32)
        bgf = bg.astype(np.float32)
        dev = bgf - bgf.reshape(-1, 3).mean(0)
        spread = float((dev @ LUMA).std())
        k = min(1.5, float(p.bg_std[i]) / spread) if spread > 1e-3 else 0.0
        out = cb + dev * k
        if p.noise[i] > 0.5:
            out = out + rng.normal(0.0, float(p.noise[i]), out.shape[:2])[:, :, None].astype(np.float32)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), ct

    def _border_text(self, rng: np.random.Generator, text: str, fi: int, size: int, ink: Box, full: Box,
                     baseline: float, curve: Curve | None, h_full: np.ndarray, sigma: float, fc: np.ndarray,
                     f: np.ndarray, ring: np.ndarray) -> np.ndarray | None:
        """Distractor text: 1–2 fragments of other words above, below, left or right of the word's box
        (same geometry), cut by the crop's edges. Returns their coverage at the output size (float32
        H×W, 0 on and around the word's box and its ring) or ``None``. ``rng`` is a side stream."""
        lay = self.cfg.layout
        if rng.random() >= lay.border_text_p:
            return None
        hc, wc = fc.shape
        tx, ty, bx_, by_ = boundary(full, 33)
        px, py = np.concatenate([tx, bx_[::-1]]), np.concatenate([ty, by_[::-1]])
        if curve is not None:
            px, py = curve.forward(px, py)
        cx, cy = apply_h(h_full, px, py)
        keep_out = np.zeros((hc, wc), np.uint8)
        cv2.fillPoly(keep_out, [np.round(np.stack([cx, cy], 1) * 4).astype(np.int32)], 1, cv2.LINE_8, 2)
        keep_out |= (fc > 0).astype(np.uint8)
        keep_out = cv2.dilate(keep_out, _KERNELS[int(np.clip(round(0.05 * hc), 1, 8))])
        # the room between the box and the crop's edges in text heights (render space is scaled by about
        # sigma); a fragment keeps a line gap (above, below) or a word gap (beside) from the word, so that
        # it never reads as a part of it, and shows at least a little of itself
        room = {"top": float(cy.min()), "bottom": hc - float(cy.max()), "left": float(cx.min()),
                "right": wc - float(cx.max())}
        room = {k: v / sigma / ink.h for k, v in room.items()}
        sides = [k for k, r in room.items() if r >= _BORDER_GAP[k][0] + 0.1]
        if not sides:
            return None
        dm = np.zeros((hc, wc), np.uint8)
        for _ in range(1 if rng.random() < 0.6 else 2):
            side = sides[int(rng.integers(len(sides)))]
            frag, _ = self.text.sample(rng)
            if side in ("top", "bottom") and rng.random() < 0.5:
                frag = f"{frag} {self.text.sample(rng)[0]}"
            glyphs = frag.replace(" ", "")  # faces' coverage lists no space
            fj = fi if rng.random() < 0.5 else self.fonts.sample(rng, glyphs)
            if fj is None or not set(glyphs) <= self.fonts.faces[fj].covered:
                continue
            r = rng.uniform(*lay.border_text_size) if side in ("top", "bottom") else rng.uniform(0.9, 1.1)
            bitmap, ox, oy = glyph_run(self.fonts.font(fj, int(np.clip(round(size * r), 6, 256))), frag)
            if not bitmap.size:
                continue
            bh, bw = bitmap.shape
            lo, hi = _BORDER_GAP[side]
            gap = min(rng.uniform(lo, hi), room[side] - 0.1) * ink.h
            if side in ("top", "bottom"):
                x = rng.uniform(ink.x0 - bw, ink.x1)
                y = full.y0 - gap - bh if side == "top" else full.y1 + gap
            else:
                x = ink.x0 - gap - bw if side == "left" else ink.x1 + gap
                y = baseline + oy + rng.uniform(-0.05, 0.05) * ink.h
            if curve is None:
                t = np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])
                warped = warp_mask(bitmap, h_full @ t, None, (wc, hc))
            else:
                warped = warp_mask(bitmap, h_full, _Shifted(curve, x, y), (wc, hc))
            np.maximum(dm, warped, out=dm)
        dm[keep_out > 0] = 0
        if not dm.any():
            return None
        d = cv2.resize(dm, f.shape[::-1], interpolation=cv2.INTER_AREA).astype(np.float32) * (1 / 255)
        guard = cv2.resize(keep_out, f.shape[::-1], interpolation=cv2.INTER_AREA) > 0
        guard |= cv2.dilate((f > 0.02).astype(np.uint8), _K3).astype(bool) | ring
        d[guard] = 0.0
        return d if float(d.max()) > 0.1 else None

    def _composite(self, rng: np.random.Generator, bg: np.ndarray, f: np.ndarray, o: np.ndarray | None,
                   sh: np.ndarray | None, inside: np.ndarray, ring: np.ndarray, gray: bool,
                   pal: np.ndarray | None = None, extra: np.ndarray | None = None) -> np.ndarray:
        """Shadow, outline and text over the background with a checked contrast -> uint8 H×W×3.

        ``inside``: the text's core pixels (bool H×W); ``ring``: the pixels just around the text (and its
        outline); the luminance difference of their means must reach ``style.min_contrast``. ``pal``: the
        text colour of a palette pair (tried twice as it is, then moved in luminance, keeping its hue and
        polarity); ``extra``: distractor text coverage, drawn like the text.
        """
        sty = self.cfg.style
        bgf = bg.astype(np.float32)
        yb = float((bgf @ LUMA)[inside].mean())
        alpha = rng.uniform(*sty.alpha)
        for attempt in range(4):
            contrast = rng.uniform(*(sty.low_contrast if rng.random() < sty.low_contrast_p else sty.contrast))
            if attempt == 3:  # last resort: the extreme colour on the far side of the background
                yt, alpha = (0.0 if yb > 127.5 else 255.0), 1.0
                ct = np.full(3, yt, np.float32)
            elif pal is not None:
                yp = float(luma(pal))
                if attempt < 2:
                    ct, yt = pal, yp
                else:
                    yt = contrasting_luma(rng, yb, contrast, 1.0 if yp < yb else 0.0)
                    ct = with_luma(pal, yt)
            else:
                yt = contrasting_luma(rng, yb, contrast, sty.dark_text_p)
                ct = with_luma(random_color(rng, sty.saturation, gray), yt)
            img = bgf.copy()
            if sh is not None:
                ys = rng.uniform(0, 60) if yt > yb else rng.uniform(190, 255)
                cs = with_luma(random_color(rng, sty.saturation, gray), ys)
                a_s = sh[:, :, None] * rng.uniform(0.4, 0.9)
                img += (cs - img) * a_s
            if o is not None:
                yo = contrasting_luma(rng, yt, rng.uniform(*sty.contrast), 0.5)
                co = with_luma(random_color(rng, sty.saturation, gray), yo)
                img += (co - img) * o[:, :, None]
            color: np.ndarray = ct[None, None, :]
            if rng.random() < sty.texture_p and attempt < 3:
                t = value_noise(rng, *f.shape, 3, 3) * 2.0 - 1.0
                color = np.clip(ct[None, None, :] + (t * 0.35 * contrast)[:, :, None], 0, 255)
            cover = f if extra is None else np.maximum(f, extra)
            img += (color - img) * (cover * alpha)[:, :, None]
            lum = img @ LUMA
            if abs(float(lum[inside].mean()) - float(lum[ring].mean())) >= sty.min_contrast or attempt == 3:
                break
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    def _geometry(self, ink: Box, curve: Curve | None, h_full: np.ndarray, sx: float, sy: float,
                  out_w: int, out_h: int) -> dict[str, Any]:
        """Upper and lower boundary polylines of the ink box, in output pixel coordinates."""
        tx, ty, bx_, by_ = boundary(ink, self.cfg.geometry.points)
        polys = []
        for x, y in ((tx, ty), (bx_, by_)):
            if curve is not None:
                x, y = curve.forward(x, y)
            cx, cy = apply_h(h_full, x, y)
            ox = np.clip(cx * sx, 0.0, out_w)
            oy = np.clip(cy * sy, 0.0, out_h)
            polys.append([[round(float(a), 2), round(float(b), 2)] for a, b in zip(ox, oy, strict=True)])
        return {"top": polys[0], "bottom": polys[1], "width": out_w, "height": out_h}


def contrast_of(image: np.ndarray, inside: np.ndarray, ring: np.ndarray) -> float:
    """|mean luminance of ``inside`` − mean luminance of ``ring``| of a uint8 RGB image (H×W×3)."""
    lum = image.astype(np.float32) @ LUMA
    return abs(float(lum[inside].mean()) - float(lum[ring].mean()))
