"""Image degradations at the output size: blur, motion blur, resolution loss, noise, JPEG.

Each is registered in :data:`DEGRADATIONS` as ``fn(rng, img, cfg) -> img`` (uint8 H×W×3 RGB) and
applied with its probability ``degrade.<name>_p`` in the order of :data:`ORDER`. Every random draw comes
from the sample's generator; OpenCV's own random state is never used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from strkit.data.synth.config import DegradeConfig
from strkit.registry import Registry

Degradation = Callable[[np.random.Generator, np.ndarray, DegradeConfig], np.ndarray]
DEGRADATIONS: Registry[np.ndarray] = Registry("degradation")
ORDER: tuple[str, ...] = ("blur", "motion", "lowres", "noise", "jpeg")


@DEGRADATIONS.register("blur")
def blur(rng: np.random.Generator, img: np.ndarray, cfg: DegradeConfig) -> np.ndarray:
    """Gaussian blur, sigma from ``blur_sigma``."""
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(*cfg.blur_sigma))


@DEGRADATIONS.register("motion")
def motion(rng: np.random.Generator, img: np.ndarray, cfg: DegradeConfig) -> np.ndarray:
    """Linear motion blur of length ``motion_length`` at a random angle."""
    length = rng.uniform(*cfg.motion_length)
    k = int(math.ceil(length)) | 1
    kernel = np.zeros((k, k), np.float32)
    a = rng.uniform(0, math.pi)
    c = (k - 1) / 2
    dx, dy = math.cos(a) * (length - 1) / 2, math.sin(a) * (length - 1) / 2
    cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))),
             1.0, 1, cv2.LINE_AA)
    kernel /= max(float(kernel.sum()), 1e-6)
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)


_UP = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST)


@DEGRADATIONS.register("lowres")
def lowres(rng: np.random.Generator, img: np.ndarray, cfg: DegradeConfig) -> np.ndarray:
    """Down-scale by ``lowres_factor`` and back up (blocky or soft resolution loss)."""
    h, w = img.shape[:2]
    f = rng.uniform(*cfg.lowres_factor)
    size = (max(2, int(round(w / f))), max(2, int(round(h / f))))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=_UP[int(rng.choice(3, p=[0.6, 0.25, 0.15]))])


@DEGRADATIONS.register("noise")
def noise(rng: np.random.Generator, img: np.ndarray, cfg: DegradeConfig) -> np.ndarray:
    """Additive Gaussian noise (colour or luminance-only), std from ``noise_std``."""
    std = rng.uniform(*cfg.noise_std)
    h, w, c = img.shape
    shape = (h, w, c) if rng.random() < 0.5 else (h, w, 1)
    n = rng.standard_normal(shape, dtype=np.float32) * std
    return np.clip(img.astype(np.float32) + n, 0, 255).astype(np.uint8)


@DEGRADATIONS.register("jpeg")
def jpeg(rng: np.random.Generator, img: np.ndarray, cfg: DegradeConfig) -> np.ndarray:
    """A JPEG round trip at a quality from ``jpeg_quality`` (block artefacts, chroma loss)."""
    q = int(round(rng.uniform(*cfg.jpeg_quality)))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else img


def degrade(rng: np.random.Generator, img: np.ndarray, cfg: DegradeConfig) -> np.ndarray:
    """Apply every degradation with its probability, in :data:`ORDER`."""
    for name in ORDER:
        if rng.random() < getattr(cfg, f"{name}_p"):
            img = DEGRADATIONS.get(name)(rng, img, cfg)
    return img
