"""The label codecs of the CTC and attention decoders: normalised labels -> target tensors, logits -> text.

- :class:`CTCCodec`: class 0 is the blank, characters are ``1..N``; greedy best-path decoding.
- :class:`AttentionCodec`: ``EOS=0, BOS=1, PAD=2``, characters are ``3..N+2``; greedy decoding up to
  the first EOS.

:data:`CODECS` maps a decoder's ``codec_kind`` to its codec factory; the greedy decoding itself is
:mod:`strkit.greedy_decoding`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from strkit.charset import Charset, describe_char
from strkit.greedy_decoding import Prediction, attention_greedy, check_logits, ctc_greedy
from strkit.registry import Registry

CODECS: Registry[Any] = Registry("codec")


def _unknown_char_error(label: str, charset: Charset) -> ValueError:
    bad = next(ch for ch in label if ch not in charset)
    return ValueError(f"label {label!r} holds character {describe_char(bad)}, which is not in charset "
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
        check_logits(logits, self.num_classes, "CTCCodec")
        return ctc_greedy(logits, self.charset.chars, self.blank, lengths)

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
        check_logits(logits, self.num_classes, "AttentionCodec")
        return attention_greedy(logits, self.charset.chars, self.eos, (self.bos, self.pad))

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
