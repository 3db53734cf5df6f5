"""The LMDB format every STR codebase shares, and its errors.

Format (the one of the four-stage benchmark, PARSeq, ABINet, CRNN ...): keys ``num-samples`` (ASCII
integer), ``image-%09d`` (encoded image bytes: PNG, JPEG ...) and ``label-%09d`` (UTF-8 text), with
indices starting at 1. Extra per-record keys ``<key>-%09d`` may sit beside them. Existing MJ/ST and
evaluation LMDBs of those projects load as they are.

Word geometry: LMDBs written by ``tools/synth.py --geometry`` also hold ``geom-%09d`` (JSON
``{"top": [[x, y]...], "bottom": [[x, y]...], "width": W, "height": H}``: the word's upper and lower
boundary polylines in continuous pixel coordinates of the stored image, which spans ``[0, W] × [0, H]``),
read and checked by :func:`decode_geometry`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from PIL import Image

from strkit.data.image_limits import DEFAULT_MAX_PIXELS, check_encoded

LabelFilter = Callable[[str], "str | None"]
"""Maps a raw label to its cleaned form, or to ``None`` to drop the record."""


NUM_SAMPLES_KEY = b"num-samples"


#: Extra key of the word geometry written by the synthetic generator (:mod:`strkit.data.synth.generate`).
GEOMETRY_KEY = "geom"


PARTIAL_SUFFIX = ".partial"


#: DB-level key where :class:`LmdbWriter` records the tool that writes the LMDB (named when it is unfinished).
WRITER_TOOL_KEY = "strkit-writer-tool"


class LmdbError(RuntimeError):
    """An LMDB could not be read or written. The message names the path and what to do."""


class LmdbNotFoundError(LmdbError, FileNotFoundError):
    """A path that should hold an LMDB (``data.mdb``) does not."""


class PartialLmdbError(LmdbError):
    """A path names the unfinished ``<out>.partial`` output of an interrupted :class:`LmdbWriter`."""


class CorruptRecordError(LmdbError):
    """A record is missing, or its image or label cannot be decoded (raised in strict mode)."""


def record_key(kind: str, index: int) -> bytes:
    """Key of record ``index`` (1-based) for ``kind`` (``image``, ``label`` or an extra key)."""
    return f"{kind}-{index:09d}".encode()


def decode_image(data: bytes, channels: int = 3, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """Decode encoded image bytes (PNG, JPEG, BMP, GIF, ...).

    Args:
        data: the encoded file content.
        channels: 1 for gray, 3 for RGB.
        max_pixels: refuse images whose header announces more pixels (``None``: no limit of strkit's
            own; see :mod:`strkit.data.image_limits`), before decoding them.

    Returns:
        uint8 array H×W (``channels=1``) or H×W×3 in RGB order (``channels=3``); ``None`` when the bytes
        are empty or not a decodable image. OpenCV decodes; PIL is the fallback for what it cannot read.

    Raises:
        ImageTooLargeError: the image has more than ``max_pixels`` pixels (nothing was decoded).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if not data:
        return None
    check_encoded(data, max_pixels)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if img is not None and channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img is None:
        try:
            with Image.open(io.BytesIO(data)) as pil:
                img = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
        except Exception:  # PIL raises many types for bad data; all mean "not an image"
            return None
    if img.size == 0:
        return None
    return img


def decode_geometry(data: bytes | str) -> dict[str, Any] | None:
    """Parse and check one word-geometry record (the ``geom-%09d`` JSON of the synthetic generator).

    Returns:
        ``{"top": n×2 float64 array, "bottom": n×2 float64 array, "width": float, "height": float}``
        (points ``[x, y]`` in continuous pixel coordinates of a ``width × height`` image, point i of
        ``top`` paired with point i of ``bottom``, n >= 2), or ``None`` when the record is not valid
        JSON of that form.
    """
    try:
        record = json.loads(data)
        top = np.asarray(record["top"], dtype=np.float64)
        bottom = np.asarray(record["bottom"], dtype=np.float64)
        width, height = float(record["width"]), float(record["height"])
    except (TypeError, ValueError, KeyError):
        return None
    if (top.ndim != 2 or top.shape[1:] != (2,) or top.shape[0] < 2 or bottom.shape != top.shape
            or not (np.isfinite(top).all() and np.isfinite(bottom).all())
            or not (np.isfinite(width) and np.isfinite(height) and width > 0 and height > 0)):
        return None
    return {"top": top, "bottom": bottom, "width": width, "height": height}
