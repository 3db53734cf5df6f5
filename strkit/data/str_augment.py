"""RandAugment for word crops: ``n`` operations drawn per sample from an STR pool at magnitude ``m``.

The pool follows the groups of the published STR augmentation studies (STRAug: warp, geometry, blur,
noise, weather-like degradation, camera, pattern and process; RandAugment-style sampling of N ops at a
shared magnitude M as in PARSeq's training): curve, perspective, shrink, rotate, shear, stretch, Gaussian /
motion / defocus-like blur, down-up scaling, Gaussian noise, JPEG, brightness/contrast, gamma, colour
jitter and inversion. ``m`` runs from 0 (no change, but for inversion) to 10 (the strongest setting of
each op; the ranges below at ``m = 10`` are roughly those of the ``strong`` preset). Operations act on the
resized ``uint8`` crop, like every preset (:mod:`strkit.data.transforms`).

Registered as the ``randaug`` preset; options come from ``data.augment_options`` (``{n: 2, m: 5}``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import cv2
import numpy as np

from strkit.data.augment import AUGMENTATIONS, AlbumentationsPipeline, Augment, import_albumentations

_BORDER = cv2.BORDER_REPLICATE


@cache
def _curve_class() -> type:
    """The ``Curve`` transform class (built lazily: albumentations is imported on first use only; one class
    per process, found again by name as ``strkit.data.str_augment.Curve`` so its instances pickle for
    spawn-started DataLoader workers)."""
    A = import_albumentations()

    class Curve(A.DualTransform):
        """Bend the text line into an arc: column ``x`` moves vertically by ``b·(1 - (2x/W - 1)²)``, with
        ``|b|`` up to ``bend`` image heights, upwards or downwards. Geometric without keypoint support, so
        a sample carrying word geometry loses it when this op is drawn (see ``apply_with_keypoints``)."""

        def __init__(self, bend: float = 0.3, p: float = 1.0) -> None:
            super().__init__(p=p)
            self.bend = float(bend)

        def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
            h = params["shape"][0]
            return {"shift": self.py_random.uniform(-self.bend, self.bend) * h}

        def apply(self, img: np.ndarray, shift: float = 0.0, **params: Any) -> np.ndarray:
            h, w = img.shape[:2]
            xs = np.arange(w, dtype=np.float32)
            dy = shift * (1.0 - (2.0 * xs / max(w - 1, 1) - 1.0) ** 2)
            map_x = np.broadcast_to(xs, (h, w)).astype(np.float32)
            map_y = (np.arange(h, dtype=np.float32)[:, None] - dy[None, :]).astype(np.float32)
            return cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=_BORDER)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("bend",)

    Curve.__qualname__ = "Curve"
    return Curve


@cache
def _shrink_class() -> type:
    """The ``Shrink`` transform class: the crop is scaled down to ``1 - s`` of its width and height (``s``
    up to ``amount``) and centred on its own replicated border, as text seen from further away (lazy and
    picklable like :func:`_curve_class`)."""
    A = import_albumentations()

    class Shrink(A.DualTransform):
        def __init__(self, amount: float = 0.3, p: float = 1.0) -> None:
            super().__init__(p=p)
            self.amount = float(amount)

        def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
            return {"sx": 1.0 - self.py_random.uniform(0, self.amount),
                    "sy": 1.0 - self.py_random.uniform(0, self.amount / 2)}

        def apply(self, img: np.ndarray, sx: float = 1.0, sy: float = 1.0, **params: Any) -> np.ndarray:
            h, w = img.shape[:2]
            m = np.float32([[sx, 0, (1 - sx) * w / 2], [0, sy, (1 - sy) * h / 2]])
            return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=_BORDER)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("amount",)

    Shrink.__qualname__ = "Shrink"
    return Shrink


_LAZY_CLASSES = {"Curve": _curve_class, "Shrink": _shrink_class}


def __getattr__(name: str) -> type:
    """``Curve`` and ``Shrink`` as module attributes, built on first access (how pickle finds them)."""
    if name in _LAZY_CLASSES:
        return _LAZY_CLASSES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def str_ops(channels: int, m: float) -> list[Any]:
    """The operation pool at magnitude ``m`` (0..10), each with ``p=1`` (the sampler decides)."""
    A = import_albumentations()
    k = max(0.0, min(float(m), 10.0)) / 10.0
    colour = (A.RandomBrightnessContrast(brightness_limit=0.5 * k, contrast_limit=0.5 * k, p=1.0)
              if channels == 1 else
              A.ColorJitter(brightness=0.5 * k, contrast=0.5 * k, saturation=0.5 * k, hue=0.1 * k, p=1.0))
    return [
        _curve_class()(bend=0.35 * k),
        A.Perspective(scale=(0.0, max(0.12 * k, 1e-3)), border_mode=_BORDER, p=1.0),
        _shrink_class()(amount=0.4 * k),
        A.Affine(rotate=(-15 * k, 15 * k), border_mode=_BORDER, p=1.0),
        A.Affine(shear={"x": (-30 * k, 30 * k), "y": (-6 * k, 6 * k)}, border_mode=_BORDER, p=1.0),
        A.Affine(scale={"x": (1 - 0.3 * k, 1 + 0.2 * k), "y": (1 - 0.2 * k, 1.0)}, border_mode=_BORDER, p=1.0),
        A.GaussianBlur(sigma_limit=(0.1, 0.1 + 1.9 * k), p=1.0),
        A.MotionBlur(blur_limit=(3, 3 + 2 * round(2 * k)), p=1.0),
        A.Downscale(scale_range=(1.0 - 0.7 * k, 1.0), p=1.0) if k > 0 else A.NoOp(),
        A.GaussNoise(std_range=(0.0, 0.15 * k), p=1.0),
        A.ImageCompression(quality_range=(int(95 - 75 * k), 95), p=1.0),
        colour,
        A.RandomGamma(gamma_limit=(int(100 - 40 * k), int(100 + 60 * k)), p=1.0),
        A.InvertImg(p=1.0),
    ]


@AUGMENTATIONS.register("randaug")
def randaug(channels: int = 1, seed: int | None = None, n: int = 2, m: float = 5.0, p: float = 1.0) -> Augment:
    """RandAugment for text: ``n`` distinct ops of :func:`str_ops` at magnitude ``m``, on a fraction ``p``
    of the samples (the rest pass unchanged)."""
    if n < 1:
        raise ValueError(f"randaug: n (ops per sample) must be at least 1, got {n}")
    if not 0 <= m <= 10:
        raise ValueError(f"randaug: m (magnitude) must lie in [0, 10], got {m}")
    A = import_albumentations()
    ops = str_ops(channels, m)
    return AlbumentationsPipeline([A.SomeOf(ops, n=min(int(n), len(ops)), replace=False, p=p)], seed=seed)
