"""The frozen registry of STR evaluation benchmarks: name -> expected record count.

A benchmark is found under a *benchmark root* in any of these layouts (folder names are matched
case-insensitively, and the common aliases map to our names, e.g. ``IIIT5k_3000`` and ``IIIT5k``
are ``IIIT5K_3000``, ``SVT`` is ``SVT_647``, ``CUTE80`` is ``CUTE80_288``)::

    ROOT/IIIT5K_3000/labels.tsv                            folder dataset (shared/benchmarks)
    ROOT/IIIT5K_3000/data.mdb                              our LMDB (tools/create_lmdb.py)
    ROOT/evaluation/IIIT5k_3000/data.mdb                   four-stage benchmark (data_lmdb_release/)
    ROOT/data_lmdb_release/evaluation/IIIT5k_3000/data.mdb
    ROOT/test/IIIT5k/data.mdb                              PARSeq (data/)
    ROOT/data/test/IIIT5k/data.mdb

Loading one checks its raw record count against the registry. A benchmark can never be a training,
search or validation source: :func:`assert_not_benchmark` refuses

* a folder whose name is a benchmark name or alias (any case), as in the ``evaluation/`` and
  ``test/`` layouts. A bare alias without a count (``IIIT5k``, ``SVT``, ``IC13`` ...) inside a folder
  named ``train``, ``training``, ``val`` or ``validation`` is the *training* split of that dataset
  in the PARSeq layout (``data/val/IIIT5k`` holds the 2000 IIIT5K training images) and is allowed,
  unless its record count equals a benchmark count of that dataset;
* any path inside the benchmark root that is not in a ``*_train`` folder (``IIIT5K_train``,
  ``SVT_train``, ``IC15_train`` are training data), the root itself, or a folder containing it;
* a folder of LMDBs holding any of the above.

That guard goes by names and places; :mod:`strkit.data.fingerprints` adds the guard by content (a copy
of test crops under any name), which :func:`strkit.data.sources.build_source` applies to every training,
search and validation source.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import torch.utils.data

from strkit.config import relative_note
from strkit.data.folder import LABELS_FILE, FolderDataset, read_gt_file
from strkit.data.lmdb.format import LabelFilter
from strkit.data.lmdb.reader import LmdbDataset, lmdb_num_samples
from strkit.data.walk import walk_once

BENCHMARKS: Mapping[str, int] = MappingProxyType({
    "IIIT5K_3000": 3000,
    "SVT_647": 647,
    "IC13_857": 857,
    "IC13_1015": 1015,
    "IC13_1095": 1095,
    "IC15_1811": 1811,
    "IC15_2077": 2077,
    "SVTP_645": 645,
    "CUTE80_288": 288,
})

GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    # The two sets of six that papers report (regular: IIIT5K, SVT, IC13; irregular: IC15, SVTP, CUTE80).
    "benchmark_7248": ("IIIT5K_3000", "SVT_647", "IC13_857", "IC15_1811", "SVTP_645", "CUTE80_288"),
    "benchmark_7672": ("IIIT5K_3000", "SVT_647", "IC13_1015", "IC15_2077", "SVTP_645", "CUTE80_288"),
    # The sets present in shared/benchmarks (SVTP, CUTE80 and IC15_1811 are not).
    "available": ("IIIT5K_3000", "SVT_647", "IC13_857", "IC13_1015", "IC13_1095", "IC15_2077"),
})

# Folder names (lower case) under which other codebases store each benchmark.
_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "IIIT5K_3000": ("iiit5k_3000", "iiit5k", "iiit5k_test", "iiit"),
    "SVT_647": ("svt_647", "svt", "svt_test"),
    "IC13_857": ("ic13_857", "icdar2013_857"),
    "IC13_1015": ("ic13_1015", "icdar2013_1015"),
    "IC13_1095": ("ic13_1095", "icdar2013_1095"),
    "IC15_1811": ("ic15_1811", "icdar2015_1811"),
    "IC15_2077": ("ic15_2077", "icdar2015_2077"),
    "SVTP_645": ("svtp_645", "svtp", "svt_p", "svt-p", "svtp_test"),
    "CUTE80_288": ("cute80_288", "cute80", "cute", "cute_80", "cute80_test"),
})

# Test-set folder names that name no single registry entry but must never be trained on.
_AMBIGUOUS: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "ic13": (857, 1015, 1095), "icdar2013": (857, 1015, 1095), "ic13_test": (857, 1015, 1095),
    "ic15": (1811, 2077), "icdar2015": (1811, 2077), "ic15_test": (1811, 2077),
    "ic03": (860, 867), "icdar2003": (860, 867), "ic03_860": (860,), "ic03_867": (867,),
})

# Where the benchmark folders sit below a root, in search order.
_LAYOUTS: tuple[tuple[str, ...], ...] = (
    (), ("evaluation",), ("test",), ("data_lmdb_release", "evaluation"), ("data", "test"),
)
_TRAIN_PARENTS = frozenset({"train", "training", "val", "validation"})
# Dataset names without the set size: inside a _TRAIN_PARENTS folder they may be a training split.
_BARE_ALIASES = frozenset({"iiit5k", "iiit", "svt", "svtp", "svt_p", "svt-p", "cute80", "cute", "cute_80",
                           "ic13", "ic15", "ic03", "icdar2013", "icdar2015", "icdar2003"})


class BenchmarkError(ValueError):
    """Base of the benchmark errors."""


class BenchmarkNotFoundError(BenchmarkError, FileNotFoundError):
    """A benchmark is not under the given root (or its name is unknown)."""


class BenchmarkCountError(BenchmarkError):
    """A benchmark's record count differs from the registry."""


class BenchmarkLeakError(BenchmarkError):
    """A benchmark set was given as a training, search or validation source."""


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------
def canonical_name(name: str) -> str | None:
    """Our registry name for a benchmark name or alias (any case), or ``None``."""
    low = name.lower()
    for canon, aliases in _ALIASES.items():
        if low == canon.lower() or low in aliases:
            return canon
    return None


def _require_name(name: str) -> str:
    canon = canonical_name(name)
    if canon is not None:
        return canon
    if name in GROUPS:
        raise BenchmarkNotFoundError(f"'{name}' is a group of benchmarks ({', '.join(GROUPS[name])}); "
                                     f"expand it with expand_benchmarks().")
    hint = " It names several sets; give the count, e.g. IC13_857." if name.lower() in _AMBIGUOUS else ""
    raise BenchmarkNotFoundError(f"unknown benchmark '{name}'.{hint} Known benchmarks: "
                                 f"{', '.join(BENCHMARKS)}; groups: {', '.join(GROUPS)}.")


def expand_benchmarks(names: Sequence[str]) -> list[str]:
    """Expand group names into set names, map aliases to our names, drop repeats (order kept)."""
    out: list[str] = []
    for name in names:
        for member in GROUPS.get(name, (name,)):
            canon = _require_name(member)
            if canon not in out:
                out.append(canon)
    return out


# ----------------------------------------------------------------------------------------------
# Finding and loading
# ----------------------------------------------------------------------------------------------
def dataset_kind(path: Path) -> str | None:
    """``"lmdb"`` if ``path`` holds ``data.mdb``, ``"folder"`` if it holds ``labels.tsv``, else ``None``."""
    if (path / "data.mdb").is_file():
        return "lmdb"
    if (path / LABELS_FILE).is_file():
        return "folder"
    return None


def _subdirs_by_lower_name(folder: Path) -> dict[str, Path]:
    try:
        return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()}
    except OSError:
        return {}


def find_benchmark(name: str, root: str | Path) -> Path:
    """The folder (LMDB or folder dataset) of benchmark ``name`` under ``root``.

    Raises:
        BenchmarkNotFoundError: unknown name, or no such folder in any known layout.
    """
    canon = _require_name(name)
    root = Path(root)
    candidates = (canon.lower(), *_ALIASES[canon])
    for layout in _LAYOUTS:
        subdirs = _subdirs_by_lower_name(root.joinpath(*layout))
        for cand in candidates:
            path = subdirs.get(cand)
            if path is not None and dataset_kind(path) is not None:
                return path
    raise BenchmarkNotFoundError(f"benchmark {canon} not found under {root}{relative_note(root)}; put it at "
                                 f"{root / canon} (a folder with {LABELS_FILE}, or an LMDB with data.mdb).")


def record_count(path: Path) -> int | None:
    """Raw record count of an LMDB (``num-samples``) or folder dataset (gt lines); ``None`` if neither."""
    kind = dataset_kind(path)
    if kind == "lmdb":
        return lmdb_num_samples(path)
    if kind == "folder":
        return len(read_gt_file(path / LABELS_FILE))
    return None


def load_benchmark(name: str, root: str | Path, channels: int = 3,
                   label_filter: LabelFilter | None = None) -> torch.utils.data.Dataset:
    """Load benchmark ``name`` from ``root`` and check its raw record count (before label filtering).

    Returns:
        An :class:`~strkit.data.lmdb.reader.LmdbDataset` or :class:`~strkit.data.folder.FolderDataset`; items
        are ``(uint8 image H×W or H×W×3 RGB, label)``.

    Raises:
        BenchmarkNotFoundError: see :func:`find_benchmark`.
        BenchmarkCountError: the set holds a different number of records than the registry says.
    """
    canon = _require_name(name)
    path = find_benchmark(canon, root)
    ds = load_test_set(path, channels, label_filter)
    expected = BENCHMARKS[canon]
    if ds.num_records != expected:
        raise BenchmarkCountError(f"benchmark {canon} at {path} has {ds.num_records} records, expected "
                                  f"{expected}. It is incomplete or a different split; replace it with the "
                                  f"standard {canon} set.")
    return ds


def load_test_set(path: str | Path, channels: int = 3,
                  label_filter: LabelFilter | None = None) -> LmdbDataset | FolderDataset:
    """A labelled test set at ``path``: an LMDB (``data.mdb``) or a folder dataset (``labels.tsv``), e.g. a
    user's own held-out crops or rendered curved text; items as in :func:`load_benchmark`.

    Raises:
        BenchmarkNotFoundError: ``path`` is neither.
    """
    path = Path(path)
    if test_set_kind(path) == "lmdb":
        return LmdbDataset(path, label_filter=label_filter, channels=channels)
    return FolderDataset(path, label_filter=label_filter, channels=channels)


def test_set_kind(path: str | Path, what: str = "test set") -> str:
    """:func:`dataset_kind` of a test set given by path, or :class:`BenchmarkNotFoundError` naming it as
    ``what`` (e.g. ``--data``) when it is neither an LMDB nor a folder dataset."""
    kind = dataset_kind(Path(path))
    if kind is None:
        raise BenchmarkNotFoundError(f"{what} {path}{relative_note(Path(path))}: not an LMDB (data.mdb) nor a "
                                     f"folder dataset ({LABELS_FILE}); give the folder that holds one of them")
    return kind


def test_set_names(paths: Sequence[str | Path]) -> list[str]:
    """Table names of test sets given by path: the folder name, with as many parent folders as it takes
    to tell them apart (``curved/lmdb`` and ``persp/lmdb``)."""
    parts = [Path(p).resolve().parts for p in paths]
    for depth in range(1, max((len(x) for x in parts), default=1) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # the same folder twice


def available_benchmarks(root: str | Path) -> list[str]:
    """The registry names found under ``root`` (any layout), in registry order."""
    found = []
    for name in BENCHMARKS:
        try:
            find_benchmark(name, root)
        except BenchmarkNotFoundError:
            continue
        found.append(name)
    return found


# ----------------------------------------------------------------------------------------------
# The leak guard
# ----------------------------------------------------------------------------------------------
def _benchmark_counts(folder_name: str) -> tuple[int, ...] | None:
    """Benchmark record counts a folder of this name may hold, or ``None`` if it names no benchmark."""
    low = folder_name.lower()
    canon = canonical_name(low)
    if canon is not None:
        return (BENCHMARKS[canon],)
    return _AMBIGUOUS.get(low)


def _name_leak(path: Path) -> str | None:
    """Why ``path`` (a dataset folder) is a benchmark by its name, or ``None``."""
    counts = _benchmark_counts(path.name)
    if counts is None:
        return None
    if path.name.lower() in _BARE_ALIASES and path.parent.name.lower() in _TRAIN_PARENTS:
        try:
            count = record_count(path)
        except (OSError, ValueError, RuntimeError):  # unreadable: the loader will say why
            count = None
        if count not in counts:
            return None
        return (f"its folder name '{path.name}' names a benchmark and it holds {count} records, the size "
                f"of that test set")
    return f"its folder name '{path.name}' names a benchmark (test set)"


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _root_leak(path: Path, root: Path) -> str | None:
    """Why ``path`` is a benchmark by its place relative to the benchmark root, or ``None``."""
    if _under(root, path):
        return f"it is or contains the benchmark root {root}"
    if _under(path, root):
        top = path.relative_to(root).parts[0]
        if not top.lower().endswith("_train"):
            return f"it lies under the benchmark root {root} in '{top}', which is not a *_train split"
    return None


def _dataset_folders(path: Path) -> Iterator[Path]:
    """``path`` and every dataset folder (LMDB or folder dataset) below a folder that is not one."""
    yield path
    if not path.is_dir() or dataset_kind(path) is not None:
        return
    for here, dirnames, _ in walk_once(path):
        if here != path and dataset_kind(here) is not None:
            yield here
            dirnames[:] = []


def assert_not_benchmark(path: str | Path, benchmark_root: str | Path | None = None) -> None:
    """Refuse a benchmark set as a training, search or validation source (see the module docstring).

    Args:
        path: the source: a dataset folder, a gt file, an LMDB ``data.mdb``, or a folder of LMDBs.
        benchmark_root: the folder holding the benchmarks (``data.benchmark_root``), if known.

    Raises:
        BenchmarkLeakError: naming the path, the reason and the fix.
    """
    given = Path(path)
    if given.is_file():  # a gt file or data.mdb: judge the folder it lives in
        given = given.parent
    roots = []
    if benchmark_root is not None:
        broot = Path(benchmark_root)
        roots = [broot.absolute(), broot.resolve()]
    for folder in _dataset_folders(given):
        views = (folder.absolute(), folder.resolve())
        reasons = [_name_leak(v) for v in views] + [_root_leak(v, r) for v in views for r in roots]
        reason = next((r for r in reasons if r), None)
        if reason:
            raise BenchmarkLeakError(
                f"{folder} looks like a benchmark set: {reason}. Benchmarks are for evaluation only and "
                f"cannot be training, search or validation data. Remove it from the source list (if it "
                f"really is a training split, keep it in a folder named like IIIT5K_train).")
