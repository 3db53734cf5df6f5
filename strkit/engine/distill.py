"""Distillation losses for CTC students (and any decoder, through the sequence-level target).

All losses take the student's logits ``(B, T, C)`` over its CTC classes (class 0 = blank) and teacher
targets already folded into those classes (:class:`~strkit.inference.teachers.ClassMap`):

- :func:`sequence_targets`: the teacher's reading as a label where its weakest character confidence
  reaches a threshold (a second target for the model's own loss; works with every decoder).
- :func:`bag_kl`: "bag of characters" KL between time-averaged distributions. It needs no frame
  alignment, so a teacher with another frame rate, input size or architecture can teach. By default the
  blank is left out and the character part renormalised: the blank share of a time average depends on
  the frame rate (PP-OCR: one frame per 8 input pixels at height 48; a 32x128 strkit model: 32 frames),
  so comparing it would teach the student the teacher's frame rate, not its reading.
- :func:`frame_kl`: frame-wise KL, for a teacher with the student's frames and classes (a strkit model
  of the same input size and charset).
- :func:`mutual_kl`: online mutual distillation of two students (each learns the other's detached
  frame distributions, as in deep mutual learning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-8


def sequence_targets(texts: Sequence[str | None], confidences: Sequence[float], threshold: float
                     ) -> tuple[list[str], Tensor]:
    """Teacher readings usable as labels: ``(texts with '' where unusable, B bool mask)``.

    A reading is usable when it exists, is not empty and its weakest character confidence is at least
    ``threshold``.
    """
    mask = [bool(t) and c >= threshold for t, c in zip(texts, confidences, strict=True)]
    return [t if m else "" for t, m in zip(texts, mask, strict=True)], torch.tensor(mask, dtype=torch.bool)


def _bag(probs: Tensor, include_blank: bool) -> Tensor:
    """``(B, C)`` averaged distributions -> the compared distribution (blank dropped and renormalised)."""
    if include_blank:
        return probs / probs.sum(-1, keepdim=True).clamp_min(_EPS)
    chars = probs[:, 1:]
    return chars / chars.sum(-1, keepdim=True).clamp_min(_EPS)


def bag_kl(student_logits: Tensor, teacher_bag: Tensor, mask: Tensor | None = None,
           include_blank: bool = False, temperature: float = 1.0) -> Tensor:
    """KL(teacher ‖ student) between time-averaged class distributions.

    Args:
        student_logits: ``(B, T, C)`` CTC logits.
        teacher_bag: ``(B, C)`` the teacher's time-averaged distribution over the student's classes
            (frames covering the crop only).
        mask: ``(B,)`` bool, samples that have a teacher target (others contribute nothing).
        include_blank: compare the blank share too (only meaningful for a teacher with the student's
            frame rate).
        temperature: softens the student's per-frame softmax.

    Returns:
        The mean KL over masked samples (0 when none is).
    """
    student = F.softmax(student_logits.float() / temperature, dim=-1).mean(dim=1)
    p_s = _bag(student, include_blank)
    p_t = _bag(teacher_bag.float().to(p_s.device), include_blank)
    kl = (p_t * (torch.log(p_t.clamp_min(_EPS)) - torch.log(p_s.clamp_min(_EPS)))).sum(-1)
    if mask is not None:
        mask = mask.to(kl.device)
        if not bool(mask.any()):
            return kl.sum() * 0.0
        kl = kl[mask]
    return kl.mean()


def frame_kl(student_logits: Tensor, teacher_probs: Tensor, mask: Tensor | None = None,
             temperature: float = 1.0) -> Tensor:
    """Frame-wise KL(teacher ‖ student), ``temperature``² scaled (Hinton et al.).

    Args:
        student_logits: ``(B, T, C)``.
        teacher_probs: ``(B, T, C)`` teacher probabilities at temperature ``temperature``, same frames
            and classes.
        mask: ``(B,)`` bool, samples that have a teacher target.

    Raises:
        ValueError: shapes differ (use :func:`bag_kl` for a teacher with other frames or classes).
    """
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"frame-wise distillation needs the teacher's frames and classes to match the "
                         f"student's: student {tuple(student_logits.shape)}, teacher "
                         f"{tuple(teacher_probs.shape)}; use the bag-of-characters loss instead")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p_t = teacher_probs.float().to(log_s.device)
    kl = (p_t * (torch.log(p_t.clamp_min(_EPS)) - log_s)).sum(-1).mean(-1)  # (B,)
    if mask is not None:
        mask = mask.to(kl.device)
        if not bool(mask.any()):
            return kl.sum() * 0.0
        kl = kl[mask]
    return kl.mean() * temperature ** 2


def mutual_kl(logits_a: Tensor, logits_b: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Deep mutual learning: ``(loss for a, loss for b)``, each the frame-wise KL towards the other's
    detached distribution. Both ``(B, T, C)`` with the same frames and classes."""
    p_a = F.softmax(logits_a.detach().float() / temperature, dim=-1)
    p_b = F.softmax(logits_b.detach().float() / temperature, dim=-1)
    return frame_kl(logits_a, p_b, temperature=temperature), frame_kl(logits_b, p_a, temperature=temperature)
