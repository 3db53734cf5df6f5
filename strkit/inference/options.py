"""Reading options of :class:`strkit.api.Recognizer`: word confidence, rotated crops, long words, lexicon.

- **Word confidence** (:data:`CONFIDENCE_MODES`): how the per-character probabilities of a reading make
  its word confidence: ``product`` (the default, and what the decoders report: the probability of the
  whole reading, lower for longer words), ``mean``, ``min`` (the least certain character) or ``geomean``
  (the geometric mean: a length-independent ``product``). A reading with no character keeps the
  decoder's own confidence (for CTC: its least certain blank frame).
- **Rotated and vertical crops** (``rotate``): a crop taller than ``rotate_ratio`` times its width
  (rotated text, or a vertical line of rotated letters) is also read rotated by +90° and -90°; the
  reading with the highest word confidence is kept.
- **Long words** (``max_width``): the crop is resized to the model's height keeping its aspect ratio, up to
  ``max_width`` pixels wide, instead of being squashed into the training width (see
  :func:`wide_width`); for backends that accept any input width.
- **Lexicon** (``lexicon``): for CTC models, the reading is the lexicon word of highest CTC probability
  (the ``ctc`` decoder's lexicon decoding, :class:`strkit.models.decoders.ctc.CTCDecoder`); with
  ``lexicon_any_case`` (the default) a word also matches in lower case, Capitalised and UPPER CASE, and the
  form read is returned, so a lower-case word list serves a case-sensitive model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from strkit.greedy_decoding import Prediction
from strkit.registry import Registry

#: Word confidence from the per-character probabilities (a non-empty list).
CONFIDENCE_MODES: Registry[float] = Registry("confidence mode")


@CONFIDENCE_MODES.register("product")
def product(probs: Sequence[float]) -> float:
    """``Π p``: the probability of the whole reading (what the decoders report)."""
    return float(math.prod(probs))


@CONFIDENCE_MODES.register("mean")
def arithmetic_mean(probs: Sequence[float]) -> float:
    """``Σ p / n``."""
    return math.fsum(probs) / len(probs)


@CONFIDENCE_MODES.register("min")
def minimum(probs: Sequence[float]) -> float:
    """The least certain character's probability."""
    return float(min(probs))


@CONFIDENCE_MODES.register("geomean")
def geometric_mean(probs: Sequence[float]) -> float:
    """``(Π p)^(1/n)``, computed in log space (0 when a probability is 0)."""
    if min(probs) <= 0.0:
        return 0.0
    return math.exp(math.fsum(math.log(p) for p in probs) / len(probs))


DEFAULT_CONFIDENCE = "product"


def word_confidence(char_probs: Sequence[float], mode: str = DEFAULT_CONFIDENCE,
                    empty: float = 0.0) -> float:
    """The word confidence of a reading with per-character probabilities ``char_probs`` under ``mode``
    (a name in :data:`CONFIDENCE_MODES`); ``empty``: the confidence of a reading with no character.

    Raises:
        RegistryError: an unknown mode (the message lists the known ones).
    """
    fn: Callable[[Sequence[float]], float] = CONFIDENCE_MODES.get(mode)
    return float(fn(list(char_probs))) if len(char_probs) else float(empty)


def prediction_confidence(pred: Prediction, mode: str = DEFAULT_CONFIDENCE) -> float:
    """The word confidence of ``pred`` under ``mode``: the decoder's own for ``product`` (it includes e.g.
    the attention decoder's end-of-sequence probability), else from its character probabilities."""
    if mode == DEFAULT_CONFIDENCE:
        return float(pred.confidence)
    return word_confidence(pred.char_probs, mode, empty=float(pred.confidence))


#: A crop taller than this times its width is also read at ±90° (``rotate_ratio``).
DEFAULT_ROTATE_RATIO = 1.5


@dataclass(frozen=True)
class InferenceOptions:
    """How :class:`strkit.api.Recognizer` reads (see the module docstring).

    Attributes:
        confidence: word confidence mode, a name in :data:`CONFIDENCE_MODES`.
        rotate: read crops taller than ``rotate_ratio`` × their width also at +90° and -90°, keep the most
            confident reading.
        rotate_ratio: the height/width ratio above which a crop is tried rotated (> 0).
        max_width: ``None``: the model's input width (today's resize); else keep the aspect ratio up to this
            width in pixels (>= the model's width; needs a backend that accepts any width).
        lexicon: ``None``, or words: the reading is the lexicon word of highest CTC probability (CTC models).
        lexicon_any_case: a lexicon word also matches in lower case, Capitalised and UPPER CASE (the form
            read is returned); ``False``: only as written.
    """

    confidence: str = DEFAULT_CONFIDENCE
    rotate: bool = True
    rotate_ratio: float = DEFAULT_ROTATE_RATIO
    max_width: int | None = None
    lexicon: tuple[str, ...] | None = None
    lexicon_any_case: bool = True

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCE_MODES:
            raise ValueError(f"unknown confidence mode '{self.confidence}'; use one of: "
                             f"{', '.join(CONFIDENCE_MODES.names())}")
        if not (isinstance(self.rotate_ratio, int | float) and self.rotate_ratio > 0):
            raise ValueError(f"rotate_ratio must be a positive number (height / width), got {self.rotate_ratio!r}")
        if self.max_width is not None and (isinstance(self.max_width, bool) or not isinstance(self.max_width, int)
                                           or self.max_width < 1):
            raise ValueError(f"max_width must be a positive number of pixels or None, got {self.max_width!r}")
        if self.lexicon is not None:
            if isinstance(self.lexicon, str):
                raise ValueError("lexicon must be a list of words, not a string (read a word file with "
                                 "strkit.models.decoders.ctc.read_lexicon)")
            words = tuple(str(w) for w in self.lexicon)
            if not words:
                raise ValueError("lexicon is empty: give at least one word, or None for no constraint")
            object.__setattr__(self, "lexicon", words)
        if not isinstance(self.lexicon_any_case, bool):
            raise ValueError(f"lexicon_any_case must be True or False, got {self.lexicon_any_case!r}")

    @classmethod
    def build(cls, base: InferenceOptions | None = None, **changes: object) -> InferenceOptions:
        """``base`` (default: the defaults) with ``changes`` (``None`` values are ignored, except that
        ``max_width=None`` / ``lexicon=None`` keep ``base``'s); an unknown option is a ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown reading option(s) {', '.join(unknown)}; options: {', '.join(sorted(names))}")
        base = base or cls()
        values = {f.name: getattr(base, f.name) for f in fields(cls)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def is_tall(height: int, width: int, ratio: float) -> bool:
    """Whether a ``height × width`` crop is tall enough to be tried rotated."""
    return height > ratio * width


def rotations(image: np.ndarray) -> list[np.ndarray]:
    """``image`` rotated by +90° (counter-clockwise) and -90° (clockwise)."""
    return [np.ascontiguousarray(np.rot90(image, 1)), np.ascontiguousarray(np.rot90(image, -1))]


def wide_width(height: int, width: int, img_h: int, img_w: int, max_width: int, keep_ratio: bool,
               multiple: int = 4) -> int:
    """The input width of a ``height × width`` crop read with ``max_width``.

    The crop keeps its aspect ratio at the model height ``img_h`` (``round(width · img_h / height)``), up to
    ``max_width``. A model trained without ``keep_ratio`` (every crop squashed to ``img_w``) still gets at
    least ``img_w`` (short words read as in training); one trained with ``keep_ratio`` gets the natural width
    (padded as in training). The width is rounded up to a multiple of ``multiple`` (so that crops of
    similar width share a batch without padding).
    """
    natural = max(1, round(width * img_h / max(1, height)))
    target = min(max_width, natural if keep_ratio else max(img_w, natural))
    return max(1, min(max_width, -(-target // multiple) * multiple))
