"""The Python API: ``Recognizer.from_checkpoint(path).recognize(images)``.

Images may be file paths, ``PIL.Image`` objects or numpy arrays (gray H×W or H×W×1, RGB H×W×3,
RGBA H×W×4; uint8 or uint16). A bad item (missing file, undecodable bytes, empty array) yields a
result whose ``error`` says what is wrong; the other items of the batch are still recognised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from strkit.config import Config
from strkit.data.transforms import ImageTransform
from strkit.models.pretrained import load_model
from strkit.models.recognizer import RecognitionModel

ImageInput = str | Path | np.ndarray | Any  # Any: PIL.Image.Image (PIL is imported lazily)


@dataclass
class RecognitionResult:
    """What was read from one image."""

    text: str
    confidence: float
    char_probs: list[float] = field(default_factory=list)
    error: str | None = None
    source: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


class ImageLoadError(ValueError):
    """An input image could not be read or is empty."""


def load_image(item: ImageInput) -> np.ndarray:
    """Return ``item`` as a numpy array (H×W, H×W×3 RGB or H×W×4 RGBA; uint8 or uint16)."""
    if isinstance(item, str | Path):
        path = Path(item)
        if not path.is_file():
            raise ImageLoadError(f"{path}: no such file")
        data = np.fromfile(path, dtype=np.uint8)
        if data.size == 0:
            raise ImageLoadError(f"{path}: the file is empty (0 bytes)")
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ImageLoadError(f"{path}: not a decodable image (PNG, JPEG, BMP, TIFF, WebP ...)")
        if img.ndim == 3 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    elif isinstance(item, np.ndarray):
        img = item
    elif hasattr(item, "convert") and hasattr(item, "mode"):  # PIL image
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


class Recognizer:
    """Reads the text of cropped word images with a trained model.

    Args:
        model: a :class:`RecognitionModel` (eval mode).
        cfg: the run config (its ``data`` section gives the input geometry).
        device: where to run.
    """

    def __init__(self, model: RecognitionModel, cfg: Config, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        d = cfg.data
        self.transform = ImageTransform(d.img_h, d.img_w, channels=d.channels, keep_ratio=d.keep_ratio,
                                        augment="none")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        threads: int | None = None) -> Recognizer:
        """Load a checkpoint written by ``tools/train.py`` (``best.pt`` or ``last.pt``)."""
        if threads:
            torch.set_num_threads(threads)
        model, cfg = load_model(path, device)
        return cls(model, cfg, device)

    @classmethod
    def from_pretrained(cls, device: str | torch.device = "cpu", threads: int | None = None) -> Recognizer:
        """The default model bundled with the package."""
        from importlib import resources

        ref = resources.files("strkit") / "assets" / "default.pt"
        if not ref.is_file():
            raise FileNotFoundError("this strkit build ships no bundled default model yet; train one with "
                                    "tools/train.py and use Recognizer.from_checkpoint(PATH)")
        with resources.as_file(ref) as path:
            return cls.from_checkpoint(path, device=device, threads=threads)

    @property
    def charset(self):
        return self.model.charset

    def recognize(self, images: ImageInput | Sequence[ImageInput],
                  batch_size: int = 32) -> list[RecognitionResult]:
        """Recognise one image or a sequence of images; returns one result per input, in order."""
        if isinstance(images, str | Path | np.ndarray) or hasattr(images, "mode"):
            images = [images]
        items = list(images)
        results: list[RecognitionResult | None] = [None] * len(items)
        tensors: list[tuple[int, torch.Tensor]] = []
        for i, item in enumerate(items):
            src = str(item) if isinstance(item, str | Path) else type(item).__name__
            try:
                tensors.append((i, self.transform(load_image(item))))
            except (ImageLoadError, ValueError, cv2.error) as exc:
                results[i] = RecognitionResult("", 0.0, [], error=str(exc), source=src)
        for chunk in _chunks(tensors, batch_size):
            batch = torch.stack([t for _, t in chunk]).to(self.device)
            with torch.inference_mode():
                preds = self.model.predict(batch)
            for (i, _), p in zip(chunk, preds, strict=True):
                src = str(items[i]) if isinstance(items[i], str | Path) else type(items[i]).__name__
                results[i] = RecognitionResult(p.text, float(p.confidence), list(p.char_probs), source=src)
        return [r for r in results if r is not None]


def _chunks(seq: list, size: int) -> Iterable[list]:
    for i in range(0, len(seq), max(1, size)):
        yield seq[i:i + size]
