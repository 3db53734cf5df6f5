"""Size limits on images, checked from the file header before anything is decoded.

A small compressed file can decode to an enormous image (a "decompression bomb": a PNG of under 1 MB
that decodes to 30000×30000 pixels takes gigabytes and many seconds). Every place strkit decodes an
image (the Python API and ``tools/recognize.py``, folder and LMDB datasets, ``tools/create_lmdb.py``,
benchmark loading) first reads the width and height from the header (PNG and JPEG directly, other
formats with PIL's lazy ``Image.open``, which decodes no pixels) and refuses images of more than
``max_pixels`` pixels with :class:`ImageTooLargeError`. PIL's own decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``) refuses the same way.

Word crops also get a warning (not an error) when their aspect ratio is extreme (:func:`aspect_warning`):
a 20000×20 strip is read, but squeezed into the model's input it is unlikely to be read well.
"""

from __future__ import annotations

import io
from typing import Any

from strkit.config import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS  # the default limit (data.max_pixels)

#: Width/height (or height/width) beyond which a crop gets a warning.
MAX_ASPECT_RATIO = 25.0


class ImageTooLargeError(ValueError):
    """An image has more pixels than allowed; it was refused from its header, without decoding it."""


def _pil_limit() -> int | None:
    """PIL's decompression-bomb warning threshold (``None`` when switched off)."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def check_size(width: int, height: int, max_pixels: int | None = DEFAULT_MAX_PIXELS, where: str = "") -> None:
    """Raise :class:`ImageTooLargeError` when ``width × height`` exceeds ``max_pixels`` (``None``: no limit
    of strkit's own) or PIL's decompression-bomb limit; ``where`` (a path) starts the message."""
    pixels = int(width) * int(height)
    limits = ((max_pixels, "the limit",
               "raise it with max_pixels / --max-pixels / data.max_pixels if the image is genuine"),
              (_pil_limit(), "PIL's decompression-bomb limit", "PIL.Image.MAX_IMAGE_PIXELS"))
    for limit, what, hint in limits:
        if limit is not None and limit > 0 and pixels > limit:
            prefix = f"{where}: " if where else ""
            raise ImageTooLargeError(f"{prefix}image of {width}×{height} = {pixels:,} pixels exceeds {what} of "
                                     f"{limit:,} pixels (a decompression bomb?); refused without decoding it "
                                     f"({hint})")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (0xC0..0xCF without DHT 0xC4, JPG 0xC8 and DAC 0xCC): they hold the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _png_size(head: bytes) -> tuple[int, int] | None:
    """PNG: the IHDR chunk is first, at a fixed offset."""
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """JPEG: walk the marker segments up to the first start-of-frame."""
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in _JPEG_SOF:
            height = int.from_bytes(bytes(data[i + 5:i + 7]), "big")
            width = int.from_bytes(bytes(data[i + 7:i + 9]), "big")
            return (width, height) if width and height else None  # height 0: given later (DNL), ask PIL
        i += 2 + int.from_bytes(bytes(data[i + 2:i + 4]), "big")
    return None


def header_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` of encoded image bytes from the header alone (PNG and JPEG parsed directly,
    other formats by PIL, which opens lazily and decodes nothing), or ``None`` when the format is unknown.

    Raises:
        ImageTooLargeError: PIL itself refused the header as a decompression bomb.
    """
    from PIL import Image, UnidentifiedImageError

    size = _png_size(bytes(data[:24])) or _jpeg_size(data)
    if size is not None:
        return size
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"PIL refused the header as a decompression bomb ({exc}); refused without "
                                 f"decoding it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError):
        return None  # not a format PIL knows (or a damaged header): the decoder decides


def check_encoded(data: bytes | memoryview, max_pixels: int | None = DEFAULT_MAX_PIXELS, where: str = "") -> None:
    """Refuse encoded image bytes whose header announces more than ``max_pixels`` pixels.

    Raises:
        ImageTooLargeError: too many pixels (by ``max_pixels`` or by PIL's own limit).
    """
    try:
        size = header_size(data)
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{where}: {exc}" if where else str(exc)) from None
    if size is not None:
        check_size(size[0], size[1], max_pixels, where)


def check_pil_image(image: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS, where: str = "") -> None:
    """Refuse a (lazily opened) ``PIL.Image`` by its ``size`` before it is loaded or converted."""
    width, height = image.size
    check_size(width, height, max_pixels, where)


def aspect_warning(height: int, width: int, limit: float = MAX_ASPECT_RATIO) -> str | None:
    """A warning when a crop's width/height or height/width ratio exceeds ``limit``, else ``None``."""
    if height <= 0 or width <= 0:
        return None
    ratio = max(width / height, height / width)
    if ratio <= limit:
        return None
    shape = "wide" if width > height else "tall"
    return (f"extreme aspect ratio: {width}×{height} pixels is {ratio:.0f} times as {shape} as "
            f"{'high' if shape == 'wide' else 'wide'} (more than {limit:g}); the reading is unlikely to be "
            f"reliable, crop the word more tightly")
