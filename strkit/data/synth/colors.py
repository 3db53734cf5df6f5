"""Colours with a given luminance, for text and backgrounds with controlled contrast.

Luminance is ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (0..255), the weights OpenCV's
RGB-to-gray conversion uses, so a contrast chosen here is the contrast a gray model sees.
"""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray | float:
    """Luminance of an RGB colour (3,) or image (…×3), float."""
    return rgb @ LUMA


def random_color(rng: np.random.Generator, saturation: tuple[float, float] | list[float],
                 gray: bool = False) -> np.ndarray:
    """A random RGB colour (float32 (3,), 0..255): uniform hue, value in [0, 255], given saturation."""
    v = rng.uniform(0.0, 255.0)
    if gray:
        return np.full(3, v, np.float32)
    hue = rng.uniform(0.0, 6.0)
    s = rng.uniform(*saturation)
    k = (np.array([5.0, 3.0, 1.0]) + hue) % 6.0
    rgb = v * (1.0 - s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))  # HSV -> RGB, vectorised
    return rgb.astype(np.float32)


def with_luma(color: np.ndarray, target: float) -> np.ndarray:
    """``color`` moved to luminance ``target`` (0..255) keeping its hue; chroma shrinks if needed."""
    target = float(np.clip(target, 0.0, 255.0))
    y = float(luma(color))
    d = color.astype(np.float32) - y
    scale = 1.0
    for di in d:
        if di > 1e-6:
            scale = min(scale, (255.0 - target) / di)
        elif di < -1e-6:
            scale = min(scale, target / -di)
    return np.clip(target + scale * d, 0.0, 255.0).astype(np.float32)


def contrasting_luma(rng: np.random.Generator, bg_luma: float, contrast: float, dark_p: float) -> float:
    """A luminance ``contrast`` away from ``bg_luma``: darker with probability ``dark_p``.

    The polarity flips when the wanted side has no room; if neither side has room, the farther
    extreme (0 or 255) is used.
    """
    dark = rng.random() < dark_p
    lo, hi = bg_luma - contrast, bg_luma + contrast
    if dark and lo >= 0:
        return lo
    if not dark and hi <= 255:
        return hi
    if lo >= 0:
        return lo
    if hi <= 255:
        return hi
    return 0.0 if bg_luma > 127.5 else 255.0
