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

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from strkit.charset import Charset
from strkit.config import ConfigError, DistillConfig
from strkit.data.teacher_cache import TeacherCache, TeacherTarget, image_key
from strkit.inference.teachers import ClassMap, Teacher, build_teacher

log = logging.getLogger("strkit")

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


# ---------------------------------------------------------------------------------------------------
# The training side: teacher cache filling and the loss of a batch
# ---------------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def source_stamp(path: str | Path, count: int) -> str:
    """What identifies a training source's contents for the teacher cache: its resolved path, its number of
    samples, and the size and modification time of its data file (``data.mdb`` of an LMDB, ``labels.tsv`` of a
    folder dataset, else the path itself). Rewriting the source changes the stamp, so it is read again."""
    root = Path(path).resolve()
    data = next((root / n for n in ("data.mdb", "labels.tsv") if (root / n).is_file()), root)
    st = data.stat()
    return f"{root}|{count}|{st.st_size}|{st.st_mtime_ns}"


class Distiller:
    """Everything ``distill:`` adds to a training run.

    Before training, :meth:`prepare` reads every crop of the distilled sources that the teacher cache
    lacks (rank 0; printing the cost estimate first) so that training reads targets from disk; during
    training, :meth:`loss` turns a batch's targets into the weighted distillation loss.

    Args:
        cfg: the ``distill`` config section.
        charset: the student's charset (teacher classes are folded into it).
        is_main: this process fills the cache (rank 0); the others wait and read.
    """

    def __init__(self, cfg: DistillConfig, charset: Charset, is_main: bool = True) -> None:
        if not cfg.teacher:
            raise ValueError("distill.teacher is empty: distillation is off")
        if cfg.bag_weight < 0 or cfg.frame_weight < 0 or cfg.sequence_weight < 0:
            raise ConfigError("distill.*_weight must be >= 0")
        if cfg.bag_weight == cfg.frame_weight == cfg.sequence_weight == 0:
            raise ConfigError("distill.teacher is set but every distill.*_weight is 0: set bag_weight, "
                              "frame_weight or sequence_weight (or clear distill.teacher)")
        if cfg.temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {cfg.temperature}")
        self.cfg = cfg
        self.charset = charset
        self.is_main = is_main
        self._teacher: Teacher | None = None
        self.teacher_name = ""
        self.stats: dict[str, float] = {}

    def teacher(self) -> Teacher:
        """The teacher, built on first use (only rank 0 needs it, and only when the cache lacks crops)."""
        if self._teacher is None:
            self._teacher = build_teacher(self.cfg.teacher, self.cfg.teacher_model, threads=self.cfg.threads)
        return self._teacher

    def cache_name(self) -> str:
        """The teacher's name as recorded in the cache (without building a rapidocr teacher twice)."""
        if not self.teacher_name:
            self.teacher_name = self.teacher().name
        return self.teacher_name

    def cache_path(self, sources: Sequence[tuple[str, str]]) -> Path:
        """``distill.cache``, or ``teacher_cache/<teacher>-<charset>`` beside the first distilled source
        (``sources``: ``(name, path)``)."""
        if self.cfg.cache:
            return Path(self.cfg.cache)
        base = Path(sources[0][1]).resolve().parent if sources else Path(".")
        return base / "teacher_cache" / f"{_slug(self.cache_name())}-{_slug(self.charset.name)}"

    def selected(self, names: Sequence[str], kinds: Sequence[str]) -> list[bool]:
        """Which training sources get teacher targets (``distill.sources``; [] = every lmdb/folder source)."""
        unknown = sorted(set(self.cfg.sources) - set(names))
        if unknown:
            raise ConfigError(f"distill.sources names {', '.join(unknown)}, not a training source; sources: "
                              f"{', '.join(names)}")
        chosen = [(n in self.cfg.sources) if self.cfg.sources else k in ("lmdb", "folder")
                  for n, k in zip(names, kinds, strict=True)]
        for n, k, c in zip(names, kinds, chosen, strict=True):
            if c and k not in ("lmdb", "folder"):
                raise ConfigError(f"distill.sources: {n} is a '{k}' source; its crops are new every time, so a "
                                  f"teacher cache cannot serve it. Distil lmdb or folder sources.")
        if not any(chosen):
            raise ConfigError("distill: no lmdb or folder training source to distil")
        return chosen

    def prepare(self, datasets: Sequence[tuple[str, str, Any]], barrier: Any = None) -> TeacherCache:
        """Fill the cache for ``datasets`` (``(name, path, dataset)``; rank 0) and return it.

        Prints the teacher's cost estimate (crops to read, measured speed, minutes) before the long part.
        """
        path = self.cache_path([(n, p) for n, p, _ in datasets])
        if self.is_main:
            cache = TeacherCache(path, self.cache_name(), self.charset.chars)
            t0 = time.perf_counter()
            self.stats = self._fill(cache, datasets)
            self.stats["fill_seconds"] = time.perf_counter() - t0
            cache.close()
        if barrier is not None:
            barrier()
        return TeacherCache.open_readonly(path, self.charset.chars, self.teacher_name)

    def _fill(self, cache: TeacherCache, datasets: Sequence[tuple[str, str, Any]]) -> dict[str, float]:
        todo: list[tuple[Any, int]] = []
        total = 0
        pending: list[str] = []  # stamps of the sources this fill completes
        for _, path, ds in datasets:
            total += len(ds)
            stamp = source_stamp(path, len(ds))
            if cache.source_complete(stamp):  # read completely by an earlier run: no decoding, no hashing
                continue
            keys = [image_key(ds[i][0]) for i in range(len(ds))]
            missing = set(cache.missing(keys))
            todo.extend((ds, i) for i, k in enumerate(keys) if k in missing)
            pending.append(stamp)
        stats = {"crops": float(total), "read": float(len(todo)), "teacher_seconds": 0.0}
        if todo:
            self._read(cache, todo, total, stats)
        else:
            log.info("teacher cache %s: all %d crops cached", cache.path, total)
        cache.mark_sources_complete(pending)
        return stats

    def _read(self, cache: TeacherCache, todo: Sequence[tuple[Any, int]], total: int,
              stats: dict[str, float]) -> None:
        """Read the ``todo`` crops (``(dataset, index)``) with the teacher into ``cache``; timing into ``stats``."""
        from tqdm import tqdm

        teacher = self.teacher()
        class_map = ClassMap(teacher.classes, self.charset)
        bs = max(1, self.cfg.batch_size)
        bar = tqdm(total=len(todo), unit="crop", desc="teacher", disable=None)
        for start in range(0, len(todo), bs):
            chunk = todo[start:start + bs]
            images = [ds[i][0] for ds, i in chunk]
            t0 = time.perf_counter()
            out = teacher.predict(images)
            stats["teacher_seconds"] += time.perf_counter() - t0
            cache.put_many((image_key(im), TeacherTarget(class_map.fold_text(out.texts[j]), out.min_confidence(j),
                                                         class_map.fold_probs(out.probs[j]).numpy()))
                           for j, im in enumerate(images))
            if start == 0:
                rate = len(chunk) / max(stats["teacher_seconds"], 1e-9)
                msg = (f"teacher {teacher.name}: {len(todo):,} of {total:,} training crops not cached yet; reading "
                       f"them takes ~{len(todo) / rate / 60:.1f} min at {rate:.0f} crops/s (once: cached in "
                       f"{cache.path})")
                log.info(msg)
            bar.update(len(chunk))
        bar.close()
        stats["teacher_crops_per_s"] = len(todo) / max(stats["teacher_seconds"], 1e-9)

    # -- the loss of a batch --------------------------------------------------------------------
    def loss(self, logits: Tensor, targets: Sequence[TeacherTarget | None], ctc: bool,
             sequence_loss: Any = None) -> tuple[Tensor, dict[str, float]]:
        """The weighted distillation loss of a batch and its unweighted parts (for the log).

        Args:
            logits: the student's ``(B, T, C)`` logits.
            targets: per sample the cached target or ``None``.
            ctc: whether ``logits`` are CTC logits over blank + charset (bag / frame KL need them).
            sequence_loss: ``fn(texts, mask) -> loss`` of the model's own objective on the teacher's
                readings (used when ``distill.sequence_weight > 0``).
        """
        cfg = self.cfg
        mask = torch.tensor([t is not None for t in targets], dtype=torch.bool)
        total = logits.new_zeros(())
        parts: dict[str, float] = {"distill_fraction": float(mask.float().mean())}
        if not bool(mask.any()):
            return total, parts
        if (cfg.bag_weight > 0 or cfg.frame_weight > 0) and not ctc:
            raise ConfigError("distill.bag_weight / frame_weight need a CTC decoder (its per-frame distributions); "
                              "use distill.sequence_weight with other decoders")
        c = logits.shape[-1]
        if cfg.bag_weight > 0:
            bags = torch.stack([torch.as_tensor(t.bag()) if t is not None else torch.zeros(c) for t in targets])
            bag = bag_kl(logits, bags, mask, cfg.include_blank, cfg.temperature)
            total = total + cfg.bag_weight * bag
            parts["distill_bag"] = float(bag.detach())
        if cfg.frame_weight > 0:
            frames = torch.zeros(logits.shape)
            for i, t in enumerate(targets):
                if t is not None:
                    if t.frames.shape != tuple(logits.shape[1:]):
                        raise ValueError(f"distill.frame_weight: the teacher's frames {t.frames.shape} differ from "
                                         f"the student's {tuple(logits.shape[1:])}; use distill.bag_weight")
                    frames[i] = torch.as_tensor(t.frames)
            frame = frame_kl(logits, frames, mask, cfg.temperature)
            total = total + cfg.frame_weight * frame
            parts["distill_frame"] = float(frame.detach())
        if cfg.sequence_weight > 0 and sequence_loss is not None:
            texts, seq_mask = sequence_targets([t.text if t is not None else None for t in targets],
                                               [t.min_conf if t is not None else 0.0 for t in targets],
                                               cfg.min_confidence)
            if bool(seq_mask.any()):
                seq = sequence_loss(texts, seq_mask)
                total = total + cfg.sequence_weight * seq
                parts["distill_sequence"] = float(seq.detach())
            parts["distill_sequence_fraction"] = float(seq_mask.float().mean())
        return total, parts
