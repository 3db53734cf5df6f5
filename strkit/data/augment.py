"""Augmentation presets on resized ``uint8`` crops, and the albumentations pipeline that runs them.

:data:`AUGMENTATIONS` maps a preset name to ``factory(channels: int, seed: int | None) -> Augment``, where
an ``Augment`` maps a ``uint8`` image (``H×W`` gray or ``H×W×3`` RGB) to one of the same shape. The
presets ``none``, ``light`` and ``strong`` are registered here, ``randaug`` in
:mod:`strkit.data.str_augment`; :mod:`strkit.data.transforms` imports both, so every preset is registered
wherever augmentations are built.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from strkit.registry import Registry

Augment = Callable[[np.ndarray], np.ndarray]


#: Augmentation presets: ``factory(channels: int, seed: int | None) -> Augment``, where an
#: ``Augment`` maps a ``uint8`` image (``H×W`` gray or ``H×W×3`` RGB) to one of the same shape.
AUGMENTATIONS: Registry[Augment] = Registry("augmentation preset")


def import_albumentations() -> ModuleType:
    """Import albumentations without its network update check (it queries PyPI at import time)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


# ----------------------------------------------------------------------------------------------
# Augmentation presets
# ----------------------------------------------------------------------------------------------
class Identity:
    """The ``none`` preset: returns the image unchanged (and costs nothing in :class:`ImageTransform`)."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image

    def reseed(self, seed: int | None) -> None:
        """Nothing to seed."""


#: albumentations classes whose keypoint mapping is only approximate (their ``apply_to_keypoints``
#: remaps through an integer-rounded inverse map, or a rasterised mask that can lose points).
_APPROXIMATE_KEYPOINT_BASES = ("BaseDistortion",)


def _leaf_transforms(transforms: Sequence[Any]) -> list[Any]:
    """The transforms of a (possibly nested: ``OneOf``, ``SomeOf`` ...) albumentations pipeline."""
    A = import_albumentations()
    out: list[Any] = []
    for t in transforms:
        if isinstance(t, A.BaseCompose):
            out.extend(_leaf_transforms(t.transforms))
        else:
            out.append(t)
    return out


def keypoints_exact(transform: Any) -> bool:
    """Whether an albumentations transform moves keypoints exactly as it moves the pixels.

    True for pixel-level (image-only) transforms, which move nothing, and for geometric transforms that
    list keypoints among their targets and map them with the same matrix as the image (``Affine``,
    ``Perspective``, flips ...). False for geometric transforms without keypoint support and for the
    remap-based distortions (``GridDistortion``, ``ElasticTransform``, ``OpticalDistortion``,
    ``PiecewiseAffine``, ``ThinPlateSpline``), whose keypoints are rounded to whole pixels or dropped.
    """
    A = import_albumentations()
    if isinstance(transform, A.ImageOnlyTransform):
        return True
    if any(cls.__name__ in _APPROXIMATE_KEYPOINT_BASES for cls in type(transform).__mro__):
        return False
    targets = getattr(transform, "_targets", ())
    targets = targets if isinstance(targets, tuple | list) else (targets,)
    return any(getattr(t, "name", "") == "KEYPOINTS" for t in targets)


class AlbumentationsPipeline:
    """An albumentations ``Compose`` over a list of transforms, called on a single image.

    Args:
        transforms: albumentations transforms, applied in order.
        seed: seed of the pipeline's own generators (``None``: fresh entropy).
    """

    def __init__(self, transforms: Sequence[Any], seed: int | None = None) -> None:
        self.transforms = list(transforms)
        self.keypoints = False
        self._inexact: list[Any] = []
        self.compose = self._build(seed)

    def _build(self, seed: int | None) -> Any:
        A = import_albumentations()
        if not self.keypoints:
            return A.Compose(self.transforms, seed=seed, is_check_shapes=False)
        return A.Compose(self.transforms, seed=seed, is_check_shapes=False,
                         keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))

    def enable_keypoints(self, seed: int | None = None) -> None:
        """Rebuild the pipeline so that :meth:`apply_with_keypoints` can move points with the image
        (albumentations ``KeypointParams(format="xy", remove_invisible=False)``); reseeds it from
        ``seed``. Plain calls work as before."""
        self.keypoints = True
        self._inexact = [t for t in _leaf_transforms(self.transforms) if not keypoints_exact(t)]
        self.compose = self._build(seed)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``uint8`` ``H×W`` or ``H×W×3`` -> augmented image of the same shape and dtype."""
        return self.compose(image=image)["image"]

    def apply_with_keypoints(self, image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment ``image`` and move ``points`` (N×2 ``[x, y]``, pixel-index frame: the centre of the
        top-left pixel is ``(0, 0)``, as in albumentations and OpenCV) with it.

        Returns:
            ``(augmented image, N×2 float64 points)``, or ``(augmented image, None)`` when a transform
            whose keypoint mapping is not exact (:func:`keypoints_exact`) was applied to this sample,
            or points were lost: the caller then has no geometry for the sample rather than a wrong one.

        Raises:
            RuntimeError: :meth:`enable_keypoints` was not called.
        """
        if not self.keypoints:
            raise RuntimeError("AlbumentationsPipeline.apply_with_keypoints needs enable_keypoints() first")
        for t in self._inexact:  # albumentations sets `params` on the transforms it applies in this call
            t.params = {}
        try:
            out = self.compose(image=image, keypoints=np.asarray(points, dtype=np.float32).reshape(-1, 2))
        except NotImplementedError:  # a geometric transform without keypoint support was drawn
            return self.compose(image=image)["image"], None
        moved = np.asarray(out["keypoints"], dtype=np.float64)
        if any(getattr(t, "params", None) for t in self._inexact) or moved.shape[0] != len(points):
            return out["image"], None
        return out["image"], moved[:, :2]

    def reseed(self, seed: int | None) -> None:
        """Reset the generators of the pipeline (and of each of its transforms) from ``seed``."""
        self.compose.set_random_seed(seed)

    def seed_sample(self, seed: int) -> None:
        """Give the pipeline and all its transforms one shared pair of generators (numpy and Python)
        seeded from ``seed``: what the next call draws is a function of ``seed`` alone. About 8× cheaper
        than :meth:`reseed` (which builds generators for every transform), so affordable per sample."""
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _colour(A: ModuleType, channels: int, strength: float, p: float) -> Any:
    """Brightness/contrast jitter for gray images, full colour jitter for RGB."""
    if channels == 1:
        return A.RandomBrightnessContrast(brightness_limit=strength, contrast_limit=strength, p=p)
    return A.ColorJitter(brightness=strength, contrast=strength, saturation=strength,
                         hue=min(0.5, strength / 4), p=p)


@AUGMENTATIONS.register("none")
def no_augmentation(channels: int = 1, seed: int | None = None) -> Augment:
    """No augmentation (validation, evaluation, or training data that is already varied)."""
    return Identity()


@AUGMENTATIONS.register("light")
def light_augmentation(channels: int = 1, seed: int | None = None) -> Augment:
    """Mild geometry, blur, noise, colour and JPEG: for real training data or fine-tuning."""
    A = import_albumentations()
    return AlbumentationsPipeline([
        A.Affine(rotate=(-3, 3), shear={"x": (-8, 8), "y": (-2, 2)}, scale=(0.95, 1.05),
                 translate_percent={"x": (-0.02, 0.02), "y": (-0.05, 0.05)},
                 border_mode=cv2.BORDER_REPLICATE, p=0.4),
        A.OneOf([A.GaussianBlur(sigma_limit=(0.3, 0.8), p=1.0),
                 A.MotionBlur(blur_limit=3, p=1.0)], p=0.15),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.15),
        _colour(A, channels, 0.2, p=0.4),
        A.ImageCompression(quality_range=(60, 95), p=0.15),
    ], seed=seed)


@AUGMENTATIONS.register("strong")
def strong_augmentation(channels: int = 1, seed: int | None = None) -> Augment:
    """The usual STR training set (after ABINet's geometry/deterioration/colour groups and PARSeq's
    RandAugment ops): rotation, shear, scale, translation, perspective, grid distortion, Gaussian /
    motion blur / down-up-scaling, Gaussian noise, colour jitter, gamma, JPEG, occasional inversion."""
    A = import_albumentations()
    return AlbumentationsPipeline([
        A.OneOf([
            A.Affine(rotate=(-10, 10), shear={"x": (-25, 25), "y": (-5, 5)}, scale=(0.8, 1.1),
                     translate_percent={"x": (-0.05, 0.05), "y": (-0.1, 0.1)},
                     border_mode=cv2.BORDER_REPLICATE, p=1.0),
            A.Perspective(scale=(0.02, 0.08), border_mode=cv2.BORDER_REPLICATE, p=1.0),
            A.GridDistortion(num_steps=4, distort_limit=(-0.2, 0.2), border_mode=cv2.BORDER_REPLICATE,
                             p=1.0),
        ], p=0.6),
        A.OneOf([
            A.GaussianBlur(sigma_limit=(0.5, 1.5), p=1.0),
            A.MotionBlur(blur_limit=(3, 5), p=1.0),
            A.Downscale(scale_range=(0.4, 0.8), p=1.0),
        ], p=0.35),
        A.GaussNoise(std_range=(0.02, 0.1), p=0.3),
        _colour(A, channels, 0.4, p=0.5),
        A.RandomGamma(gamma_limit=(70, 140), p=0.2),
        A.ImageCompression(quality_range=(30, 90), p=0.25),
        A.InvertImg(p=0.1),
    ], seed=seed)
