"""Charsets, label normalisation and the label codecs of the CTC and attention decoders.

A :class:`Charset` is an ordered tuple of unique characters: a named preset (``36_lowercase``,
``62_mixed``, ``94_full``, defined here so they work from an installed package; editable copies live in
``data/charsets/``) or a UTF-8 file with one character per line.

Labels pass through :meth:`Charset.normalize` (NFKC, lowercase when the charset is case-insensitive,
characters outside the charset dropped). Datasets use a :class:`LabelFilter`, which also skips labels
that become empty or longer than the model's maximum length, and counts everything it does.

The codecs turn normalised labels into target tensors and decoder logits back into
:class:`Prediction` objects (text, confidence, per-character probabilities):

- :class:`CTCCodec`: class 0 is the blank, characters are ``1..N``; greedy best-path decoding.
- :class:`AttentionCodec`: ``EOS=0, BOS=1, PAD=2``, characters are ``3..N+2``; greedy decoding up to
  the first EOS.

:func:`protocol_filter` implements the evaluation protocols (``36``, ``62``, ``94``) applied to both
ground truth and prediction before comparing them.
"""

from __future__ import annotations

import logging
import math
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from strkit.registry import Registry

logger = logging.getLogger("strkit")

# Preset name -> its characters, in order. Read-only; the files under data/charsets/ mirror these.
_PRESET_CHARS: Mapping[str, str] = MappingProxyType({
    "36_lowercase": string.digits + string.ascii_lowercase,
    "62_mixed": string.digits + string.ascii_lowercase + string.ascii_uppercase,
    "94_full": string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation,
})
PRESETS: tuple[str, ...] = ("36_lowercase", "62_mixed", "94_full")

CODECS: Registry[Any] = Registry("codec")


def _describe(ch: str) -> str:
    """``'x' (U+0078)``: a character readable in an error message even when invisible."""
    return f"{ch!r} (U+{ord(ch):04X})"


# ---------------------------------------------------------------------------------------------------
# Charset
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=True)
class Charset:
    """An ordered set of characters a model can read.

    Args:
        name: preset name or a free label (the file stem for a charset read from a file).
        chars: the characters, each a single code point, unique, unchanged by NFKC (a label is
            NFKC-normalised, so a character that NFKC rewrites could never occur in one).

    Raises:
        ValueError: empty charset, an entry that is not one character, a duplicate, a newline, or a
            character that NFKC normalisation changes.
    """

    name: str
    chars: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)
    _case_insensitive: bool = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        chars = tuple(self.chars)
        if not chars:
            raise ValueError(f"charset '{self.name}' is empty: it needs at least one character")
        index: dict[str, int] = {}
        for i, ch in enumerate(chars):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"charset '{self.name}': entry {i} is {ch!r}; every entry must be exactly "
                                 f"one character")
            if ch in "\n\r":
                raise ValueError(f"charset '{self.name}': a newline cannot be a charset character")
            nfkc = unicodedata.normalize("NFKC", ch)
            if nfkc != ch:
                raise ValueError(f"charset '{self.name}': character {_describe(ch)} becomes {nfkc!r} under "
                                 f"NFKC normalisation, so no normalised label can contain it; replace it "
                                 f"with {nfkc!r} or remove it")
            if ch in index:
                raise ValueError(f"charset '{self.name}': character {_describe(ch)} appears twice "
                                 f"(entries {index[ch]} and {i}); each character must appear once")
            index[ch] = i
        object.__setattr__(self, "chars", chars)
        object.__setattr__(self, "_index", index)
        cased = [c for c in chars if c.islower() and len(c.upper()) == 1 and c.upper() != c]
        insensitive = bool(cased) and not any(c.upper() in index for c in cased)
        object.__setattr__(self, "_case_insensitive", insensitive)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> Charset:
        """One of :data:`PRESETS` (``36_lowercase``, ``62_mixed``, ``94_full``)."""
        if name not in _PRESET_CHARS:
            raise ValueError(f"unknown charset preset '{name}'. Presets: {', '.join(PRESETS)}")
        return cls(name, tuple(_PRESET_CHARS[name]))

    @classmethod
    def from_file(cls, path: str | Path) -> Charset:
        """Read a UTF-8 file with one character per line.

        A line holding only a space means the space character; blank lines (empty or several
        whitespace characters) are ignored; surrounding whitespace of a one-character line is ignored.
        A character written as a decomposed sequence (``e`` + combining accent) is composed (NFKC).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: a line holding several characters, a duplicate (with both line numbers), or no
                character at all.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"charset file '{path}' does not exist; give a preset name "
                                    f"({', '.join(PRESETS)}) or the path of a UTF-8 file with one "
                                    f"character per line")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValueError(f"charset file '{path}' is not valid UTF-8 ({err}); save it as UTF-8") from None
        chars: list[str] = []
        line_of: dict[str, int] = {}
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw[:-1] if raw.endswith("\r") else raw
            if len(line) != 1:
                line = line.strip()
                if not line:
                    continue
                if len(line) > 1:
                    composed = unicodedata.normalize("NFKC", line)
                    if len(composed) != 1:
                        raise ValueError(f"charset file '{path}', line {lineno}: {line!r} holds {len(line)} "
                                         f"characters; write exactly one character per line")
                    line = composed
            if line in line_of:
                raise ValueError(f"charset file '{path}': character {_describe(line)} appears twice "
                                 f"(lines {line_of[line]} and {lineno}); remove one of them")
            line_of[line] = lineno
            chars.append(line)
        if not chars:
            raise ValueError(f"charset file '{path}' holds no character; write one character per line")
        try:
            return cls(path.stem, tuple(chars))
        except ValueError as err:
            raise ValueError(f"charset file '{path}': {err}") from None

    @classmethod
    def from_spec(cls, spec: str | Path) -> Charset:
        """A preset name (see :data:`PRESETS`) or the path of a charset file (see :meth:`from_file`)."""
        if isinstance(spec, str) and spec in _PRESET_CHARS:
            return cls.preset(spec)
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"charset '{spec}' is neither a preset ({', '.join(PRESETS)}) nor an "
                                    f"existing file; give a preset name or the path of a UTF-8 file with "
                                    f"one character per line")
        return cls.from_file(path)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form stored in checkpoints: ``{'name': str, 'chars': list[str]}``."""
        return {"name": self.name, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Charset:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, Mapping) or "chars" not in d:
            raise ValueError(f"not a charset record (expected a mapping with 'name' and 'chars'): {d!r:.200}")
        return cls(str(d.get("name", "custom")), tuple(d["chars"]))

    def to_file(self, path: str | Path) -> None:
        """Write the charset as a UTF-8 file, one character per line (readable by :meth:`from_file`)."""
        Path(path).write_text("".join(ch + "\n" for ch in self.chars), encoding="utf-8")

    # -- container protocol -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: object) -> bool:
        return ch in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.chars)

    def index(self, ch: str) -> int:
        """0-based position of ``ch``; ``KeyError`` if it is not in the charset."""
        return self._index[ch]

    def __repr__(self) -> str:
        return f"Charset(name={self.name!r}, size={len(self.chars)})"

    # -- labels -----------------------------------------------------------------------------------
    @property
    def case_insensitive(self) -> bool:
        """True when the charset holds lowercase letters but none of their uppercase forms.

        Labels are then lowercased before filtering, so ``"Hello"`` is read as ``"hello"`` instead of
        losing its capital.
        """
        return self._case_insensitive

    def split_label(self, label: str) -> tuple[str, str]:
        """NFKC, lowercase if :attr:`case_insensitive`, then split into (kept, dropped) characters."""
        text = unicodedata.normalize("NFKC", label)
        if self._case_insensitive:
            text = text.lower()
        index = self._index
        kept = "".join(ch for ch in text if ch in index)
        if len(kept) == len(text):
            return kept, ""
        return kept, "".join(ch for ch in text if ch not in index)

    def normalize(self, label: str) -> tuple[str, int]:
        """NFKC, lowercase if :attr:`case_insensitive`, drop characters not in the charset.

        Returns:
            ``(clean label, number of characters dropped)``; the count is in normalised characters
            (``'ﬁ'`` counts as the two characters ``'fi'``).
        """
        kept, dropped = self.split_label(label)
        return kept, len(dropped)

    def adapt(self, text: str) -> str:
        """Map a prediction made with a bigger training charset onto this (test) charset.

        Lowercases if :attr:`case_insensitive` and drops characters not in this charset.
        """
        if self._case_insensitive:
            text = text.lower()
        return "".join(ch for ch in text if ch in self._index)


# ---------------------------------------------------------------------------------------------------
# Label filtering for datasets
# ---------------------------------------------------------------------------------------------------
_STAT_KEYS = ("seen", "kept", "chars_stripped", "labels_with_stripped_chars", "skipped_empty",
              "skipped_too_long")


class LabelFilter:
    """Callable used by datasets: raw label -> cleaned label, or ``None`` to skip the sample.

    Cleaning is :meth:`Charset.normalize`; a label that becomes empty or is longer than
    ``max_length`` is skipped. Every outcome is counted in :attr:`stats` (keys ``seen``, ``kept``,
    ``chars_stripped``, ``labels_with_stripped_chars``, ``skipped_empty``, ``skipped_too_long``) and the
    stripped characters themselves in :attr:`stripped_chars`, so nothing is dropped silently.

    Args:
        charset: the model's (training) charset.
        max_length: longest label kept, in characters (>= 1).
        name: what is filtered, used in :meth:`report` (e.g. a dataset name).
    """

    def __init__(self, charset: Charset, max_length: int, name: str = "labels") -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.charset = charset
        self.max_length = int(max_length)
        self.name = name
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        self.stripped_chars: Counter[str] = Counter()

    def __call__(self, label: str) -> str | None:
        stats = self.stats
        stats["seen"] += 1
        clean, dropped = self.charset.split_label(label)
        if dropped:
            stats["chars_stripped"] += len(dropped)
            stats["labels_with_stripped_chars"] += 1
            self.stripped_chars.update(dropped)
        if not clean:
            stats["skipped_empty"] += 1
            return None
        if len(clean) > self.max_length:
            stats["skipped_too_long"] += 1
            return None
        stats["kept"] += 1
        return clean

    @property
    def needs_warning(self) -> bool:
        """True when a character was stripped or a label skipped."""
        s = self.stats
        return bool(s["chars_stripped"] or s["skipped_empty"] or s["skipped_too_long"])

    def report(self) -> str:
        """One human-readable line summarising the counts."""
        s = self.stats
        line = (f"{self.name}: {s['seen']} seen, {s['kept']} kept, {s['skipped_empty']} skipped (empty after "
                f"filtering), {s['skipped_too_long']} skipped (longer than {self.max_length}), "
                f"{s['chars_stripped']} characters outside charset '{self.charset.name}' stripped from "
                f"{s['labels_with_stripped_chars']} labels")
        if self.stripped_chars:
            common = ", ".join(f"{ch!r}x{n}" for ch, n in self.stripped_chars.most_common(8))
            line += f" (most common: {common})"
        return line

    def warn_if_needed(self) -> bool:
        """Log :meth:`report` as a warning on logger ``strkit`` if anything was stripped or skipped.

        Returns:
            whether a warning was logged.
        """
        if self.needs_warning:
            logger.warning("label filter: %s", self.report())
            return True
        return False

    def merge(self, other: LabelFilter) -> None:
        """Add another filter's counts to this one (e.g. filters that ran in data-loader workers)."""
        for key, value in other.stats.items():
            self.stats[key] = self.stats.get(key, 0) + value
        self.stripped_chars.update(other.stripped_chars)

    def reset(self) -> None:
        """Set every count back to zero."""
        self.stats = dict.fromkeys(_STAT_KEYS, 0)
        self.stripped_chars = Counter()


# ---------------------------------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """A decoded sequence.

    Attributes:
        text: the decoded text.
        confidence: product of the per-character probabilities (times the EOS probability for the
            attention codec); for an empty CTC output, the lowest blank-frame probability.
        char_probs: one probability per character of ``text``.
    """

    text: str
    confidence: float
    char_probs: list[float]


def _check_logits(logits: torch.Tensor, num_classes: int, what: str) -> None:
    if logits.dim() != 3:
        raise ValueError(f"{what}.decode expects logits of shape B×T×K, got shape {tuple(logits.shape)}")
    if logits.shape[-1] != num_classes:
        raise ValueError(f"{what}.decode: logits have {logits.shape[-1]} classes but the codec has "
                         f"{num_classes} (charset size + special tokens); model and charset do not match")


def _unknown_char_error(label: str, charset: Charset) -> ValueError:
    bad = next(ch for ch in label if ch not in charset)
    return ValueError(f"label {label!r} holds character {_describe(bad)}, which is not in charset "
                      f"'{charset.name}'; normalise labels first (Charset.normalize or LabelFilter)")


class CTCCodec:
    """Labels <-> CTC targets. Class 0 is the blank; charset character ``i`` is class ``i + 1``.

    Args:
        charset: the model's charset.
    """

    blank: int = 0

    def __init__(self, charset: Charset) -> None:
        self.charset = charset
        self.num_classes = len(charset) + 1
        self._to_id = {ch: i + 1 for i, ch in enumerate(charset.chars)}

    def encode(self, labels: Sequence[str]) -> dict[str, torch.Tensor]:
        """Concatenated targets for :func:`torch.nn.functional.ctc_loss`.

        Args:
            labels: B normalised labels (every character in the charset).

        Returns:
            ``targets``: LongTensor (sum of label lengths,), ``target_lengths``: LongTensor (B,).

        Raises:
            ValueError: a label holds a character outside the charset (the character is named).
        """
        to_id = self._to_id
        ids: list[int] = []
        lengths: list[int] = []
        for label in labels:
            try:
                ids.extend(to_id[ch] for ch in label)
            except KeyError:
                raise _unknown_char_error(label, self.charset) from None
            lengths.append(len(label))
        return {"targets": torch.tensor(ids, dtype=torch.long),
                "target_lengths": torch.tensor(lengths, dtype=torch.long)}

    def decode(self, logits: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None
               ) -> list[Prediction]:
        """Greedy best-path decoding.

        The argmax class of each frame is taken, runs of equal classes are collapsed and blanks
        dropped. A character's probability is the highest softmax probability over the frames of its run.

        Args:
            logits: B×T×K raw scores (or log-probabilities), K = :attr:`num_classes`.
            lengths: optional (B,) number of valid frames per sample; later frames are ignored.

        Returns:
            B :class:`Prediction` objects.
        """
        _check_logits(logits, self.num_classes, "CTCCodec")
        batch, frames, _ = logits.shape
        if frames == 0:
            return [Prediction("", 1.0, []) for _ in range(batch)]
        probs = logits.detach().float().softmax(-1)
        best_p, best_id = probs.max(-1)  # B×T each
        if lengths is not None:
            valid = torch.as_tensor(lengths, device=best_id.device).view(-1, 1)
            best_id = best_id.masked_fill(torch.arange(frames, device=best_id.device) >= valid, self.blank)
        new_run = torch.ones_like(best_id, dtype=torch.bool)
        new_run[:, 1:] = best_id[:, 1:] != best_id[:, :-1]
        run_idx = new_run.long().cumsum(1) - 1  # B×T, run number within the sample
        flat_idx = (run_idx + torch.arange(batch, device=run_idx.device).view(-1, 1) * frames).flatten()
        run_max = torch.zeros(batch * frames, device=best_p.device).scatter_reduce(
            0, flat_idx, best_p.flatten(), reduce="amax", include_self=False).view(batch, frames)
        n_runs = new_run.sum(1).tolist()
        run_ids = best_id[new_run].tolist()  # run classes of all samples, concatenated
        run_max_rows = run_max.tolist()
        # An empty reading is as certain as its least certain (blank) frame, not "1.0".
        blank_conf = best_p.min(1).values.tolist()
        chars = self.charset.chars
        out: list[Prediction] = []
        start = 0
        for b in range(batch):
            text: list[str] = []
            char_probs: list[float] = []
            for r, cls in enumerate(run_ids[start:start + n_runs[b]]):
                if cls != self.blank:
                    text.append(chars[cls - 1])
                    char_probs.append(run_max_rows[b][r])
            start += n_runs[b]
            conf = math.prod(char_probs) if char_probs else blank_conf[b]
            out.append(Prediction("".join(text), conf, char_probs))
        return out

    def decode_ids(self, ids: Iterable[int]) -> str:
        """Already collapsed class ids -> text; blanks are skipped, repeats are kept."""
        chars = self.charset.chars
        text: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.blank:
                continue
            if not 0 < i < self.num_classes:
                raise ValueError(f"class id {i} is out of range for a CTC codec with {self.num_classes} "
                                 f"classes")
            text.append(chars[i - 1])
        return "".join(text)


class AttentionCodec:
    """Labels <-> token sequences of an autoregressive (attention) decoder.

    ``EOS=0``, ``BOS=1``, ``PAD=2``; charset character ``i`` is class ``i + 3``. An encoded batch
    ``tokens`` (B×(max_length+2)) gives the decoder input ``tokens[:, :-1]`` (teacher forcing, starts
    with BOS) and the targets ``tokens[:, 1:]`` (B×(max_length+1), ends with EOS then PAD, to be used with
    ``ignore_index=pad``).

    Args:
        charset: the model's charset.
        max_length: longest label in characters; the decoder runs ``max_length + 1`` steps.
    """

    eos: int = 0
    bos: int = 1
    pad: int = 2

    def __init__(self, charset: Charset, max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.charset = charset
        self.max_length = int(max_length)
        self.num_classes = len(charset) + 3
        self._to_id = {ch: i + 3 for i, ch in enumerate(charset.chars)}

    def encode(self, labels: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token sequences ``[BOS, c1..cn, EOS, PAD...]``.

        Args:
            labels: B normalised labels, each at most ``max_length`` characters.

        Returns:
            ``tokens``: LongTensor B×(max_length+2); ``lengths``: LongTensor (B,) = n + 1 (chars + EOS).

        Raises:
            ValueError: a label is too long or holds a character outside the charset.
        """
        tokens = torch.full((len(labels), self.max_length + 2), self.pad, dtype=torch.long)
        tokens[:, 0] = self.bos
        lengths: list[int] = []
        to_id = self._to_id
        for b, label in enumerate(labels):
            if len(label) > self.max_length:
                raise ValueError(f"label {label!r} has {len(label)} characters, more than max_length="
                                 f"{self.max_length}; filter labels with LabelFilter or raise max_length")
            try:
                ids = [to_id[ch] for ch in label]
            except KeyError:
                raise _unknown_char_error(label, self.charset) from None
            n = len(ids)
            if n:
                tokens[b, 1:n + 1] = torch.tensor(ids, dtype=torch.long)
            tokens[b, n + 1] = self.eos
            lengths.append(n + 1)
        return {"tokens": tokens, "lengths": torch.tensor(lengths, dtype=torch.long)}

    def decode(self, logits: torch.Tensor) -> list[Prediction]:
        """Greedy decoding: argmax per step up to the first EOS.

        BOS and PAD are never outputs: their scores are masked out before the softmax. The confidence
        includes the EOS probability; a sequence without EOS is decoded over all L steps.

        Args:
            logits: B×L×K raw scores, L = max_length + 1 steps (any L is accepted), K = :attr:`num_classes`.

        Returns:
            B :class:`Prediction` objects.
        """
        _check_logits(logits, self.num_classes, "AttentionCodec")
        scores = logits.detach().float().clone()
        scores[..., self.bos] = -math.inf
        scores[..., self.pad] = -math.inf
        best_p, best_id = scores.softmax(-1).max(-1)  # B×L each
        chars = self.charset.chars
        out: list[Prediction] = []
        for ids, ps in zip(best_id.tolist(), best_p.tolist(), strict=True):
            text: list[str] = []
            char_probs: list[float] = []
            confidence = 1.0
            for cls, p in zip(ids, ps, strict=True):
                if cls == self.eos:
                    confidence = p
                    break
                text.append(chars[cls - 3])
                char_probs.append(p)
            out.append(Prediction("".join(text), confidence * math.prod(char_probs), char_probs))
        return out

    def decode_ids(self, ids: Iterable[int]) -> str:
        """Class ids -> text, stopping at the first EOS; BOS and PAD are skipped."""
        chars = self.charset.chars
        text: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i in (self.bos, self.pad):
                continue
            if not 0 <= i < self.num_classes:
                raise ValueError(f"class id {i} is out of range for an attention codec with "
                                 f"{self.num_classes} classes")
            text.append(chars[i - 3])
        return "".join(text)


@CODECS.register("ctc")
def ctc_codec(charset: Charset, max_length: int | None = None) -> CTCCodec:
    """Factory of :class:`CTCCodec` (``max_length`` is accepted for a uniform signature and ignored)."""
    return CTCCodec(charset)


@CODECS.register("attention")
def attention_codec(charset: Charset, max_length: int) -> AttentionCodec:
    """Factory of :class:`AttentionCodec`."""
    return AttentionCodec(charset, max_length)


def build_codec(kind: str, charset: Charset, max_length: int) -> CTCCodec | AttentionCodec:
    """The codec registered as ``kind`` (``ctc`` or ``attention``) for ``charset``."""
    return CODECS.build(kind, where="codec", charset=charset, max_length=max_length)


# ---------------------------------------------------------------------------------------------------
# Evaluation protocols
# ---------------------------------------------------------------------------------------------------
# protocol -> (lowercase first?, characters kept). Read-only.
_PROTOCOLS: Mapping[str, tuple[bool, frozenset[str]]] = MappingProxyType({
    "36": (True, frozenset(string.digits + string.ascii_lowercase)),
    "62": (False, frozenset(string.digits + string.ascii_letters)),
    "94": (False, frozenset(string.digits + string.ascii_letters + string.punctuation)),
})
PROTOCOLS: tuple[str, ...] = ("36", "62", "94")


def protocol_filter(text: str, protocol: str = "36") -> str:
    """Text as compared under an evaluation protocol (applied to ground truth and prediction alike).

    All protocols apply NFKC first. ``'36'``: lowercase, keep ``[0-9a-z]``. ``'62'``: keep
    ``[0-9A-Za-z]`` with case. ``'94'``: keep printable ASCII without space.

    Raises:
        ValueError: unknown protocol (the valid ones are listed).
    """
    key = str(protocol)
    if key not in _PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    lower, keep = _PROTOCOLS[key]
    text = unicodedata.normalize("NFKC", text)
    if lower:
        text = text.lower()
    return "".join(ch for ch in text if ch in keep)
