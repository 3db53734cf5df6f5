"""Greedy decoding of decoder logits into :class:`Prediction` objects (text, confidence, per-character
probabilities): CTC best path (:func:`ctc_greedy`) and attention argmax up to the first EOS
(:func:`attention_greedy`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


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


def check_logits(logits: torch.Tensor, num_classes: int, what: str) -> None:
    if logits.dim() != 3:
        raise ValueError(f"{what}.decode expects logits of shape B×T×K, got shape {tuple(logits.shape)}")
    if logits.shape[-1] != num_classes:
        raise ValueError(f"{what}.decode: logits have {logits.shape[-1]} classes but the codec has "
                         f"{num_classes} (charset size + special tokens); model and charset do not match")


def ctc_greedy(logits: torch.Tensor, chars: Sequence[str], blank: int = 0,
               lengths: torch.Tensor | Sequence[int] | None = None) -> list[Prediction]:
    """Greedy best-path CTC decoding of B×T×K logits (class ``blank`` is the blank, class ``i`` for
    ``i != blank`` is ``chars[i - 1]``).

    The argmax class of each frame is taken, runs of equal classes are collapsed and blanks dropped. A
    character's probability is the highest softmax probability over the frames of its run; ``lengths``
    (B,) limits the valid frames per sample.
    """
    batch, frames, _ = logits.shape
    if frames == 0:
        return [Prediction("", 1.0, []) for _ in range(batch)]
    probs = logits.detach().float().softmax(-1)
    best_p, best_id = probs.max(-1)  # B×T each
    if lengths is not None:
        valid = torch.as_tensor(lengths, device=best_id.device).view(-1, 1)
        best_id = best_id.masked_fill(torch.arange(frames, device=best_id.device) >= valid, blank)
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
    out: list[Prediction] = []
    start = 0
    for b in range(batch):
        text: list[str] = []
        char_probs: list[float] = []
        for r, cls in enumerate(run_ids[start:start + n_runs[b]]):
            if cls != blank:
                text.append(chars[cls - 1])
                char_probs.append(run_max_rows[b][r])
        start += n_runs[b]
        conf = math.prod(char_probs) if char_probs else blank_conf[b]
        out.append(Prediction("".join(text), conf, char_probs))
    return out


def attention_greedy(logits: torch.Tensor, chars: Sequence[str], eos: int = 0,
                     never: Sequence[int] = (1, 2)) -> list[Prediction]:
    """Greedy attention decoding of B×L×K logits: argmax per step up to the first ``eos``; class ``i``
    is ``chars[i - 3]`` and the classes ``never`` (BOS, PAD) are masked out before the softmax. The
    confidence includes the EOS probability; a sequence without EOS is decoded over all L steps.
    """
    scores = logits.detach().float().clone()
    scores[..., list(never)] = -math.inf
    best_p, best_id = scores.softmax(-1).max(-1)  # B×L each
    out: list[Prediction] = []
    for ids, ps in zip(best_id.tolist(), best_p.tolist(), strict=True):
        text: list[str] = []
        char_probs: list[float] = []
        confidence = 1.0
        for cls, p in zip(ids, ps, strict=True):
            if cls == eos:
                confidence = p
                break
            text.append(chars[cls - 3])
            char_probs.append(p)
        out.append(Prediction("".join(text), confidence * math.prod(char_probs), char_probs))
    return out
