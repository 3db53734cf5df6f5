"""Image loading and the fixed preprocessing of inference, shared by every backend and caller.

:func:`load_image` turns a path, PIL image or numpy array into a uint8/uint16 array (refusing oversized
images from their header, :mod:`strkit.data.image_limits`); :func:`prepare_view` resizes one crop to
the model's input (``uint8 H×w×C``) as in training, or keeping the aspect ratio up to ``max_width``;
:func:`batches` pads prepared crops into ``B×C×H×W`` float batches normalised to [-1, 1].
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from strkit.data.image_limits import DEFAULT_MAX_PIXELS, check_encoded, check_pil_image, check_size
from strkit.data.transforms import ImageTransform, collate
from strkit.inference.metadata import InputSpec
from strkit.inference.options import wide_width

ImageInput = str | Path | np.ndarray | Any  # Any: PIL.Image.Image (PIL is imported lazily)


class ImageLoadError(ValueError):
    """An input image could not be read or is empty."""


def load_image(item: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return ``item`` as a numpy array (H×W, H×W×3 RGB or H×W×4 RGBA; uint8 or uint16).

    Files and PIL images of more than ``max_pixels`` pixels (``None``: no limit of strkit's own) are
    refused from their header, before decoding (:class:`ImageTooLargeError`); arrays too.
    """
    if isinstance(item, str | Path):
        path = Path(item)
        if not path.is_file():
            raise ImageLoadError(f"{path}: no such file")
        data = np.fromfile(path, dtype=np.uint8)
        if data.size == 0:
            raise ImageLoadError(f"{path}: the file is empty (0 bytes)")
        check_encoded(data.data, max_pixels, where=str(path))
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ImageLoadError(f"{path}: not a decodable image (PNG, JPEG, BMP, TIFF, WebP ...)")
        if img.ndim == 3 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    elif isinstance(item, np.ndarray):
        if item.ndim >= 2:
            check_size(item.shape[1], item.shape[0], max_pixels, where="array")
        img = item
    elif hasattr(item, "convert") and hasattr(item, "mode"):  # PIL image
        check_pil_image(item, max_pixels, where=getattr(item, "filename", "") or "PIL image")  # before load()
        pil = item if item.mode in ("L", "RGB", "RGBA", "I;16") else item.convert("RGB")
        img = np.asarray(pil)
    else:
        raise ImageLoadError(f"unsupported image type {type(item).__name__}: pass a path, a PIL image "
                             "or a numpy array")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.size == 0 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ImageLoadError(f"image of shape {img.shape} is empty or not H×W, H×W×3 or H×W×4")
    if img.dtype not in (np.uint8, np.uint16):
        if np.issubdtype(img.dtype, np.floating) and img.size and float(np.nanmax(img)) <= 1.0:
            img = img * 255.0
        img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
    return img


def prepare_view(img: np.ndarray, spec: InputSpec, transform: ImageTransform, max_width: int | None,
                 wide: dict[int, ImageTransform]) -> np.ndarray:
    """One crop -> ``uint8 H×w×C`` model input.

    Args:
        img: the crop (H×W or H×W×C).
        spec: the model's input geometry; ``transform`` is ``spec.transform()``.
        max_width: ``None``: exactly as in training; else the keep-ratio width up to this
            (:func:`strkit.inference.options.wide_width`).
        wide: transforms by width, cached for one call.
    """
    if max_width is None:
        return transform.prepare(img)
    width = wide_width(img.shape[0], img.shape[1], spec.img_h, spec.img_w, max_width, spec.keep_ratio)
    if width == spec.img_w and not spec.keep_ratio:
        return transform.prepare(img)  # a short word: exactly as in training
    if width not in wide:
        wide[width] = InputSpec(spec.img_h, width, spec.channels, False, spec.pad_value).transform()
    return wide[width].prepare(img)


def batches(prepared: list[tuple[int, np.ndarray]], spec: InputSpec, batch_size: int, trim_padding: bool = False,
            wide: bool = False) -> Iterable[tuple[list[int], torch.Tensor]]:
    """(view indices, B×C×H×W batch) from ``(index, uint8 H×w×C image)`` pairs.

    Args:
        trim_padding: for a ``keep_ratio`` model, pad each batch only to its widest image (a multiple
            of 4, at least ``img_h``) instead of the full width.
        wide: images may be wider than the model's width (``max_width``); for a model trained without
            ``keep_ratio`` a batch then holds images of one width only (no padding the model never saw).
    """
    trim = trim_padding and spec.keep_ratio
    groups = [prepared]
    if trim or wide:
        prepared = sorted(prepared, key=lambda p: p[1].shape[1])
        groups = [prepared]
        if wide and not spec.keep_ratio:
            groups = [list(g) for _, g in itertools.groupby(prepared, key=lambda p: p[1].shape[1])]
    for group in groups:
        for chunk in _chunks(group, batch_size):
            widest = max(img.shape[1] for _, img in chunk)
            width = spec.img_w
            if trim:
                width = max(spec.img_h, (widest + 3) // 4 * 4)
                width = width if wide else min(spec.img_w, width)
            elif wide:
                width = max(spec.img_w, widest)
            batch, _ = collate([(img, "") for _, img in chunk], width=width, pad_value=spec.pad_value)
            yield [i for i, _ in chunk], batch


def _chunks(seq: list, size: int) -> Iterable[list]:
    for i in range(0, len(seq), max(1, size)):
        yield seq[i:i + size]
