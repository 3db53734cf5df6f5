"""Mixing several training sources with exact per-batch ratios, endless, seeded and resumable.

Every batch of a :class:`MixedBatchSampler` holds exactly ``counts[i]`` samples of source ``i``
(:func:`batch_counts` turns the ratios into integers that sum to the batch size). The sampler is a pure
function of ``(seed, step, rank)``:

* source ``i`` has its own permutation for each of its epochs, drawn from ``(seed, i, epoch)``, the
  same on every rank;
* rank ``r`` of ``world_size`` takes the ``r``-th of ``world_size`` equal contiguous shards of that
  permutation (the ragged tail of ``len % world_size`` samples is dropped for that epoch only; the
  next epoch's permutation is different, so no sample is left out for good);
* at step ``s`` the rank has consumed ``s * counts[i]`` samples of source ``i``, so the epoch and the
  offset into the shard follow by arithmetic. Resuming at ``start_step`` therefore reproduces the
  batches of an uninterrupted run exactly, with nothing replayed and nothing skipped.

A source's ratio may change during training (a curriculum: e.g. clean synthetic text first, the hard
real crops later): ``schedules[i]`` lists ``(from_step, ratio)`` pairs. The batches then fall into
phases of constant counts (:func:`ratio_phases`), and the number of samples source ``i`` consumed
before step ``s`` is the sum over the phases before ``s`` of ``steps × counts``: still arithmetic, still
exactly resumable.

:func:`build_mixed_loader` wraps sources + transform + sampler into a ``DataLoader``;
:func:`build_eval_loader` is the plain in-order loader for validation and evaluation.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from strkit.data.transforms import ImageTransform, SeededIndex, TransformedDataset, seed_worker

logger = logging.getLogger("strkit")


def batch_counts(ratios: Sequence[float], batch_size: int) -> list[int]:
    """Split ``batch_size`` among sources in proportion to ``ratios`` (largest-remainder rounding).

    The counts sum exactly to ``batch_size``. A source with a ratio > 0 gets at least one sample when
    the batch has room for one of each such source (the samples are taken from the sources with the
    largest surplus over their exact share). Ratios need not sum to 1.

    Raises:
        ValueError: no ratio, a negative or non-finite ratio, all ratios zero, or ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(ratios) == 0:
        raise ValueError("no ratios given: at least one training source is needed")
    values = [float(r) for r in ratios]
    for i, r in enumerate(values):
        if not math.isfinite(r) or r < 0:
            raise ValueError(f"ratio {ratios[i]!r} of source {i} must be a finite number >= 0")
    total = sum(values)
    if total <= 0:
        raise ValueError(f"all ratios are zero ({list(ratios)}): give at least one source a ratio > 0")
    quotas = [r / total * batch_size for r in values]
    counts = [math.floor(q) for q in quotas]
    left = batch_size - sum(counts)
    order = sorted(range(len(values)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    positive = [i for i, r in enumerate(values) if r > 0]
    if len(positive) <= batch_size:
        for i in positive:
            if counts[i] == 0:
                donor = max((j for j in range(len(counts)) if counts[j] > 1),
                            key=lambda j: (counts[j] - quotas[j], -j))
                counts[donor] -= 1
                counts[i] = 1
    return counts


RatioSchedule = Sequence[tuple[int, float]]


def ratio_phases(ratios: Sequence[float], schedules: Sequence[RatioSchedule] | None = None
                 ) -> list[tuple[int, list[float]]]:
    """Piecewise-constant source ratios: ``[(start_step, ratios of every source), ...]``, sorted.

    Source ``i`` has ratio ``ratios[i]`` until the first step of ``schedules[i]`` (a list of
    ``(from_step, ratio)`` pairs), then each pair's ratio from its step on. Without schedules there is
    one phase starting at step 0.

    Raises:
        ValueError: a schedule of the wrong length, a negative or repeated step, or a bad ratio.
    """
    base = [float(r) for r in ratios]
    schedules = list(schedules) if schedules is not None else [() for _ in base]
    if len(schedules) != len(base):
        raise ValueError(f"{len(base)} sources but {len(schedules)} ratio schedules")
    parsed: list[list[tuple[int, float]]] = []
    for i, sched in enumerate(schedules):
        entries = []
        for entry in sched:
            try:
                step, ratio = int(entry[0]), float(entry[1])
            except (TypeError, ValueError, IndexError):
                raise ValueError(f"ratio schedule of source {i}: expected [from_step, ratio] pairs, "
                                 f"got {entry!r}") from None
            if step < 0 or not math.isfinite(ratio) or ratio < 0:
                raise ValueError(f"ratio schedule of source {i}: step must be >= 0 and ratio a finite "
                                 f"number >= 0, got {entry!r}")
            entries.append((step, ratio))
        steps = [e[0] for e in entries]
        if len(set(steps)) != len(steps):
            raise ValueError(f"ratio schedule of source {i} names a step twice: {steps}")
        parsed.append(sorted(entries))
    starts = sorted({0, *(step for sched in parsed for step, _ in sched)})
    phases = []
    for start in starts:
        current = []
        for i, sched in enumerate(parsed):
            ratio = base[i]
            for step, value in sched:
                if step <= start:
                    ratio = value
            current.append(ratio)
        if not phases or phases[-1][1] != current:
            phases.append((start, current))
    return phases


_AUGMENT_KEY = 0x5EED  # keeps the augmentation seeds apart from the permutations' (seed, source, epoch)


class MixedBatchSampler(Sampler[list[int]]):
    """Endless batches of indices into ``ConcatDataset(sources)`` with an exact mix per batch.

    Args:
        source_lengths: number of samples of each source, in ``ConcatDataset`` order.
        ratios: relative share of each source in a batch (see :func:`batch_counts`).
        batch_size: samples per batch (per rank).
        seed: seed of all permutations; the same on every rank.
        rank: this process's rank in ``torch.distributed`` (0 when not distributed).
        world_size: number of ranks; each rank reads a disjoint shard of every source.
        start_step: the step of the first batch :meth:`__iter__` yields (resume).
        shuffle: permute each source per epoch; ``False`` reads shards in order.
        names: source names, for :meth:`describe` and the log (default ``source0``, ``source1``...).
        schedules: per source, ``(from_step, ratio)`` pairs that change its ratio during training
            (see :func:`ratio_phases`); ``None`` = constant ratios.
        seed_samples: yield :class:`~strkit.data.transforms.SeededIndex` items (index, augmentation seed
            from :meth:`sample_seeds`) instead of plain indices, so that augmentation is a pure function
            of ``(seed, rank, step)`` too.

    Raises:
        ValueError: a source with a ratio > 0 gets no sample per batch, or has fewer samples than
            ``world_size``; all ratios zero in some phase; bad rank / world size.
    """

    def __init__(self, source_lengths: Sequence[int], ratios: Sequence[float], batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, start_step: int = 0,
                 shuffle: bool = True, names: Sequence[str] | None = None,
                 schedules: Sequence[RatioSchedule] | None = None, seed_samples: bool = False) -> None:
        if len(source_lengths) != len(ratios):
            raise ValueError(f"{len(source_lengths)} sources but {len(ratios)} ratios")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        super().__init__()
        self.names = list(names) if names is not None else [f"source{i}" for i in range(len(ratios))]
        if len(self.names) != len(ratios):
            raise ValueError(f"{len(self.names)} names for {len(ratios)} sources")
        self.source_lengths = [int(n) for n in source_lengths]
        self.ratios = [float(r) for r in ratios]
        self.batch_size = batch_size
        # (start step, counts per source) of each phase of constant ratios; one phase without schedules
        self.phases: list[tuple[int, list[int]]] = []
        for start, phase_ratios in ratio_phases(self.ratios, schedules):
            when = f" from step {start}" if start else ""
            try:
                counts = batch_counts(phase_ratios, batch_size)
            except ValueError as exc:
                raise ValueError(f"source ratios{when}: {exc}") from None
            for name, n, r, c in zip(self.names, self.source_lengths, phase_ratios, counts, strict=True):
                if r > 0 and c == 0:
                    raise ValueError(f"source '{name}' (ratio {r}{when}) gets no sample in a batch of "
                                     f"{batch_size} shared by {len(ratios)} sources: raise the batch size or "
                                     "drop the source")
                if c > 0 and n < world_size:
                    raise ValueError(f"source '{name}' has {n} samples, fewer than the {world_size} ranks "
                                     "that must each read a disjoint share of it")
            self.phases.append((start, counts))
        self.counts = self.phases[0][1]  # the counts of the first phase (the only one without schedules)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.start_step = int(start_step)
        self.shuffle = shuffle
        self.seed_samples = seed_samples
        self.offsets = [0, *np.cumsum(self.source_lengths).tolist()][:-1]
        self.shard_lengths = [n // world_size for n in self.source_lengths]
        self._produced = self.start_step
        self._shards: dict[int, tuple[int, np.ndarray]] = {}  # source -> (epoch, this rank's shard)

    # -- the pure function --------------------------------------------------------------------
    def _shard(self, source: int, epoch: int) -> np.ndarray:
        """Global indices of this rank's shard of ``source`` in ``epoch`` (cached: one epoch per source)."""
        cached = self._shards.get(source)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        n, length = self.source_lengths[source], self.shard_lengths[source]
        dtype = np.int32 if self.offsets[source] + n < 2**31 else np.int64
        if self.shuffle:
            rng = np.random.default_rng([self.seed, source, epoch])
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        start = self.rank * length
        shard = (order[start:start + length] + self.offsets[source]).astype(dtype)
        self._shards[source] = (epoch, shard)
        return shard

    def counts_at(self, step: int) -> list[int]:
        """Samples per source in batch ``step`` (the counts of the phase holding ``step``)."""
        current = self.phases[0][1]
        for start, counts in self.phases:
            if start > step:
                break
            current = counts
        return current

    def consumed(self, source: int, step: int) -> int:
        """Samples of ``source`` this rank read in batches ``0 .. step - 1`` (sum over the phases)."""
        total = 0
        for k, (start, counts) in enumerate(self.phases):
            if start >= step:
                break
            end = self.phases[k + 1][0] if k + 1 < len(self.phases) else step
            total += (min(step, end) - start) * counts[source]
        return total

    def batch(self, step: int) -> list[int]:
        """Global indices of batch ``step`` on this rank: ``counts[0]`` of source 0, then source 1..."""
        indices: list[int] = []
        for source, count in enumerate(self.counts_at(step)):
            if count == 0:
                continue
            length = self.shard_lengths[source]
            position = self.consumed(source, step)
            while count > 0:
                epoch, offset = divmod(position, length)
                take = min(count, length - offset)
                indices.extend(self._shard(source, epoch)[offset:offset + take].tolist())
                position += take
                count -= take
        return indices

    def sample_seeds(self, step: int) -> list[int]:
        """Augmentation seeds of the ``batch_size`` samples of batch ``step`` on this rank (a pure function
        of ``(seed, rank, step)``, independent of the sample indices)."""
        states = np.random.SeedSequence([_AUGMENT_KEY, self.seed, self.rank, step]).generate_state(
            self.batch_size, np.uint32)
        return [int(s) for s in states]

    def describe(self, step: int) -> dict[str, Any]:
        """What batch ``step`` holds per source: ``{"step", "batch_size", "sources": [{"name",
        "count", "epoch", "offset", "samples_seen"}...]}`` (epoch/offset within this rank's shard)."""
        sources = []
        for source, count in enumerate(self.counts_at(step)):
            length = self.shard_lengths[source]
            position = self.consumed(source, step)
            epoch, offset = divmod(position, length) if length else (0, 0)
            sources.append({"name": self.names[source], "count": count, "epoch": epoch,
                            "offset": offset, "samples_seen": position})
        return {"step": step, "batch_size": self.batch_size, "sources": sources}

    def composition(self) -> str:
        """One line for the log, e.g. ``batch of 32: MJ 16, ST 16``; with a ratio schedule one part per
        phase, e.g. ``batch of 32: clean 32, real 0; from step 1500: clean 8, real 24``."""
        parts = []
        for start, counts in self.phases:
            mix = ", ".join(f"{name} {count}" for name, count in zip(self.names, counts, strict=True))
            parts.append(f"from step {start}: {mix}" if start else mix)
        return f"batch of {self.batch_size}: " + "; ".join(parts)

    # -- Sampler protocol -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]] | Iterator[list[SeededIndex]]:
        step = self.start_step
        while True:
            batch: list[Any] = self.batch(step)
            if self.seed_samples:
                batch = [SeededIndex(i, s) for i, s in zip(batch, self.sample_seeds(step), strict=True)]
            step += 1
            self._produced = step
            yield batch

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """The position to resume from, plus what it depends on.

        Args:
            step: the number of batches the model actually consumed. Pass it: the default (batches
                produced so far) runs ahead of training when a DataLoader prefetches.
        """
        return {"step": self._produced if step is None else int(step), "seed": self.seed,
                "counts": list(self.counts), "source_lengths": list(self.source_lengths),
                "world_size": self.world_size,
                "phases": [[start, list(counts)] for start, counts in self.phases]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["step"]``; warns (log) if the seed, mix or sources changed since."""
        changed = [k for k in ("seed", "counts", "source_lengths", "world_size", "phases")
                   if k in state and state[k] != self.state_dict()[k]]
        if changed:
            logger.warning("resuming the mixed sampler with a different %s than the saved run: the "
                           "batches will not continue the saved sequence exactly", ", ".join(changed))
        self.start_step = int(state["step"])
        self._produced = self.start_step


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------
class SeededConcatDataset(ConcatDataset):
    """The sources of a mixed loader as one dataset; a sample's seed (:meth:`seed_sample`, called by
    :class:`~strkit.data.transforms.TransformedDataset` before each item) is handed to the source that loads
    the item when that source draws randoms of its own (e.g. crop concatenation)."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        super().__init__(datasets)
        self._sample_seed: int | None = None

    def seed_sample(self, seed: int) -> None:
        """The seed of the next item's sample."""
        self._sample_seed = int(seed)

    def __getitem__(self, idx: int) -> Any:
        if self._sample_seed is not None:
            source = bisect.bisect_right(self.cumulative_sizes, idx if idx >= 0 else len(self) + idx)
            seed_source = getattr(self.datasets[source], "seed_sample", None)
            if seed_source is not None:
                seed_source(self._sample_seed)
            self._sample_seed = None
        return super().__getitem__(idx)


def _loader_generator(*keys: int) -> torch.Generator:
    """A torch generator seeded from integer keys (for DataLoader worker seeds)."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def limit_opencv_threads() -> None:
    """Run OpenCV single-threaded in this process (done when a loader works in the main process).

    OpenCV's thread pool gains nothing on word crops, and its spinning threads compete with torch's
    intra-op threads on a small machine (see the data-loading section of ``docs/benchmarks.md``).
    """
    cv2.setNumThreads(1)


def build_mixed_loader(datasets: Sequence[Dataset], ratios: Sequence[float], batch_size: int,
                       transform: ImageTransform, num_workers: int = 2, seed: int = 0, rank: int = 0,
                       world_size: int = 1, start_step: int = 0, names: Sequence[str] | None = None,
                       schedules: Sequence[RatioSchedule] | None = None, teacher: bool = False) -> DataLoader:
    """An endless training ``DataLoader`` of ``(B×C×H×W float32 in [-1, 1], labels)`` batches, or of
    ``(images, labels, geometries)`` batches when ``transform`` was built with ``geometry=True`` (the
    word geometry of each sample in the model input frame, ``None`` for samples without; see
    :meth:`ImageTransform.prepare_geometry`), or ``(images, labels, geometries, teacher targets)`` with
    ``teacher`` (sources wrapped in :class:`~strkit.data.teacher_cache.TeacherTargets`; ``None`` for
    samples without a target).

    ``ConcatDataset(datasets)`` -> :class:`TransformedDataset` (per-sample ``uint8`` work) ->
    :class:`MixedBatchSampler` -> :meth:`ImageTransform.collate` (per-batch normalisation). Workers are
    persistent and use one OpenCV thread each (with 0 workers OpenCV is made single-threaded in this
    process, see :func:`limit_opencv_threads`). The sampler gives every sample an augmentation seed
    drawn from ``(seed, rank, step)`` (:meth:`MixedBatchSampler.sample_seeds`), so both the sample order
    and the augmentation are exactly resumable and independent of the number of workers.
    ``loader.batch_sampler`` is the sampler.

    Args:
        datasets: the sources, each yielding ``(image ndarray, label)`` or, with geometry,
            ``(image, label, geometry dict)``.
        ratios: per-source share of each batch.
        schedules: per-source ``(from_step, ratio)`` changes of that share (see :func:`ratio_phases`).
        names: source names for the log (default: each dataset's ``name`` attribute, else
            ``source<i>``).
    """
    if names is None:
        names = [str(getattr(ds, "name", "") or f"source{i}") for i, ds in enumerate(datasets)]
    sampler = MixedBatchSampler([len(ds) for ds in datasets], ratios, batch_size,  # type: ignore[arg-type]
                                seed=seed, rank=rank, world_size=world_size, start_step=start_step,
                                shuffle=True, names=names, schedules=schedules, seed_samples=True)
    logger.info("%s (ratios %s, %d worker(s), rank %d/%d, from step %d)", sampler.composition(),
                ", ".join(f"{r:g}" for r in sampler.ratios), num_workers, rank, world_size, start_step)
    dataset = TransformedDataset(SeededConcatDataset(datasets), transform, teacher=teacher)
    generator = _loader_generator(seed, rank, start_step)
    # Single-threaded OpenCV in the parent *before* workers fork: a forked child that calls
    # cv2.setNumThreads while it inherited a live OpenCV thread pool can hang.
    limit_opencv_threads()
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      collate_fn=transform.collate, worker_init_fn=seed_worker,
                      persistent_workers=num_workers > 0, generator=generator)


def build_eval_loader(dataset: Dataset, transform: ImageTransform, batch_size: int = 64,
                      num_workers: int = 0) -> DataLoader:
    """An in-order loader of ``(B×C×H×W float32, labels)`` batches for validation and evaluation:
    no shuffling, the last partial batch kept. Use a transform without augmentation."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    limit_opencv_threads()  # before any worker forks (see build_mixed_loader)
    return DataLoader(TransformedDataset(dataset, transform), batch_size=batch_size, shuffle=False,
                      drop_last=False, num_workers=num_workers, collate_fn=transform.collate,
                      worker_init_fn=seed_worker)
