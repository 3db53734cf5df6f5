"""Content fingerprints of the benchmark test sets, and the guard that no training source holds them.

The name guard of :mod:`strkit.data.benchmarks` catches a benchmark by its folder name or place; a copy of
its crops under another name (an LMDB built from ``SVT_647``'s images, a folder of them) passes it. This
module catches such a copy by content, in two ways:

* **byte-identical copies**: the fingerprint of an image is the SHA-1 of its encoded bytes (the file or
  LMDB value as stored), found whatever the copy is called;
* **re-encoded copies** (other compression, format or size) *with the same label*: a record whose label
  matches a test image's (36-protocol normalisation: lowercase letters and digits) is decoded, shrunk to a
  16×48 grey thumbnail (area interpolation) and compared with that test image's thumbnail by normalised
  cross-correlation; at :data:`LOOK_MIN` (0.98) or more it is a copy. Measured on the four benchmarks
  (docs/benchmarks.md, "The benchmark guard"): 100 % of JPEG q90 re-encodings are caught, 94 % of JPEG q50,
  96 % of resizes to 100×32, 97 % of 2× upscales saved as JPEG q75 and 40 % of halved copies (those lose
  the detail the thumbnail compares), while no image of the real training splits reaches it (the highest:
  0.968, an IIIT5K_train crop of the same web banner as an IIIT5K_3000 one).

* :func:`benchmark_fingerprints` hashes every image of the test sets found under a benchmark root
  (every set of :data:`~strkit.data.benchmarks.BENCHMARKS`; ``*_train`` splits are not test sets and
  are not fingerprinted). The result is cached on disk in the per-user cache folder
  (:func:`strkit.data.cache.cache_dir` ``/benchmark_fingerprints``), keyed by the root's file list
  with sizes and modification times, so it is computed once per version of the root.
* :func:`benchmark_images_in` counts the records of a dataset (its LMDBs and folder datasets) whose
  fingerprint is a benchmark's. An LMDB is hashed once per (path, size, mtime) and benchmark version:
  the count is cached beside the fingerprints.
* :func:`assert_no_benchmark_images` refuses a training, search or validation source that holds any,
  naming the source, how many test images it holds and of which sets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch.utils.data

from strkit.atomic import atomic_write
from strkit.data.benchmarks import BENCHMARKS, BenchmarkLeakError, BenchmarkNotFoundError, dataset_kind, find_benchmark
from strkit.data.cache import private_cache_folder
from strkit.data.folder import LABELS_FILE, FolderDataset, read_gt_file
from strkit.data.image_limits import ImageTooLargeError, check_encoded
from strkit.data.lmdb.reader import LmdbDataset, iter_raw_records, record_datasets

log = logging.getLogger("strkit")

#: Bumped when the fingerprint definition changes (old cache files are then ignored).
FINGERPRINT_VERSION = 2
CACHE_FOLDER = "benchmark_fingerprints"
#: Thumbnail (height, width) of the re-encoded-copy check, and the correlation at which a record with a
#: test image's label is a copy of it.
THUMB_SIZE = (16, 48)
LOOK_MIN = 0.98


def fingerprint(data: bytes) -> bytes:
    """The fingerprint of one encoded image: SHA-1 of its bytes (20 bytes)."""
    return hashlib.sha1(data).digest()


def label_key(label: str) -> str:
    """The label as the 36 protocol compares it (lowercase letters and digits only)."""
    return "".join(c for c in label.lower() if c.isascii() and c.isalnum())


def thumbnail(data: bytes) -> np.ndarray | None:
    """The grey ``THUMB_SIZE`` thumbnail (uint8, H×W) of an encoded image; ``None`` if undecodable or larger
    than the default pixel limit (checked from the header, before decoding)."""
    try:
        check_encoded(data)
    except ImageTooLargeError:
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None or img.size == 0:
        return None
    return cv2.resize(img, THUMB_SIZE[::-1], interpolation=cv2.INTER_AREA)


def unit_rows(thumbs: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 thumbnails -> (N, H·W) float32 rows of zero mean and unit norm (flat rows stay 0)."""
    x = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-6)


@dataclass(frozen=True)
class BenchmarkFingerprints:
    """The fingerprints of the test sets under one benchmark root.

    Attributes:
        root: the benchmark root.
        key: hex digest of the root's file list, sizes and modification times (the cache key).
        sets: ``fingerprint -> name of the (first, in registry order) test set holding that image``.
        looks: ``label key -> (unit thumbnails (N, H·W) float32, the test set of each)`` of every test
            image with a non-empty :func:`label_key`.
    """

    root: Path
    key: str
    sets: dict[bytes, str]
    looks: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sets)

    def find(self, data: bytes, label: str) -> str | None:
        """The test set holding this record (image bytes and label) or a re-encoded copy of it, or None."""
        name = self.sets.get(fingerprint(data))
        if name is not None:
            return name
        look = self.closest_look(data, label)
        return look[1] if look is not None and look[0] >= LOOK_MIN else None

    def closest_look(self, data: bytes, label: str) -> tuple[float, str] | None:
        """The highest thumbnail correlation of this record with a test image of the same label, and that
        image's test set; None when no test image has the label or the record does not decode."""
        candidates = self.looks.get(label_key(label))
        if candidates is None:
            return None
        thumb = thumbnail(data)
        if thumb is None:
            return None
        scores = candidates[0] @ unit_rows(thumb[None])[0]
        best = int(np.argmax(scores))
        return float(scores[best]), candidates[1][best]


# ----------------------------------------------------------------------------------------------
# The benchmark side
# ----------------------------------------------------------------------------------------------
def _test_sets(root: Path) -> list[tuple[str, Path]]:
    found = []
    for name in BENCHMARKS:
        try:
            found.append((name, find_benchmark(name, root)))
        except BenchmarkNotFoundError:
            continue
    return found


def _stat_entry(path: Path) -> list[int]:
    try:
        st = path.stat()
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _inventory(sets: list[tuple[str, Path]]) -> list[list[object]]:
    """Every file the fingerprints depend on, with size and mtime: the gt file and the images of a
    folder set, ``data.mdb`` of an LMDB set."""
    rows: list[list[object]] = []
    for name, folder in sets:
        if dataset_kind(folder) == "lmdb":
            data = folder / "data.mdb"
            rows.append([name, str(data.resolve()), *_stat_entry(data)])
            continue
        gt = folder / LABELS_FILE
        rows.append([name, str(gt.resolve()), *_stat_entry(gt)])
        for image, _ in read_gt_file(gt):
            rows.append([name, str(image), *_stat_entry(image)])
    return rows


def folder_records(gt: Path) -> Iterator[tuple[bytes, str]]:
    """The bytes and label of every readable image listed in the gt file ``gt``."""
    for image, label in read_gt_file(gt):
        try:
            yield image.read_bytes(), label
        except OSError:
            continue


def _set_records(folder: Path) -> Iterator[tuple[bytes, str]]:
    if dataset_kind(folder) == "lmdb":
        yield from iter_raw_records(folder)
    else:
        yield from folder_records(folder / LABELS_FILE)


def _cache_file(name: str) -> Path:
    """``<per-user cache>/benchmark_fingerprints/<name>``; a cache that cannot be created is not fatal
    (the file then lies in a folder that does not exist: it is never found, and writing it is skipped)."""
    try:
        return private_cache_folder(CACHE_FOLDER) / name
    except OSError as exc:
        log.warning("benchmark fingerprints are not cached (%s); they are computed on every run", exc)
        return Path(os.devnull) / name


def _write_atomically(path: Path, write: object) -> None:
    """Write ``path`` via a temporary file in its folder and a rename (``write(file object)``); a cache
    that cannot be written is skipped with a warning."""
    if not path.parent.is_dir():  # the cache folder could not be made (see _cache_path)
        log.debug("not caching %s: no folder", path)
        return
    try:
        with atomic_write(path, "wb", fsync=False) as fh:
            write(fh)  # type: ignore[operator]
    except OSError as exc:
        log.warning("cannot write the fingerprint cache %s: %s", path, exc)


def benchmark_fingerprints(root: str | Path | None) -> BenchmarkFingerprints | None:
    """The fingerprints of the test sets under ``root`` (see the module docstring), from the cache when
    the root's files are unchanged; ``None`` when ``root`` is not given, not a folder, or holds no test
    set."""
    if root is None or not Path(root).is_dir():
        return None
    root = Path(root)
    sets = _test_sets(root)
    if not sets:
        return None
    inventory = _inventory(sets)
    key = hashlib.sha1(json.dumps([FINGERPRINT_VERSION, str(root.resolve()), inventory]).encode()).hexdigest()
    cache = _cache_file(f"benchmarks-{key}.npz")
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as npz:
                names = [str(n) for n in npz["names"]]
                found: dict[bytes, str] = {bytes(d): names[i] for d, i in
                                           zip(npz["digests"], npz["sets"].tolist(), strict=True)}
                looks = _looks([str(k) for k in npz["look_keys"]], npz["look_thumbs"],
                               [names[i] for i in npz["look_sets"].tolist()])
                return BenchmarkFingerprints(root, key, found, looks)
        except (OSError, ValueError, KeyError, IndexError):
            log.warning("benchmark fingerprint cache %s is unreadable; computing it again", cache)
    log.info("fingerprinting the benchmark test sets under %s (%s); cached in %s", root,
             ", ".join(name for name, _ in sets), cache.parent)
    found = {}  # fingerprint -> test set
    look_keys: list[str] = []
    look_thumbs: list[np.ndarray] = []
    look_sets: list[str] = []
    for name, folder in sets:
        for data, label in _set_records(folder):
            found.setdefault(fingerprint(data), name)
            key_of_label = label_key(label)
            thumb = thumbnail(data) if key_of_label else None
            if thumb is not None:
                look_keys.append(key_of_label)
                look_thumbs.append(thumb)
                look_sets.append(name)
    names = [name for name, _ in sets]
    digests = np.frombuffer(b"".join(found), dtype=np.uint8).reshape(len(found), 20)
    index = np.array([names.index(n) for n in found.values()], dtype=np.int16)
    thumbs = np.stack(look_thumbs) if look_thumbs else np.zeros((0, *THUMB_SIZE), np.uint8)

    def write(fh: object) -> None:
        np.savez(fh, digests=digests, sets=index, names=np.array(names), look_keys=np.array(look_keys, dtype=str),
                 look_thumbs=thumbs, look_sets=np.array([names.index(n) for n in look_sets], dtype=np.int16))

    _write_atomically(cache, write)
    return BenchmarkFingerprints(root, key, found, _looks(look_keys, thumbs, look_sets))


def _looks(keys: list[str], thumbs: np.ndarray, sets: list[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Group the test images' unit thumbnails by label key (see :attr:`BenchmarkFingerprints.looks`)."""
    rows: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        rows.setdefault(k, []).append(i)
    units = unit_rows(thumbs) if len(thumbs) else np.zeros((0, THUMB_SIZE[0] * THUMB_SIZE[1]), np.float32)
    return {k: (units[idx], [sets[i] for i in idx]) for k, idx in rows.items()}


# ----------------------------------------------------------------------------------------------
# The source side
# ----------------------------------------------------------------------------------------------
def _count(records: Iterator[tuple[bytes, str]], prints: BenchmarkFingerprints) -> Counter[str]:
    counts: Counter[str] = Counter()
    for data, label in records:
        name = prints.find(data, label)
        if name is not None:
            counts[name] += 1
    return counts


def _lmdb_counts(path: Path, prints: BenchmarkFingerprints) -> Counter[str]:
    """Benchmark images per test set in the LMDB ``path``, cached per (LMDB file, benchmark version)."""
    data = (path / "data.mdb").resolve()
    st = data.stat()
    key = hashlib.sha1(json.dumps([FINGERPRINT_VERSION, prints.key, str(data), st.st_size,
                                   st.st_mtime_ns]).encode()).hexdigest()
    cache = _cache_file(f"lmdb-{key}.json")
    if cache.is_file():
        try:
            return Counter({str(k): int(v) for k, v in json.loads(cache.read_text())["counts"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    counts = _count(iter_raw_records(path), prints)
    payload = json.dumps({"lmdb": str(data), "counts": dict(counts)}).encode()
    _write_atomically(cache, lambda fh: fh.write(payload))
    return counts


def benchmark_images_in(dataset: torch.utils.data.Dataset, prints: BenchmarkFingerprints
                        ) -> list[tuple[Path, Counter[str]]]:
    """For every LMDB and folder dataset that ``dataset`` reads, the number of its records (all of
    them, also those its label filter drops) that are benchmark test images, per test set; only the
    datasets holding any are listed."""
    found = []
    for ds in record_datasets(dataset):
        if isinstance(ds, LmdbDataset):
            counts = _lmdb_counts(ds.path, prints)
        elif isinstance(ds, FolderDataset):
            counts = _count(folder_records(ds.gt_file), prints)
        else:  # pragma: no cover - a record dataset of another kind: nothing stored to compare
            continue
        if counts:
            found.append((ds.path, counts))
    return found


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def assert_no_benchmark_images(dataset: torch.utils.data.Dataset, source: str,
                               benchmark_root: str | Path | None, purpose: str = "train") -> None:
    """Refuse ``dataset`` (the source named ``source``) as ``purpose`` data if it holds any image of
    the benchmark test sets under ``benchmark_root``; nothing is checked when the root is not available.

    Raises:
        BenchmarkLeakError: naming the source, how many test images it holds and of which sets.
    """
    prints = benchmark_fingerprints(benchmark_root)
    if prints is None or not len(prints):
        return
    found = benchmark_images_in(dataset, prints)
    if not found:
        return
    total: Counter[str] = Counter()
    for _, counts in found:
        total.update(counts)
    per_set = ", ".join(f"{n} of {name}" for name, n in sorted(total.items()))
    where = "; ".join(f"{path}: {sum(c.values())}" for path, c in found)
    raise BenchmarkLeakError(
        f"source '{source}' contains {_images(sum(total.values()))} of the benchmark test sets ({per_set}; "
        f"byte-identical or re-encoded copies with the same label, found by content under {prints.root}, in "
        f"{where}). Benchmarks are for evaluation only and cannot "
        f"be {purpose} data: rebuild the source without those images.")
