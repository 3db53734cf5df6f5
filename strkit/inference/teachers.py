"""Teachers for distillation and data curation: recognisers that return per-frame class probabilities.

A teacher turns word crops into :class:`TeacherOutput` (CTC probabilities over *its own* classes, the
frames that cover each crop, the greedy text and its character confidences). Teachers are built by name
from :data:`TEACHERS`:

- ``rapidocr``: the PP-OCR recogniser that ships inside RapidOCR's pip wheel (optional extra ``teacher``;
  3.x ships PP-OCRv6-small). Nothing is downloaded: the ONNX file and its character list are read from
  the installed package. Input: BGR, height 48, aspect ratio kept, ``(x / 255 - 0.5) / 0.5``; output:
  softmax probabilities ``(B, ceil(W / 8), 18710)``, class 0 = blank, the last class = space.
- ``strkit``: a strkit CTC checkpoint (``.pt``) or ONNX export (``.onnx``) read with its own preprocessing.

:class:`ClassMap` folds a teacher's classes into a student's charset (NFKC, then NFKD without combining
marks, then the student's case folding; unmapped classes go to blank), so that teacher texts and
distributions can be compared with, or used to train, a student with another charset.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from strkit.charset import Charset
from strkit.codecs import CTCCodec
from strkit.registry import Registry


class TeacherError(ValueError):
    """A teacher cannot be built (missing optional package, unreadable model, unsupported decoder)."""


@dataclass
class TeacherOutput:
    """What a teacher read from a batch of crops.

    Attributes:
        probs: per crop a ``(T_i, C)`` float32 array of class probabilities (rows sum to 1; class 0 =
            blank), only the ``T_i`` frames that cover the crop (padding frames are dropped).
        texts: per crop the greedy CTC reading, in the teacher's characters.
        char_confidences: per crop the probability of each emitted character (``len == len(text)``).
    """

    probs: list[np.ndarray]
    texts: list[str]
    char_confidences: list[np.ndarray]

    def min_confidence(self, i: int) -> float:
        """The weakest character confidence of crop ``i`` (0 for an empty reading)."""
        conf = self.char_confidences[i]
        return float(conf.min()) if conf.size else 0.0


class Teacher(Protocol):
    """A recogniser usable as a teacher.

    Attributes:
        name: for reports and cache keys.
        classes: the teacher's CTC classes; ``classes[0]`` is the blank (``""``).
        frame_stride: input pixels per output frame along the width (0 when the width is resampled).
    """

    name: str
    classes: tuple[str, ...]

    def predict(self, images: Sequence[np.ndarray]) -> TeacherOutput:
        """Uint8 crops (H×W gray or H×W×3 RGB) -> what the teacher reads."""
        ...


#: Teacher kinds: name -> ``factory(**options) -> Teacher``.
TEACHERS: Registry[Teacher] = Registry("teacher")


def build_teacher(name: str, model: str | Path | None = None, **options: Any) -> Teacher:
    """Build the teacher registered as ``name`` (``rapidocr``, ``strkit``) with its options. ``model`` is the
    teacher's model as the user names it (``--teacher-model``, ``distill.teacher_model``): the checkpoint or
    export of a ``strkit`` teacher (its ``path``), the recogniser file of a ``rapidocr`` one (its ``model``);
    empty or ``None``: the teacher's default."""
    if model:
        options["path" if name == "strkit" else "model"] = model
    return TEACHERS.get(name)(**options)


# ---------------------------------------------------------------------------------------------------
# Decoding shared by the teachers
# ---------------------------------------------------------------------------------------------------
def greedy_ctc(probs: np.ndarray, classes: Sequence[str]) -> tuple[str, np.ndarray]:
    """Best-path CTC decoding of one ``(T, C)`` probability array.

    Returns:
        ``(text, confidences)``: repeated classes merged, blanks removed; each character's confidence is
        the highest probability among the frames of its run.
    """
    if probs.shape[0] == 0:
        return "", np.zeros(0, np.float32)
    best = probs.argmax(axis=1)
    peak = probs.max(axis=1)
    chars: list[str] = []
    conf: list[float] = []
    prev = -1
    for t, k in enumerate(best.tolist()):
        if k != prev and k != 0:
            chars.append(classes[k])
            conf.append(float(peak[t]))
        elif k == prev and k != 0:
            conf[-1] = max(conf[-1], float(peak[t]))
        prev = k
    return "".join(chars), np.asarray(conf, np.float32)


def _outputs(probs: list[np.ndarray], classes: Sequence[str]) -> TeacherOutput:
    decoded = [greedy_ctc(p, classes) for p in probs]
    return TeacherOutput(probs, [d[0] for d in decoded], [d[1] for d in decoded])


def to_bgr(image: np.ndarray) -> np.ndarray:
    """H×W gray, H×W×3 RGB or H×W×4 RGBA uint8 -> H×W×3 BGR uint8."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


# ---------------------------------------------------------------------------------------------------
# RapidOCR's PP-OCR recogniser
# ---------------------------------------------------------------------------------------------------
def rapidocr_model_path(model: str = "PP-OCRv6_rec_small.onnx") -> Path:
    """The recogniser ONNX file inside the installed ``rapidocr`` package (nothing is downloaded)."""
    try:
        root = resources.files("rapidocr")
    except ModuleNotFoundError as exc:
        raise TeacherError("teacher 'rapidocr' needs the optional package: pip install 'strkit[teacher]' "
                           "(or pip install rapidocr)") from exc
    path = Path(str(root)) / "models" / model
    if not path.is_file():
        shipped = sorted(p.name for p in (Path(str(root)) / "models").glob("*rec*.onnx"))
        raise TeacherError(f"teacher 'rapidocr': {model} is not in the installed rapidocr package; "
                           f"recognisers it ships: {', '.join(shipped) or 'none'}")
    return path


@dataclass
class RapidOCRTeacher:
    """RapidOCR's PP-OCR recogniser run directly with ONNX Runtime.

    Args:
        model: the recogniser file name in ``rapidocr/models``.
        threads: ONNX Runtime intra-op threads.
        max_width: widest input after resizing to height 48 (RapidOCR caps its batches at 320; a longer
            crop is squeezed to this width).
        batch_size: crops per ONNX call; crops are sorted by width so a batch pads little.
    """

    model: str = "PP-OCRv6_rec_small.onnx"
    threads: int = 1
    max_width: int = 320
    batch_size: int = 16
    name: str = field(init=False)
    classes: tuple[str, ...] = field(init=False)
    height: int = field(init=False, default=48)
    frame_stride: int = field(init=False, default=8)

    def __post_init__(self) -> None:
        from strkit.inference.onnx_backend import import_onnxruntime, session_options

        ort = import_onnxruntime()
        path = rapidocr_model_path(self.model)
        self.session = ort.InferenceSession(str(path), sess_options=session_options(self.threads),
                                            providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        chars = meta.get("character", "").splitlines()
        if not chars:
            raise TeacherError(f"teacher 'rapidocr': {path} has no 'character' list in its metadata")
        self.classes = ("", *chars, " ")
        self.name = f"rapidocr:{Path(self.model).stem}"
        self.input_name = self.session.get_inputs()[0].name

    def width(self, image: np.ndarray) -> int:
        """The input width of a crop at height 48 (aspect ratio kept, capped at ``max_width``)."""
        h, w = image.shape[:2]
        return max(self.frame_stride, min(self.max_width, int(math.ceil(self.height * w / max(h, 1)))))

    def _batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        widths = [self.width(im) for im in images]
        x = np.zeros((len(images), 3, self.height, max(widths)), np.float32)  # 0 = mid-gray after norm
        for i, (im, w) in enumerate(zip(images, widths, strict=True)):
            resized = cv2.resize(to_bgr(im), (w, self.height), interpolation=cv2.INTER_LINEAR)
            x[i, :, :, :w] = (resized.astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
        probs = self.session.run(None, {self.input_name: x})[0]
        return [np.ascontiguousarray(probs[i, : int(math.ceil(w / self.frame_stride))], np.float32)
                for i, w in enumerate(widths)]

    def predict(self, images: Sequence[np.ndarray]) -> TeacherOutput:
        order = sorted(range(len(images)), key=lambda i: self.width(images[i]))
        probs: list[np.ndarray] = [np.zeros((0, len(self.classes)), np.float32)] * len(images)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for i, p in zip(chunk, self._batch([images[i] for i in chunk]), strict=True):
                probs[i] = p
        return _outputs(probs, self.classes)


@TEACHERS.register("rapidocr")
def rapidocr_teacher(model: str = "PP-OCRv6_rec_small.onnx", threads: int = 1, max_width: int = 320,
                     batch_size: int = 16) -> Teacher:
    """RapidOCR's PP-OCR recogniser from the installed wheel (see :class:`RapidOCRTeacher`)."""
    return RapidOCRTeacher(model, threads, max_width, batch_size)


# ---------------------------------------------------------------------------------------------------
# A strkit model as teacher
# ---------------------------------------------------------------------------------------------------
@dataclass
class StrkitTeacher:
    """A strkit CTC model (checkpoint or ONNX export) as teacher; its classes are blank + its charset.

    Args:
        path: a ``.pt`` checkpoint or an exported ``.onnx`` file.
        threads: threads of the backend.
        batch_size: crops per forward pass.
    """

    path: str | Path
    threads: int = 1
    batch_size: int = 64
    name: str = field(init=False)
    classes: tuple[str, ...] = field(init=False)
    charset: Charset = field(init=False)

    def __post_init__(self) -> None:
        path = Path(self.path)
        if not path.is_file():
            raise TeacherError(f"teacher 'strkit': {path} is not a file (give a .pt checkpoint or an .onnx "
                               f"export)")
        if path.suffix == ".onnx":
            from strkit.inference.onnx_backend import OnnxBackend

            self.backend: Any = OnnxBackend(path, threads=self.threads)
            codec_kind = self.backend.metadata.codec_kind
        else:
            from strkit.inference.metadata import InputSpec
            from strkit.inference.torch_backend import TorchBackend
            from strkit.models.pretrained import load_model

            model, cfg = load_model(path)
            self.backend = TorchBackend(model, InputSpec.from_data_config(cfg.data))
            codec_kind = "ctc" if isinstance(model.codec, CTCCodec) else type(model.codec).__name__
        if codec_kind != "ctc":
            raise TeacherError(f"teacher 'strkit': {path} has a '{codec_kind}' decoder; a teacher must be a CTC "
                               f"model (its per-frame distributions are distilled)")
        self.charset = self.backend.charset
        self.classes = ("", *self.charset.chars)
        self.name = f"strkit:{path.name}"
        self.transform = self.backend.input_spec.transform()

    def predict(self, images: Sequence[np.ndarray]) -> TeacherOutput:
        probs: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            x = torch.stack([self.transform(im) for im in chunk])
            with torch.inference_mode():
                p = self.backend.logits(x).float().softmax(-1).cpu().numpy()
            probs.extend(np.ascontiguousarray(row, np.float32) for row in p)
        return _outputs(probs, self.classes)


@TEACHERS.register("strkit")
def strkit_teacher(path: str | Path, threads: int = 1, batch_size: int = 64) -> Teacher:
    """A strkit CTC checkpoint or ONNX export (see :class:`StrkitTeacher`)."""
    return StrkitTeacher(path, threads, batch_size)


# ---------------------------------------------------------------------------------------------------
# Teacher classes -> student charset
# ---------------------------------------------------------------------------------------------------
def fold_char(ch: str) -> str:
    """A teacher character as plain text: NFKC (full-width ``Ａ`` -> ``A``), then NFKD without combining
    marks (``à`` -> ``a``). May return several characters (``ﬁ`` -> ``fi``) or none."""
    text = unicodedata.normalize("NFKC", ch)
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


class ClassMap:
    """Folds a teacher's CTC classes into a student's CTC classes (blank = 0, charset char ``i`` = ``i+1``).

    A teacher class maps to the student class of its folded character (:func:`fold_char`, then the
    student's case folding, so ``A`` and ``a`` are summed in a case-insensitive student); a class that
    folds to no single student character (CJK, symbols the student lacks, space) sends its mass to blank,
    which is what the evaluation protocols do to such characters in labels.

    Args:
        teacher_classes: the teacher's classes, ``[0]`` = blank.
        charset: the student's charset.
    """

    def __init__(self, teacher_classes: Sequence[str], charset: Charset) -> None:
        self.charset = charset
        self.num_teacher = len(teacher_classes)
        self.num_student = len(charset) + 1
        index = np.zeros(self.num_teacher, np.int64)
        for k, ch in enumerate(teacher_classes):
            if k == 0:
                continue
            folded = charset.adapt(fold_char(ch))
            if len(folded) == 1:
                index[k] = charset.index(folded) + 1
        #: student class of every teacher class (0 = blank / unmapped)
        self.index = index
        self.unmapped = int((index[1:] == 0).sum())

    def fold_probs(self, probs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(..., C_teacher)`` probabilities -> ``(..., C_student)`` probabilities (mass summed)."""
        p = torch.as_tensor(probs, dtype=torch.float32)
        out = p.new_zeros(*p.shape[:-1], self.num_student)
        return out.index_add_(-1, torch.as_tensor(self.index), p)

    def fold_text(self, text: str) -> str:
        """A teacher reading as a student label: folded characters the student charset holds."""
        return self.charset.adapt("".join(fold_char(c) for c in text))
