"""Backgrounds at the output size: flat, gradients, fractal noise, procedural textures, picture crops.

Each kind is registered in :data:`BACKGROUNDS` as ``fn(ctx, rng, height, width) -> uint8 H×W×3 RGB``;
``background.kinds`` in the config weights them. ``image`` draws crops of the user's pictures
(``background.image_dirs``), loaded once per process into a pool of small copies.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from strkit.data.image_limits import ImageTooLargeError, check_encoded
from strkit.data.synth.colors import luma, random_color, with_luma
from strkit.data.synth.config import BackgroundConfig, StyleConfig
from strkit.registry import Registry

log = logging.getLogger("strkit")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class BackgroundContext:
    """What the background kinds share: the configs and the picture pool (loaded on first use)."""

    def __init__(self, cfg: BackgroundConfig, style: StyleConfig) -> None:
        self.cfg = cfg
        self.style = style
        self._pool: list[np.ndarray] | None = None
        for d in cfg.image_dirs:  # fail early; the pictures themselves load on first use
            if not Path(d).expanduser().is_dir():
                raise FileNotFoundError(f"background.image_dirs: '{d}' is not a folder of pictures")

    def pair(self, rng: np.random.Generator, gray: bool, spread: tuple[float, float]) -> tuple[np.ndarray,
                                                                                                np.ndarray]:
        """Two colours whose luminances differ by a value drawn from ``spread``."""
        a = random_color(rng, self.style.saturation, gray)
        ya = float(luma(a))
        d = rng.uniform(*spread) * (1 if rng.random() < 0.5 else -1)
        yb = ya + d if 0 <= ya + d <= 255 else ya - d
        b = with_luma(random_color(rng, self.style.saturation, gray) if rng.random() < 0.5 else a, yb)
        return a, b

    @property
    def pool(self) -> list[np.ndarray]:
        """Pictures from ``image_dirs`` (RGB uint8, longest side <= 256), in sorted path order."""
        if self._pool is None:
            self._pool = load_picture_pool(self.cfg.image_dirs, self.cfg.image_pool)
        return self._pool


def load_picture_pool(dirs: list[str], limit: int) -> list[np.ndarray]:
    """Up to ``limit`` pictures from ``dirs`` (evenly spread over the sorted file list)."""
    files: list[Path] = []
    for d in dirs:
        p = Path(d).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"background.image_dirs: '{d}' is not a folder of pictures")
        for root, dirnames, names in os.walk(p):
            dirnames.sort()
            files += [Path(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise FileNotFoundError(f"background.image_dirs {dirs} holds no picture "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
    step = max(1, len(files) // max(1, limit))
    pool = []
    for f in files[::step][:limit]:
        try:
            data = f.read_bytes()
            check_encoded(data, where=str(f))  # a decompression bomb is refused from its header
        except (OSError, ImageTooLargeError) as exc:
            log.warning("background picture skipped: %s", exc)
            continue
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
        if img is None or min(img.shape[:2]) < 8:
            continue
        s = 256 / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        pool.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if not pool:
        raise FileNotFoundError(f"background.image_dirs {dirs}: no picture could be decoded")
    return pool


BackgroundFn = Callable[[BackgroundContext, np.random.Generator, int, int, bool], np.ndarray]
BACKGROUNDS: Registry[np.ndarray] = Registry("background kind")


def _two_tone(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Map a field t (H×W, 0..1) between colours a and b -> uint8 H×W×3."""
    out = a[None, None, :] + t[:, :, None] * (b - a)[None, None, :]
    return np.clip(out, 0, 255).astype(np.uint8)


def value_noise(rng: np.random.Generator, h: int, w: int, base: int, octaves: int) -> np.ndarray:
    """Fractal value noise in [0, 1] (float32 H×W): random grids upsampled bicubically, summed."""
    acc = np.zeros((h, w), np.float32)
    gh = base
    gw = max(2, int(round(base * w / h)))
    amp = 1.0
    for _ in range(octaves):
        grid = rng.random((gh, gw), dtype=np.float32)
        acc += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= 0.5
        gh, gw = min(gh * 2, h), min(gw * 2, w)
    lo, hi = float(acc.min()), float(acc.max())
    return (acc - lo) / max(hi - lo, 1e-6)


@BACKGROUNDS.register("flat")
def _flat(ctx: BackgroundContext, rng: np.random.Generator, h: int, w: int, gray: bool) -> np.ndarray:
    c = random_color(rng, ctx.style.saturation, gray)
    return np.broadcast_to(np.clip(c, 0, 255).astype(np.uint8), (h, w, 3)).copy()


@BACKGROUNDS.register("gradient")
def _gradient(ctx: BackgroundContext, rng: np.random.Generator, h: int, w: int, gray: bool) -> np.ndarray:
    a, b = ctx.pair(rng, gray, (20.0, 140.0))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.3:  # radial
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(x - cx, y - cy)
    else:
        ang = rng.uniform(0, 2 * math.pi)
        t = x * math.cos(ang) + y * math.sin(ang)
    t -= t.min()
    t /= max(float(t.max()), 1e-6)
    return _two_tone(t, a, b)


@BACKGROUNDS.register("noise")
def _noise(ctx: BackgroundContext, rng: np.random.Generator, h: int, w: int, gray: bool) -> np.ndarray:
    a, b = ctx.pair(rng, gray, (15.0, 110.0))
    t = value_noise(rng, h, w, int(rng.integers(2, 5)), int(rng.integers(2, 5)))
    return _two_tone(t, a, b)


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, math.pi)
    period = rng.uniform(3.0, max(4.0, h * 0.8))
    t = np.sin((x * math.cos(ang) + y * math.sin(ang)) * (2 * math.pi / period)) * 0.5 + 0.5
    return t if rng.random() < 0.5 else (t > 0.5).astype(np.float32)


def _grid(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    t = np.zeros((h, w), np.float32)
    step = int(rng.integers(4, max(5, h // 2)))
    ox, oy = int(rng.integers(step)), int(rng.integers(step))
    t[oy::step, :] = 1.0
    if rng.random() < 0.7:
        t[:, ox::step] = 1.0
    return t


def _paper(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    coarse = value_noise(rng, h, w, 3, 2)
    fine = rng.random((h, w), dtype=np.float32)
    if rng.random() < 0.5:  # brushed / fibres: fine noise smeared along a direction
        k = np.zeros((7, 7), np.float32)
        k[3, :] = 1.0 / 7
        if rng.random() < 0.5:
            k = k.T
        fine = cv2.filter2D(fine, -1, k)
    return 0.6 * coarse + 0.4 * fine


def _dots(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    t = np.zeros((h, w), np.float32)
    n = int(rng.integers(10, 60))
    xs, ys = rng.integers(0, w, n), rng.integers(0, h, n)
    r = int(rng.integers(1, 3))
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        cv2.circle(t, (x, y), r, 1.0, -1)
    return t


_PATTERNS = (_stripes, _grid, _paper, _dots)


@BACKGROUNDS.register("texture")
def _texture(ctx: BackgroundContext, rng: np.random.Generator, h: int, w: int, gray: bool) -> np.ndarray:
    a, b = ctx.pair(rng, gray, (10.0, 60.0))
    t = _PATTERNS[int(rng.integers(len(_PATTERNS)))](rng, h, w)
    return _two_tone(t, a, b)


@BACKGROUNDS.register("image")
def _image(ctx: BackgroundContext, rng: np.random.Generator, h: int, w: int, gray: bool) -> np.ndarray:
    pool = ctx.pool
    src = pool[int(rng.integers(len(pool)))]
    sh, sw = src.shape[:2]
    ch = max(4, int(sh * rng.uniform(0.15, 0.6)))
    cw = min(sw, max(4, int(ch * w / h * rng.uniform(0.7, 1.4))))
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = src[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    out = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.5))  # blur away legible strokes of old text
    if gray:
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    return out


def add_distractors(rng: np.random.Generator, img: np.ndarray, gray: bool, saturation: list[float]) -> None:
    """Draw 1–3 random lines or an edge bar over ``img`` (in place)."""
    h, w = img.shape[:2]
    c = random_color(rng, saturation, gray)
    color = tuple(float(v) for v in c)
    if rng.random() < 0.3:  # a bar along the top or bottom edge (sign border)
        t = int(rng.integers(1, max(2, h // 8)))
        if rng.random() < 0.5:
            img[:t] = c.astype(np.uint8)
        else:
            img[h - t:] = c.astype(np.uint8)
        return
    for _ in range(int(rng.integers(1, 4))):
        p1 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(0, h)))
        cv2.line(img, p1, p2, color, int(rng.integers(1, 3)), cv2.LINE_AA)
