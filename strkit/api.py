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

Reading options (:class:`strkit.inference.options.InferenceOptions`; given to the constructor, to
``from_pretrained`` / ``from_checkpoint`` / ``from_onnx``, or per call to :meth:`Recognizer.recognize`):
``confidence`` (``product`` (default), ``mean``, ``min``, ``geomean`` of the character probabilities),
``rotate`` (tall crops also read at ±90°, on by default) and ``rotate_ratio``, ``max_width`` (keep the
aspect ratio of long words up to this width instead of squashing them) and ``lexicon`` (CTC models: read
the most probable word of a list; ``lexicon_any_case``, on by default, also matches its other cases).
A checkpoint or export calibrated with ``tools/eval.py --fit-temperature`` decodes ``logits / T``
(calibrated confidences, same readings).
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
from strkit.data.image_limits import DEFAULT_MAX_PIXELS, ImageTooLargeError, aspect_warning
from strkit.inference.backend import InferenceBackend
from strkit.inference.decoding import DecodeFn, build_lexicon_decode_fn, scale_logits
from strkit.inference.images import ImageInput, ImageLoadError, batches, load_image, prepare_view
from strkit.inference.metadata import InputSpec
from strkit.inference.options import InferenceOptions, is_tall, prediction_confidence, rotations
from strkit.inference.torch_backend import TorchBackend
from strkit.models.pretrained import load_model
from strkit.models.recognizer import RecognitionModel
from strkit.models.zoo import DEFAULT_MODEL, get_zoo_model, zoo_models

__all__ = ["BACKENDS", "ImageInput", "ImageLoadError", "RecognitionResult", "Recognizer", "load_image",
           "onnx_runtime_available"]


@dataclass
class RecognitionResult:
    """What was read from one image."""

    text: str
    confidence: float
    char_probs: list[float] = field(default_factory=list)
    error: str | None = None
    source: str = ""
    warning: str | None = None  # read, but e.g. with an extreme aspect ratio
    rotation: int = 0  # degrees the crop was turned (counter-clockwise) for the kept reading: 0, 90 or -90

    @property
    def ok(self) -> bool:
        return self.error is None


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
        confidence, rotate, rotate_ratio, max_width, lexicon, lexicon_any_case: reading options, see
            :class:`strkit.inference.options.InferenceOptions` (each can also be given per
            :meth:`recognize` call).
    """

    def __init__(self, model: RecognitionModel | InferenceBackend, cfg: Config | None = None,
                 device: str | torch.device = "cpu", *, channels_last: bool = False,
                 trim_padding: bool = False, **options: Any) -> None:
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
        self.options = self._check_options(InferenceOptions.build(None, **options))
        self._lexicon_decoder: tuple[tuple[tuple[str, ...], bool], DecodeFn] | None = None

    def _check_options(self, options: InferenceOptions) -> InferenceOptions:
        """``options`` if this backend can honour them (``max_width`` needs any input width)."""
        spec = self.backend.input_spec
        if options.max_width is not None:
            if not self.backend.dynamic_width:
                raise ValueError(f"max_width needs a model that accepts any input width; this {self.backend.name} "
                                 f"model was exported for width {spec.img_w} only (re-export without --fixed-width)")
            if options.max_width < spec.img_w:
                raise ValueError(f"max_width {options.max_width} is narrower than the model's input width "
                                 f"{spec.img_w}: give at least {spec.img_w}")
        return options

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                        backend: str = "auto", channels_last: bool = False,
                        trim_padding: bool = False, overrides: Sequence[str] = (), **options: Any) -> Recognizer:
        """Load a checkpoint written by ``tools/train.py`` (``best.pt`` or ``last.pt``) or an exported ``.onnx``.

        Args:
            backend: ``onnx``: for a checkpoint, export it once to ``<checkpoint>.onnx`` beside it
                (re-exported when the checkpoint's content changes, by its SHA-256; the private per-user cache
                folder of :func:`strkit.inference.onnx_cache.onnx_cache_dir` if that one is read-only) and
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
            options: reading options (``confidence``, ``rotate``, ``rotate_ratio``, ``max_width``, ``lexicon``),
                see the class docstring.
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
            return cls.from_onnx(path, threads=threads, device=device, trim_padding=trim_padding, **options)
        path = resolve_checkpoint_path(path)  # a run folder stands for its best.pt
        if backend == "onnx":
            return cls.from_onnx(_onnx_export_of(path, fallback=False), threads=threads, device=device,
                                 trim_padding=trim_padding, **options)
        if backend == "auto" and torch.device(device).type == "cpu" and not channels_last \
                and onnx_runtime_available():
            onnx_path = _onnx_export_of(path, fallback=True)
            if onnx_path is not None:
                return cls.from_onnx(onnx_path, threads=threads, device=device, trim_padding=trim_padding,
                                     **options)
        if threads:
            torch.set_num_threads(threads)
        model, cfg = load_model(path, device, overrides)
        return cls(model, cfg, device, channels_last=channels_last, trim_padding=trim_padding, **options)

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int | None = None, device: str | torch.device = "cpu",
                  trim_padding: bool = False, **options: Any) -> Recognizer:
        """Run a model exported by ``tools/export.py`` (``model.onnx`` or ``model.int8.onnx``) with ONNX
        Runtime; ``threads`` intra-op threads (``None`` = ONNX Runtime's default; 1 is often fastest at
        batch 1 on a small CPU). ``device`` ``cuda`` uses ONNX Runtime's CUDA provider when installed.
        ``options``: reading options, see the class docstring."""
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
                   trim_padding=trim_padding, **options)

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_MODEL, device: str | torch.device = "cpu",
                        threads: int | None = None, backend: str = "auto", int8: bool = False,
                        bundle: str | Path | None = None, **options: Any) -> Recognizer:
        """A model bundled with the package (``strkit/assets``; docs/model_card.md): no training, no
        download. ``strkit models`` lists the names (:mod:`strkit.models.zoo`).

        Args:
            name: the zoo name (``default``); an unknown name raises
                :class:`strkit.models.zoo.UnknownModelError`, which lists the known ones. An existing checkpoint,
                run folder or ``.onnx`` file is loaded as :meth:`from_checkpoint` / :meth:`from_onnx` would.
            backend: ``auto``: ONNX Runtime when installed (on the CPU), else PyTorch; ``onnx``; ``torch``.
            int8: with ONNX Runtime, run the int8-quantised export (bundled only when its accuracy is within
                0.5 point of the float model on every benchmark). Off by default: on this project's CPU it is
                hardly faster at batch 1 than the fp32 export, which reads exactly what PyTorch reads
                (docs/model_card.md).
            bundle: a folder written by ``tools/export.py CKPT --bundle DIR`` to load instead of the
                package's own (``default.pt``, ``default.onnx``, optionally ``default.int8.onnx``).
            threads, device: as :meth:`from_checkpoint`.
            options: reading options (``confidence``, ``rotate``, ``rotate_ratio``, ``max_width``, ``lexicon``),
                see the class docstring.
        """
        from importlib import resources

        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")
        if bundle is None and name not in zoo_models() and Path(name).exists():  # a checkpoint or export path
            path = Path(name)
            if path.suffix.lower() == ".onnx":
                return cls.from_onnx(path, threads=threads, device=device, **options)
            return cls.from_checkpoint(path, device=device, threads=threads, backend=backend, **options)
        if bundle is not None and name not in zoo_models(bundle):
            raise FileNotFoundError(f"{bundle} holds no {name}.pt; write a bundle with tools/export.py CKPT "
                                    f"--bundle DIR, or use "
                                    f"Recognizer.from_checkpoint(PATH)")
        entry = get_zoo_model(name, bundle)
        use_onnx = backend == "onnx" or (backend == "auto" and torch.device(device).type == "cpu"
                                         and onnx_runtime_available())
        if int8 and not use_onnx:
            raise ValueError("int8=True runs the int8 ONNX export: it needs backend 'onnx' or 'auto' with "
                             "onnxruntime installed (pip install onnxruntime onnx)")
        if use_onnx:
            ref = entry.int8 if int8 else entry.onnx
            if ref is not None:
                with resources.as_file(ref) as path:
                    return cls.from_onnx(path, threads=threads, device=device, **options)
            if int8:
                raise FileNotFoundError(f"this bundle has no int8 {name} model ({name}.int8.onnx): its accuracy "
                                        f"was not within 0.5 point of the float model; use int8=False")
        with resources.as_file(entry.checkpoint) as path:
            return cls.from_checkpoint(path, device=device, threads=threads,
                                       backend="torch" if backend == "auto" else backend, **options)

    @property
    def model(self) -> RecognitionModel | None:
        """The PyTorch model (``None`` with the ONNX Runtime backend)."""
        return getattr(self.backend, "model", None)

    @property
    def charset(self) -> Charset:
        return self.backend.charset

    def _prepare(self, img: np.ndarray, options: InferenceOptions, wide: dict[int, Any]) -> np.ndarray:
        """One crop -> ``uint8 H×w×C`` model input (see :func:`strkit.inference.images.prepare_view`)."""
        return prepare_view(img, self.backend.input_spec, self.transform, options.max_width, wide)

    def _batches(self, prepared: list[tuple[int, np.ndarray]], batch_size: int, wide: bool = False
                 ) -> Iterable[tuple[list[int], torch.Tensor]]:
        """(view indices, B×C×H×W batch) batches (see :func:`strkit.inference.images.batches`)."""
        return batches(prepared, self.backend.input_spec, batch_size, trim_padding=self.trim_padding, wide=wide)

    def _decode_fn(self, lexicon: tuple[str, ...] | None, any_case: bool = True) -> DecodeFn | None:
        """The lexicon-constrained decoding of ``lexicon`` (cached for the last lexicon), or ``None``."""
        if lexicon is None:
            return None
        if self._lexicon_decoder is None or self._lexicon_decoder[0] != (lexicon, any_case):
            meta = getattr(self.backend, "metadata", None)
            if meta is None:
                raise ValueError(f"a lexicon needs a backend that describes its decoder; {self.backend.name} does not")
            self._lexicon_decoder = ((lexicon, any_case), build_lexicon_decode_fn(meta, lexicon, any_case))
        return self._lexicon_decoder[1]

    def recognize(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 32,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS, **options: Any) -> list[RecognitionResult]:
        """Recognise one image or a sequence of images; returns one result per input, in order.

        Args:
            max_pixels: an image of more pixels (width × height, read from the file header before
                decoding) gets an ``error`` result instead of being decoded; ``None``: no limit of strkit's
                own (PIL's decompression-bomb limit still applies). See :mod:`strkit.data.image_limits`.
            options: reading options for this call (``confidence``, ``rotate``, ``rotate_ratio``, ``max_width``,
                ``lexicon``, ``lexicon_any_case``; ``None`` keeps the recogniser's own), see the class docstring.
        """
        opts = self._check_options(InferenceOptions.build(self.options, **options)) if options else self.options
        decode = self._decode_fn(opts.lexicon, opts.lexicon_any_case)
        if isinstance(images, str | Path | np.ndarray) or hasattr(images, "mode"):
            images = [images]
        items = list(images)
        results: list[RecognitionResult | None] = [None] * len(items)
        warnings: dict[int, str] = {}
        views: list[tuple[int, int]] = []  # (item index, rotation in degrees) of every prepared view
        prepared: list[tuple[int, np.ndarray]] = []  # (view index, prepared image)
        wide: dict[int, Any] = {}
        for i, item in enumerate(items):
            src = str(item) if isinstance(item, str | Path) else type(item).__name__
            try:
                img = load_image(item, max_pixels)
                note = aspect_warning(img.shape[0], img.shape[1])
                if note is not None:
                    warnings[i] = note
                candidates = [(0, img)]
                if opts.rotate and is_tall(img.shape[0], img.shape[1], opts.rotate_ratio):
                    candidates += list(zip((90, -90), rotations(img), strict=True))
                ready = [(angle, self._prepare(view, opts, wide)) for angle, view in candidates]
            except (ImageLoadError, ImageTooLargeError, ValueError, cv2.error) as exc:
                results[i] = RecognitionResult("", 0.0, [], error=str(exc), source=src)
                continue
            for angle, x in ready:
                prepared.append((len(views), x))
                views.append((i, angle))
        best: dict[int, tuple[float, int, Any]] = {}  # item -> (confidence, rotation, prediction)
        for indices, batch in self._batches(prepared, batch_size, wide=opts.max_width is not None):
            if decode is None:
                preds = self.backend.predict(batch)
            else:
                preds = decode(scale_logits(self.backend.logits(batch), getattr(self.backend, "temperature", 1.0)))
            for v, p in zip(indices, preds, strict=True):
                i, angle = views[v]
                conf = prediction_confidence(p, opts.confidence)
                if i not in best or conf > best[i][0] or (conf == best[i][0] and angle == 0):
                    best[i] = (conf, angle, p)
        for i, (conf, angle, p) in best.items():
            src = str(items[i]) if isinstance(items[i], str | Path) else type(items[i]).__name__
            results[i] = RecognitionResult(p.text, conf, list(p.char_probs), source=src, warning=warnings.get(i),
                                           rotation=angle)
        return [r for r in results if r is not None]


def _onnx_export_of(checkpoint: Path, fallback: bool) -> Path | None:
    """The ONNX export of ``checkpoint``: the reusable one of :mod:`strkit.inference.onnx_cache` when it
    exists (no exporter is loaded), else one made now by :func:`strkit.export.cached_onnx_export`.
    ``fallback``: a model that does not export gives ``None`` (logged) instead of the ``ExportError``."""
    from strkit.inference.onnx_cache import file_sha256, find_export

    found = find_export(checkpoint, file_sha256(checkpoint)) if checkpoint.is_file() else None
    if found is not None:
        return found
    from strkit.export import ExportError, cached_onnx_export

    try:
        return cached_onnx_export(checkpoint)
    except ExportError as exc:
        if not fallback:
            raise
        log.info("running %s with PyTorch: it does not export to ONNX (%s)", checkpoint, exc)
        return None
