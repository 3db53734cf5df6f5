"""Build a dataset from one ``data.train`` / ``data.val`` entry (:class:`strkit.config.SourceConfig`).

``SOURCES`` maps a source ``kind`` to a factory called as
``factory(path: str, *, label_filter: LabelFilter | None, channels: int) -> Dataset`` whose items
are ``(uint8 image H×W or H×W×3 RGB, label str)``. Every kind is registered here: ``lmdb``,
``folder`` and ``synth`` (images rendered on the fly by :mod:`strkit.data.synth`); a new kind is one
more registered factory in this module. ``benchmark`` sources (``path`` = a benchmark or group name)
are for evaluation only.

Word geometry (``geometry=True`` in :func:`build_source`, for a source with ``geometry: true``): only
``lmdb`` sources carry it; the ``lmdb`` factory is then called with ``geometry=True`` and its items
are ``(image, label, geometry dict)`` (see :class:`strkit.data.lmdb.reader.LmdbDataset`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.utils.data

from strkit.config import ConfigError, SourceConfig
from strkit.data.benchmarks import BenchmarkLeakError, assert_not_benchmark, expand_benchmarks, load_benchmark
from strkit.data.fingerprints import assert_no_benchmark_images
from strkit.data.folder import FolderDataset
from strkit.data.image_limits import DEFAULT_MAX_PIXELS
from strkit.data.lmdb.discovery import open_lmdb_tree
from strkit.data.lmdb.format import LabelFilter
from strkit.registry import Registry

Dataset = torch.utils.data.Dataset
GUARDED_PURPOSES = ("train", "search", "val")
GEOMETRY_KINDS = ("lmdb",)


SOURCES: Registry[Dataset] = Registry("data source")


@SOURCES.register("lmdb")
def lmdb_source(path: str, *, label_filter: LabelFilter | None, channels: int, geometry: bool = False,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Dataset:
    """One LMDB, or every LMDB below ``path`` (concatenated in sorted path order); with ``geometry``
    every one of them must hold ``geom-%09d`` records, and items carry the parsed geometry. Records whose
    image header announces more than ``max_pixels`` pixels are unusable (``None``: no limit)."""
    return open_lmdb_tree(path, label_filter=label_filter, channels=channels, geometry=geometry,
                          max_pixels=max_pixels)


@SOURCES.register("folder")
def folder_source(path: str, *, label_filter: LabelFilter | None, channels: int,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Dataset:
    """A folder with ``labels.tsv``, or a gt file of ``path<TAB>label`` lines (images of more than
    ``max_pixels`` pixels are unusable; ``None``: no limit)."""
    return FolderDataset(path, label_filter=label_filter, channels=channels, max_pixels=max_pixels)


SOURCE_LENGTH = 10**7
"""Items of a ``synth`` source. Samplers permute a source's indices, so "infinite" is this large but
finite number (ten million distinct images: an epoch is far longer than any CPU run)."""


@SOURCES.register("synth")
def synth_source(path: str, *, label_filter: Any = None, channels: int = 3, **kw: Any) -> Dataset:
    """An on-the-fly :class:`~strkit.data.synth.dataset.SynthDataset`.

    Args:
        path: a preset name (``clean``, ``mjsynth``, ``hard``, ``realistic``) or a synth YAML file.
        label_filter: the model's label filter; when it is a :class:`strkit.charset.LabelFilter`, labels
            are rendered directly in its charset and no longer than its ``max_length``.
        channels: 1 (gray) or 3 (RGB).
        **kw: ignored (other sources' options, e.g. ``max_pixels``: rendered images are small).
    """
    from strkit.data.synth.dataset import SynthDataset

    charset = getattr(label_filter, "charset", None)
    overrides: dict[str, Any] = {}
    max_length = getattr(label_filter, "max_length", None)
    if max_length is not None:
        from strkit.data.synth.config import load_synth_config

        cfg = load_synth_config(path)
        overrides["text.max_len"] = max(1, min(cfg.text.max_len, int(max_length)))
        overrides["text.min_len"] = min(cfg.text.min_len, overrides["text.max_len"])
    return SynthDataset(path, seed=0, length=SOURCE_LENGTH, channels=channels, label_filter=label_filter,
                        overrides=overrides or None, charset=charset)


def check_geometry_source(src: SourceConfig, where: str = "data.train") -> None:
    """Refuse ``geometry: true`` on a source whose kind cannot carry word geometry.

    Raises:
        ConfigError: naming the source, its kind and the fix.
    """
    if src.geometry and src.kind not in GEOMETRY_KINDS:
        raise ConfigError(f"{where}: source '{src.name or src.path}' of kind '{src.kind}' has 'geometry: true', "
                          f"but word geometry is only read from {'/'.join(GEOMETRY_KINDS)} sources (an LMDB "
                          f"written by tools/synth.py --geometry). Remove 'geometry: true' from this source, "
                          f"or convert the data to such an LMDB.")


def build_source(src: SourceConfig, label_filter: LabelFilter | None, channels: int,
                 benchmark_root: str | None, purpose: str = "train", geometry: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Dataset:
    """The dataset of one configured source.

    Args:
        src: the source (``path``, ``kind``; ``ratio`` and ``name`` are used by the caller).
        label_filter: ``raw label -> cleaned label or None`` (``None`` drops the sample).
        channels: 1 (gray) or 3 (RGB).
        benchmark_root: the benchmark folder (``data.benchmark_root``): nothing in it but ``*_train``
            splits may be a training, search or validation source, and no such source may hold an
            image of its test sets (checked by content, :mod:`strkit.data.fingerprints`).
        purpose: ``train``, ``search`` or ``val`` (benchmark sets refused), or ``eval``.
        geometry: read the source's word geometry (items ``(image, label, geometry)``); the source
            must be an ``lmdb`` with ``geom-%09d`` records.
        max_pixels: images of more pixels (from their header) are unusable records (``data.max_pixels``;
            ``None`` or 0: no limit of strkit's own). Benchmark sets keep the default.

    Raises:
        BenchmarkLeakError: a benchmark set given for training, search or validation, by name, place or
            content.
        RegistryError: unknown ``kind``.
        ConfigError: ``geometry`` for a source kind that cannot carry it.
        LmdbError: ``geometry`` for an LMDB written without it.
    """
    if geometry:
        check_geometry_source(dataclasses.replace(src, geometry=True))
    if src.kind == "benchmark":
        if purpose in GUARDED_PURPOSES:
            raise BenchmarkLeakError(f"source '{src.name or src.path}' has kind 'benchmark': benchmarks are "
                                     f"for evaluation only and cannot be {purpose} data. Remove it from "
                                     f"the {purpose} sources (evaluate with tools/eval.py).")
        if benchmark_root is None:
            raise ValueError(f"source '{src.path}' has kind 'benchmark' but no benchmark root is set "
                             f"(data.benchmark_root)")
        sets = [load_benchmark(name, benchmark_root, channels=channels, label_filter=label_filter)
                for name in expand_benchmarks([src.path])]
        return sets[0] if len(sets) == 1 else torch.utils.data.ConcatDataset(sets)
    factory = SOURCES.get(src.kind)
    if not src.path:
        raise ValueError(f"a data source of kind '{src.kind}' needs a path")
    if purpose in GUARDED_PURPOSES:
        assert_not_benchmark(src.path, benchmark_root)
    options: dict[str, Any] = {"geometry": True} if geometry else {}
    dataset = factory(src.path, label_filter=label_filter, channels=channels, max_pixels=max_pixels or None,
                      **options)
    if purpose in GUARDED_PURPOSES:
        assert_no_benchmark_images(dataset, src.name or src.path, benchmark_root, purpose)
    return dataset
