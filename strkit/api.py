"""The Python API: ``Recognizer.from_pretrained().recognize(images)`` for the bundled default model,
``Recognizer.from_checkpoint(path).recognize(images)`` for your own.

The fastest available path is picked by default (``backend='auto'``): ONNX Runtime when it is installed
(a checkpoint is exported once to ``<checkpoint>.onnx``; the bundled model ships its export), else
PyTorch under inference mode. ``backend='torch'`` / ``'onnx'`` force one.

Images may be file paths, ``PIL.Image`` objects or numpy arrays (gray H×W or H×W×1, RGB H×W×3,
RGBA H×W×4; uint8 or uint16). A bad item (missing file, undecodable bytes, empty array, an image of
more than ``max_pixels`` pixels, refused from its header before decoding) yields a result whose
``error`` says what is wrong; the other items of the batch are still recognised. A crop with an extreme
aspect ratio is read, with a ``warning`` in its result.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from strkit.charset import Charset
from strkit.checkpoint import resolve_checkpoint_path
from strkit.config import Config
from strkit.data.image_limits import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    aspect_warning,
    check_encoded,
    check_pil_image,
    check_size,
)
from strkit.data.transforms import collate
from strkit.inference.backend import InferenceBackend
from strkit.inference.metadata import BUNDLE_CHECKPOINT, BUNDLE_INT8, BUNDLE_ONNX, InputSpec
from strkit.inference.torch_backend import TorchBackend
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
    warning: str | None = None  # read, but e.g. with an extreme aspect ratio

    @property
    def ok(self) -> bool:
        return self.error is None


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


BACKENDS = ("auto", "torch", "onnx")
log = logging.getLogger(__name__)


def onnx_runtime_available() -> bool:
    """Whether ONNX Runtime (to run) and onnx (to export) are importable, without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


class Recognizer:
    """Reads the text of cropped word images with a trained model.

    Two backends run the model: PyTorch (a :class:`RecognitionModel`, under inference mode, optionally
    channels-last) and ONNX Runtime (an exported ``.onnx`` file, see :meth:`from_onnx`). Both give the same
    texts; ONNX Runtime is usually faster on CPUs.

    Args:
        model: a :class:`RecognitionModel` (eval mode), or a ready backend such as
            :class:`strkit.inference.onnx_backend.OnnxBackend`.
        cfg: the run config (its ``data`` section gives the input geometry); required for a
            ``RecognitionModel``.
        device: where a PyTorch model runs.
        channels_last: run a PyTorch model channels-last (NHWC).
        trim_padding: for models trained with ``keep_ratio``: sort the images of a call by width and pad
            each batch only to its widest image (rounded up to a multiple of 4, at least ``img_h``) instead
            of the full training width. Faster on short words; the model then sees less right padding than
            in training, which can change a few readings, so it is off by default. Needs a backend that
            accepts other widths.
    """

    def __init__(self, model: RecognitionModel | InferenceBackend, cfg: Config | None = None,
                 device: str | torch.device = "cpu", *, channels_last: bool = False,
                 trim_padding: bool = False) -> None:
        self.device = torch.device(device)
        self.cfg = cfg
        if isinstance(model, RecognitionModel):
            if cfg is None:
                raise ValueError("Recognizer(model, cfg): a PyTorch model needs its run config (cfg.data gives "
                                 "the input size); use Recognizer.from_checkpoint(path)")
            self.backend: InferenceBackend = TorchBackend(model, InputSpec.from_data_config(cfg.data), self.device,
                                                          channels_last=channels_last)
        else:
            self.backend = model
        if trim_padding and not self.backend.dynamic_width:
            raise ValueError(f"trim_padding needs a model that accepts any input width; this "
                             f"{self.backend.name} model was exported for width {self.backend.input_spec.img_w} "
                             f"only (re-export without --fixed-width)")
        self.trim_padding = bool(trim_padding)
        self.transform = self.backend.input_spec.transform()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                        backend: str = "auto", channels_last: bool = False,
                        trim_padding: bool = False, overrides: Sequence[str] = ()) -> Recognizer:
        """Load a checkpoint written by ``tools/train.py`` (``best.pt`` or ``last.pt``) or an exported ``.onnx``.

        Args:
            backend: ``onnx``: for a checkpoint, export it once to ``<checkpoint>.onnx`` beside it
                (re-exported when the checkpoint's content changes, by its SHA-256; the private per-user cache
                folder of :func:`strkit.export.onnx_cache_dir` if that one is read-only) and
                run that with ONNX Runtime; ``torch``: PyTorch; ``auto`` (the fastest available): ONNX
                Runtime for ``.onnx`` files, and for checkpoints on the CPU when onnxruntime and onnx are
                installed and ``channels_last`` is not asked for (falling back to PyTorch, with a log
                message, when the model does not export), else PyTorch.
            threads: PyTorch threads (this sets ``torch.set_num_threads`` for the process) or ONNX
                Runtime intra-op threads (per session); ``None`` = the library's default.
            channels_last, trim_padding: see the class docstring.
            overrides: ``model.*`` settings that keep the weights, applied before the model is built, e.g.
                ``["model.decoder.iterations=1"]`` to read an ``iterative_vl`` model with one refinement
                round (faster); PyTorch only (``auto`` then means PyTorch).
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")
        path = Path(path)
        if overrides and (backend == "onnx" or path.suffix.lower() == ".onnx"):
            raise ValueError(f"overrides {list(overrides)} change a checkpoint's model before it is built, which "
                             f"runs with backend='torch' (or 'auto'), not with an ONNX model")
        if overrides:
            backend = "torch"
        if path.suffix.lower() == ".onnx":
            if backend == "torch":
                raise ValueError(f"{path} is an ONNX model: it runs with backend='onnx' (or 'auto'); for "
                                 f"backend='torch' pass the checkpoint it was exported from")
            return cls.from_onnx(path, threads=threads, device=device, trim_padding=trim_padding)
        path = resolve_checkpoint_path(path)  # a run folder stands for its best.pt
        if backend == "onnx":
            from strkit.export import cached_onnx_export

            return cls.from_onnx(cached_onnx_export(path), threads=threads, device=device,
                                 trim_padding=trim_padding)
        if backend == "auto" and torch.device(device).type == "cpu" and not channels_last \
                and onnx_runtime_available():
            from strkit.export import ExportError, cached_onnx_export

            try:
                onnx_path = cached_onnx_export(path)
            except ExportError as exc:
                log.info("running %s with PyTorch: it does not export to ONNX (%s)", path, exc)
            else:
                return cls.from_onnx(onnx_path, threads=threads, device=device, trim_padding=trim_padding)
        if threads:
            torch.set_num_threads(threads)
        model, cfg = load_model(path, device, overrides)
        return cls(model, cfg, device, channels_last=channels_last, trim_padding=trim_padding)

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int | None = None, device: str | torch.device = "cpu",
                  trim_padding: bool = False) -> Recognizer:
        """Run a model exported by ``tools/export.py`` (``model.onnx`` or ``model.int8.onnx``) with ONNX
        Runtime; ``threads`` intra-op threads (``None`` = ONNX Runtime's default; 1 is often fastest at
        batch 1 on a small CPU). ``device`` ``cuda`` uses ONNX Runtime's CUDA provider when installed."""
        from strkit.inference.onnx_backend import OnnxBackend, import_onnxruntime

        dev = torch.device(device)
        providers = None
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in import_onnxruntime().get_available_providers():
                raise ValueError("device 'cuda' with an ONNX model needs onnxruntime-gpu (its CUDA provider is "
                                 "not installed); run on the CPU or use backend='torch'")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif dev.type != "cpu":
            raise ValueError(f"ONNX models run on 'cpu' or 'cuda', not '{device}'")
        return cls(OnnxBackend(path, threads=threads, providers=providers), device=dev,
                   trim_padding=trim_padding)

    @classmethod
    def from_pretrained(cls, device: str | torch.device = "cpu", threads: int | None = None,
                        backend: str = "auto", int8: bool = False,
                        bundle: str | Path | None = None) -> Recognizer:
        """The default model bundled with the package (``strkit/assets``; docs/model_card.md): no
        training, no download.

        Args:
            backend: ``auto``: ONNX Runtime when installed (on the CPU), else PyTorch; ``onnx``; ``torch``.
            int8: with ONNX Runtime, run the int8-quantised export (bundled only when its accuracy is within
                0.5 point of the float model on every benchmark). Off by default: on this project's CPU it is
                hardly faster at batch 1 than the fp32 export, which reads exactly what PyTorch reads
                (docs/model_card.md).
            bundle: a folder written by ``tools/export.py CKPT --bundle DIR`` to load instead of the
                package's own (``default.pt``, ``default.onnx``, optionally ``default.int8.onnx``).
            threads, device: as :meth:`from_checkpoint`.
        """
        from importlib import resources

        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")
        assets = Path(bundle) if bundle is not None else resources.files("strkit") / "assets"
        checkpoint = assets / BUNDLE_CHECKPOINT
        if not checkpoint.is_file():
            where = f"{bundle} holds no {BUNDLE_CHECKPOINT}" if bundle is not None else \
                "this strkit build ships no bundled default model"
            raise FileNotFoundError(f"{where}; write a bundle with tools/export.py CKPT --bundle DIR, or use "
                                    f"Recognizer.from_checkpoint(PATH)")
        use_onnx = backend == "onnx" or (backend == "auto" and torch.device(device).type == "cpu"
                                         and onnx_runtime_available())
        if int8 and not use_onnx:
            raise ValueError("int8=True runs the int8 ONNX export: it needs backend 'onnx' or 'auto' with "
                             "onnxruntime installed (pip install onnxruntime onnx)")
        if use_onnx:
            ref = assets / (BUNDLE_INT8 if int8 else BUNDLE_ONNX)
            if ref.is_file():
                with resources.as_file(ref) as path:
                    return cls.from_onnx(path, threads=threads, device=device)
            if int8:
                raise FileNotFoundError(f"this bundle has no int8 default model ({BUNDLE_INT8}): its accuracy "
                                        f"was not within 0.5 point of the float model; use int8=False")
        with resources.as_file(checkpoint) as path:
            return cls.from_checkpoint(path, device=device, threads=threads,
                                       backend="torch" if backend == "auto" else backend)

    @property
    def model(self) -> RecognitionModel | None:
        """The PyTorch model (``None`` with the ONNX Runtime backend)."""
        return getattr(self.backend, "model", None)

    @property
    def charset(self) -> Charset:
        return self.backend.charset

    def _batches(self, prepared: list[tuple[int, np.ndarray]], batch_size: int
                 ) -> Iterable[tuple[list[int], torch.Tensor]]:
        """(input indices, B×C×H×W batch) from ``(index, uint8 H×w×C image)`` pairs."""
        spec = self.backend.input_spec
        trim = self.trim_padding and spec.keep_ratio
        if trim:
            prepared = sorted(prepared, key=lambda p: p[1].shape[1])
        for chunk in _chunks(prepared, batch_size):
            width = spec.img_w
            if trim:
                widest = max(img.shape[1] for _, img in chunk)
                width = min(spec.img_w, max(spec.img_h, (widest + 3) // 4 * 4))
            batch, _ = collate([(img, "") for _, img in chunk], width=width, pad_value=spec.pad_value)
            yield [i for i, _ in chunk], batch

    def recognize(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 32,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[RecognitionResult]:
        """Recognise one image or a sequence of images; returns one result per input, in order.

        Args:
            max_pixels: an image of more pixels (width × height, read from the file header before
                decoding) gets an ``error`` result instead of being decoded; ``None``: no limit of strkit's
                own (PIL's decompression-bomb limit still applies). See :mod:`strkit.data.image_limits`.
        """
        if isinstance(images, str | Path | np.ndarray) or hasattr(images, "mode"):
            images = [images]
        items = list(images)
        results: list[RecognitionResult | None] = [None] * len(items)
        warnings: dict[int, str] = {}
        prepared: list[tuple[int, np.ndarray]] = []
        for i, item in enumerate(items):
            src = str(item) if isinstance(item, str | Path) else type(item).__name__
            try:
                img = load_image(item, max_pixels)
                note = aspect_warning(img.shape[0], img.shape[1])
                if note is not None:
                    warnings[i] = note
                prepared.append((i, self.transform.prepare(img)))
            except (ImageLoadError, ImageTooLargeError, ValueError, cv2.error) as exc:
                results[i] = RecognitionResult("", 0.0, [], error=str(exc), source=src)
        for indices, batch in self._batches(prepared, batch_size):
            preds = self.backend.predict(batch)
            for i, p in zip(indices, preds, strict=True):
                src = str(items[i]) if isinstance(items[i], str | Path) else type(items[i]).__name__
                results[i] = RecognitionResult(p.text, float(p.confidence), list(p.char_probs), source=src,
                                               warning=warnings.get(i))
        return [r for r in results if r is not None]


def _chunks(seq: list, size: int) -> Iterable[list]:
    for i in range(0, len(seq), max(1, size)):
        yield seq[i:i + size]
