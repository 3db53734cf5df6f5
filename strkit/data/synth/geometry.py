"""Geometric distortions of the text: curved baselines, rotation, perspective, crop and resize.

Coordinates: the text is drawn flat in *render* space, where its ink box is ``[x0, x1] × [y0, y1]``. A
:class:`Curve` maps render space to *curved* space (``forward``) and back (``inverse``); a 3×3
homography ``H`` maps curved space to the working canvas (rotation, perspective, then the crop's scale
and offset). The mask is warped in one pass: ``cv2.warpPerspective`` without a curve, ``cv2.remap``
through ``inverse(H⁻¹(p))`` with one. Point sets (the boundary polylines, the crop bounds) go the
forward way. Curves are registered in :data:`CURVES` (``arc``, ``sine``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from strkit.data.synth.config import GeometryConfig
from strkit.registry import Registry


@dataclass(frozen=True)
class Box:
    """The flat text's ink box in render space (pixels)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def w(self) -> float:
        return max(1.0, self.x1 - self.x0)

    @property
    def h(self) -> float:
        return max(1.0, self.y1 - self.y0)


class Curve:
    """A smooth map of render space onto curved space (identity here)."""

    def forward(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y


class SineCurve(Curve):
    """Vertical displacement ``amp · sin(2π · periods · (x − x0) / w + phase)``; letters stay upright."""

    def __init__(self, box: Box, amp: float, periods: float, phase: float) -> None:
        self.x0, self.k, self.amp, self.phase = box.x0, 2 * math.pi * periods / box.w, amp, phase

    def _dy(self, x: np.ndarray) -> np.ndarray:
        return self.amp * np.sin(self.k * (x - self.x0) + self.phase)

    def forward(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y + self._dy(x)

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y - self._dy(x)


class ArcCurve(Curve):
    """The text's centre line is bent onto a circle of radius ``radius``; letters turn with it.

    ``up=True`` bends like ∩ (circle centre below the text), ``up=False`` like ∪. Arc length along the
    centre line is preserved.
    """

    def __init__(self, box: Box, radius: float, up: bool) -> None:
        self.cx = (box.x0 + box.x1) / 2
        self.yc = (box.y0 + box.y1) / 2
        self.r = radius
        self.s = 1.0 if up else -1.0
        self.oy = self.yc + self.s * radius  # the circle's centre

    def forward(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = (x - self.cx) / self.r
        rr = self.r + self.s * (self.yc - y)
        return self.cx + rr * np.sin(a), self.oy - self.s * rr * np.cos(a)

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx = x - self.cx
        dy = self.s * (self.oy - y)
        rr = np.hypot(dx, dy)
        a = np.arctan2(dx, dy)
        return self.cx + self.r * a, self.yc - self.s * (rr - self.r)


CurveFactory = Callable[[np.random.Generator, Box, GeometryConfig], Curve]
CURVES: Registry[Curve] = Registry("curve kind")


@CURVES.register("sine")
def _sine(rng: np.random.Generator, box: Box, cfg: GeometryConfig) -> Curve:
    amp = rng.uniform(*cfg.sine_amplitude) * box.h
    periods = rng.uniform(*cfg.sine_periods)
    return SineCurve(box, amp, periods, rng.uniform(0, 2 * math.pi))


@CURVES.register("arc")
def _arc(rng: np.random.Generator, box: Box, cfg: GeometryConfig) -> Curve:
    angle = math.radians(rng.uniform(*cfg.arc_angle))
    radius = max(box.w / max(angle, 1e-3), 1.5 * box.h)  # keep the inner edge well outside the centre
    return ArcCurve(box, radius, up=bool(rng.random() < 0.5))


def apply_h(h: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a 3×3 homography to point arrays."""
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    return (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w


def boundary(box: Box, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points along the top edge and ``n`` along the bottom edge of ``box`` (x and y arrays)."""
    xs = np.linspace(box.x0, box.x1, n)
    return xs, np.full(n, box.y0), xs.copy(), np.full(n, box.y1)


def sample_homography(rng: np.random.Generator, cfg: GeometryConfig, xs: np.ndarray, ys: np.ndarray,
                      height: float) -> np.ndarray:
    """Rotation and perspective for points ``(xs, ys)`` of a text of ``height`` pixels (3×3 float64)."""
    h = np.eye(3)
    x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if rng.random() < cfg.perspective_p:
        s = rng.uniform(*cfg.perspective) * height
        src = np.float32([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        dst = src + rng.uniform(-s, s, size=(4, 2)).astype(np.float32)
        h = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
    if rng.random() < cfg.rotate_p:
        a = math.radians(float(np.clip(rng.normal(0.0, cfg.rotate_std), -cfg.rotate_max, cfg.rotate_max)))
        c, s_ = math.cos(a), math.sin(a)
        rot = np.array([[c, -s_, cx - c * cx + s_ * cy], [s_, c, cy - s_ * cx - c * cy], [0, 0, 1]])
        h = rot @ h
    return h


def warp_mask(mask: np.ndarray, h: np.ndarray, curve: Curve | None, size: tuple[int, int]) -> np.ndarray:
    """Warp a uint8 render-space mask to a canvas of ``size`` = (width, height).

    Coordinates are continuous on both sides: pixel ``(i, j)`` covers ``[i, i+1) × [j, j+1)`` and has
    its centre at ``(i + 0.5, j + 0.5)``.

    Args:
        mask: uint8 H×W in render space.
        h: 3×3 homography, curved space -> canvas.
        curve: the curve (``None``: none).
        size: canvas (width, height).

    Returns:
        uint8 array height×width.
    """
    w, ht = size
    if curve is None:
        h_idx = _SHIFT_OUT @ h @ _SHIFT_IN
        return cv2.warpPerspective(mask, h_idx, (w, ht), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT)
    hi = np.linalg.inv(h)
    u = np.arange(w, dtype=np.float64)[None, :] + 0.5
    v = np.arange(ht, dtype=np.float64)[:, None] + 0.5
    qx, qy = apply_h(hi, u, v)
    mx, my = curve.inverse(qx, qy)
    return cv2.remap(mask, (mx - 0.5).astype(np.float32), (my - 0.5).astype(np.float32),
                     interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


_SHIFT_IN = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
_SHIFT_OUT = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])


def centerline(geom: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centre-line form of a recorded geometry (``geom-%09d`` JSON, parsed).

    Args:
        geom: ``{"top": [[x, y]...], "bottom": [[x, y]...], ...}`` with K points each, in output pixels.

    Returns:
        ``(points K×2, heights K, angles K)``: the midpoints of matching top/bottom points, the local
        text height (distance top-bottom) and the local orientation of the centre line in radians
        (0 = left to right, positive = turning clockwise in image coordinates, y down).
    """
    top = np.asarray(geom["top"], dtype=np.float64)
    bottom = np.asarray(geom["bottom"], dtype=np.float64)
    mid = (top + bottom) / 2
    heights = np.linalg.norm(top - bottom, axis=1)
    d = np.gradient(mid, axis=0)
    return mid, heights, np.arctan2(d[:, 1], d[:, 0])
