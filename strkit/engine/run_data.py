"""Build the training and validation loaders of a run from its config.

Joins :mod:`strkit.data` (sources, transforms, mixing) with the charset of the model: labels are
normalised and filtered by the model's charset and maximum length, and every source is checked not
to be a benchmark set.

Word geometry (``build_run_data(..., geometry=True)``, what the trainer asks for when
``model.geometry_loss > 0``): training sources marked ``geometry: true`` (LMDBs written by
``tools/synth.py --geometry``) are read with their ``geom-%09d`` records, the training transform moves
the geometry with the image, and training batches are ``(images, labels, geometries)`` (``None`` for
samples of the other sources). Validation batches stay ``(images, labels)``. Without it nothing
changes, whatever the sources say.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from strkit.charset import Charset, LabelFilter
from strkit.config import Config, ConfigError, SourceConfig
from strkit.data.concat_augment import ConcatAugment
from strkit.data.lmdb.reader import RecordDataset, record_datasets
from strkit.data.mixing import build_eval_loader, build_mixed_loader
from strkit.data.sources import build_source, check_geometry_source
from strkit.data.teacher_cache import TeacherTargets
from strkit.data.transforms import ImageTransform

from .distill import Distiller
from .distributed import DistInfo, barrier

log = logging.getLogger("strkit")


@dataclass
class RunData:
    """The loaders of a run and what went into them."""

    train: DataLoader
    val: DataLoader | None
    train_names: list[str]
    train_sizes: list[int]
    val_size: int
    label_filter: LabelFilter
    notes: list[str] = field(default_factory=list)
    # (source name, the record datasets it reads) of every training and validation source, for
    # counting the corrupt records skipped (across loader workers, see RecordDataset.share_corrupt_counts)
    record_sources: list[tuple[str, list[RecordDataset]]] = field(default_factory=list)
    # further validation sets scored beside ``val`` (``val_<name>_*`` metrics; best.pt is chosen on ``val``)
    extra_val: dict[str, DataLoader] = field(default_factory=dict)

    def corrupt_counts(self) -> dict[str, int]:
        """Unusable records skipped so far, per source name (validation sources as ``val:<name>``)."""
        return {name: sum(ds.num_corrupt for ds in sets) for name, sets in self.record_sources}

    def corrupt_report(self) -> str:
        """One line for the end-of-run summary, e.g. ``corrupt records skipped: MJ 549, val:IC13 0``."""
        counts = self.corrupt_counts()
        if not counts:
            return "corrupt records skipped: none (no LMDB or folder source)"
        return "corrupt records skipped: " + ", ".join(f"{name} {n}" for name, n in counts.items())


def split_holdout(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Deterministically hold out ``fraction`` of ``dataset`` (a seeded permutation) for validation."""
    n = len(dataset)
    n_val = int(round(n * fraction))
    if n_val <= 0 or n_val >= n:
        raise ValueError(f"data.val_fraction={fraction} leaves no training or no validation samples "
                         f"from a source of {n}")
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    return Subset(dataset, np.sort(perm[n_val:])), Subset(dataset, np.sort(perm[:n_val]))


def take_subset(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded ``fraction`` of ``dataset`` (at least one sample), in its original order."""
    n = len(dataset)
    keep = max(1, int(round(n * fraction)))
    perm = np.random.Generator(np.random.PCG64(seed + 7919)).permutation(n)
    return Subset(dataset, np.sort(perm[:keep]))


def eval_transform(cfg: Config) -> ImageTransform:
    """The deterministic resize/normalise transform used at validation, evaluation and inference."""
    d = cfg.data
    return ImageTransform(d.img_h, d.img_w, channels=d.channels, keep_ratio=d.keep_ratio, augment="none")


def check_geometry_sources(cfg: Config, geometry: bool) -> None:
    """The ``geometry`` flags of ``data.train`` are usable, and, when the run uses word geometry
    (``geometry``), at least one training source provides it.

    Raises:
        ConfigError: ``geometry: true`` on a source that is not an LMDB, or no source with geometry
            while the run needs it; the message names the keys and the fix.
    """
    for i, src in enumerate(cfg.data.train):
        check_geometry_source(src, where=f"data.train[{i}].geometry")
    if geometry and not any(src.geometry for src in cfg.data.train):
        raise ConfigError(f"model.geometry_loss={cfg.model.geometry_loss:g} needs word geometry, but no "
                          f"training source has 'geometry: true'. Write a synthetic LMDB with geometry "
                          f"(tools/synth.py ... --geometry), add it to data.train with 'geometry: true', "
                          f"or set model.geometry_loss=0.")


def build_run_data(cfg: Config, charset: Charset, dist: DistInfo, start_step: int = 0,
                   geometry: bool = False, distiller: Distiller | None = None) -> RunData:
    """Training loader (mixed, endless, resumable at ``start_step``) and validation loader.

    Args:
        geometry: feed word geometry to training (see the module docstring): training batches become
            ``(images, labels, geometries)``. The trainer sets it when ``model.geometry_loss > 0``.
        distiller: with distillation, the teacher cache is filled for the distilled sources (their
            training part, before crop concatenation) and training batches become
            ``(images, labels, geometries, teacher targets)``.
    """
    d = cfg.data
    if not 0.0 < d.train_subset <= 1.0:
        raise ConfigError(f"data.train_subset={d.train_subset:g}: the fraction of each training source to train "
                          f"on must be in (0, 1]")
    if not d.train:
        raise ValueError("data.train is empty: list at least one source, e.g. "
                         "data.train=[{path: my_lmdb, kind: lmdb}]")
    check_geometry_sources(cfg, geometry)
    sources = with_replay(d.train, d.replay.preset, d.replay.ratio)
    label_filter = LabelFilter(charset, cfg.model.max_length)
    train_sets: list[Dataset] = []
    val_sets: list[Dataset] = []
    names: list[str] = []
    distilled = (distiller.selected([s.name or f"{s.kind}:{s.path}" for s in sources], [s.kind for s in sources])
                 if distiller is not None else [False] * len(sources))
    to_fill: list[tuple[str, str, Dataset]] = []
    record_sources: list[tuple[str, list[RecordDataset]]] = []
    for i, src in enumerate(sources):
        ds = build_source(src, label_filter=label_filter, channels=d.channels, benchmark_root=d.benchmark_root,
                          purpose="train", geometry=geometry and src.geometry, max_pixels=d.max_pixels)
        name = src.name or f"{src.kind}:{src.path}"
        record_sources.append((name, _shared_counts(ds)))
        if len(ds) == 0:
            raise ValueError(f"training source {name} has no usable sample after filtering "
                             f"({label_filter.report()})")
        fraction = d.val_fraction if src.val_fraction is None else src.val_fraction
        if fraction > 0 and not d.val and src.kind != "synth":
            ds, held = split_holdout(ds, fraction, cfg.train.seed + i)
            val_sets.append(held)
        if d.train_subset < 1.0 and src.kind != "synth":
            ds = take_subset(ds, d.train_subset, cfg.train.seed + i)
        if distilled[i]:
            to_fill.append((name, src.path, ds))
        if src.concat_p > 0:
            aspect = src.concat_max_aspect or 1.5 * d.img_w / d.img_h
            ds = ConcatAugment(ds, src.concat_p, aspect, cfg.model.max_length, seed=cfg.train.seed + i)
        train_sets.append(ds)
        names.append(name)
    for src in d.val:
        val_sets.append(build_source(src, label_filter=label_filter, channels=d.channels,
                                     benchmark_root=d.benchmark_root, purpose="val", max_pixels=d.max_pixels))
        record_sources.append((f"val:{src.name or f'{src.kind}:{src.path}'}", _shared_counts(val_sets[-1])))
    label_filter.warn_if_needed()
    if distiller is not None:
        cache = distiller.prepare(to_fill, barrier=lambda: barrier(dist))
        train_sets = [TeacherTargets(ds, cache) if on else ds for ds, on in zip(train_sets, distilled, strict=True)]

    train_tf = ImageTransform(d.img_h, d.img_w, channels=d.channels, keep_ratio=d.keep_ratio,
                              augment=d.augment, geometry=geometry, augment_options=d.augment_options)
    schedules = [s.ratio_schedule for s in sources]
    try:
        train_loader = build_mixed_loader(
            train_sets, [s.ratio for s in sources], batch_size=cfg.train.batch_size, transform=train_tf,
            num_workers=d.workers, seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size,
            start_step=start_step, names=names, schedules=schedules, teacher=distiller is not None)
    except ValueError as exc:
        raise ConfigError(f"data.train ratios / ratio_schedule: {exc}") from None
    val_loader = None
    val_size = 0
    if val_sets:
        val_ds = torch.utils.data.ConcatDataset(val_sets) if len(val_sets) > 1 else val_sets[0]
        val_size = len(val_ds)
        val_loader = build_eval_loader(val_ds, eval_transform(cfg), batch_size=max(cfg.train.batch_size, 64),
                                       num_workers=min(d.workers, 1))
    extra_val: dict[str, DataLoader] = {}
    if d.replay.val_samples > 0:
        from strkit.data.synth.dataset import SynthDataset

        replay_val = SynthDataset(d.replay.preset, seed=d.replay.seed, length=d.replay.val_samples,
                                  channels=d.channels, label_filter=label_filter, charset=charset)
        extra_val["replay"] = build_eval_loader(replay_val, eval_transform(cfg),
                                                batch_size=max(cfg.train.batch_size, 64), num_workers=0)
    return RunData(train=train_loader, val=val_loader, train_names=names, extra_val=extra_val,
                   train_sizes=[len(s) for s in train_sets], val_size=val_size, label_filter=label_filter,
                   record_sources=[(n, sets) for n, sets in record_sources if sets])


def with_replay(sources: list[SourceConfig], preset: str, ratio: float) -> list[SourceConfig]:
    """``sources`` plus an on-the-fly synthetic source ``replay`` taking ``ratio`` of every batch; the other
    sources' ratios (and ratio schedules) are scaled to share the rest in their own proportions."""
    if ratio <= 0:
        return list(sources)
    if ratio >= 1:
        raise ConfigError(f"data.replay.ratio is the replayed share of each batch and must be below 1, got {ratio}")
    total = sum(s.ratio for s in sources)
    if total <= 0:
        raise ConfigError("data.replay needs training sources with a positive ratio to share the batches with")
    scale = (1.0 - ratio) / total
    scaled = [dataclasses.replace(s, ratio=s.ratio * scale,
                                  ratio_schedule=[[step, r * scale] for step, r in s.ratio_schedule])
              for s in sources]
    return [*scaled, SourceConfig(path=preset, kind="synth", ratio=ratio, name="replay", val_fraction=0.0)]


def _shared_counts(dataset: Dataset) -> list[RecordDataset]:
    """The record datasets of ``dataset``, made to count corrupt records across loader workers."""
    found = record_datasets(dataset)
    for ds in found:
        ds.share_corrupt_counts()
    return found
