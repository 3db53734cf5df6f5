"""An on-disk cache of teacher outputs for distillation, keyed by image content and augmentation view.

A slow teacher (RapidOCR's PP-OCR recogniser reads ~15 ms per crop on one core) should read each training
view once, not once per epoch. :class:`TeacherCache` is an LMDB that maps ``(image content, view)`` to a
:class:`TeacherTarget`: the teacher's reading folded into the student's charset, its weakest character
confidence and its per-frame class distribution over the *student's* classes (float16, ``T×C`` with
``C = len(charset) + 1``; ~1 KB a crop for a 36-class student, so 100k views take ~100 MB).

Keys hash the decoded pixels (shape, dtype and bytes) with the view number, so an entry follows the image
wherever it is read from (an LMDB record, a folder file, a hold-out split with another seed). The cache
records which teacher and which student charset it was filled for and refuses to be mixed with another.
Writes go through LMDB transactions (atomic); a filler that is killed loses at most its uncommitted batch
and continues where it stopped when run again (:meth:`TeacherCache.missing`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from strkit.data.lmdb.writer import put_all

FORMAT_VERSION = 1
_META_KEY = b"__meta__"
#: Records ``__source__/<stamp>``: a training source whose every crop has a target (see source_complete).
_SOURCE_PREFIX = b"__source__/"
_HEADER = struct.Struct("<HHfH")  # frames, classes, min confidence, text bytes


#: Open LMDB handles by (process id, folder): py-lmdb refuses a second handle of one folder in a process.
_OPEN_ENVS: dict[tuple[int, str], tuple[lmdb.Environment, bool]] = {}  # (handle, read-only)


class TeacherCacheError(ValueError):
    """The cache was filled for another teacher or charset, or is not a teacher cache."""


@dataclass(frozen=True)
class TeacherTarget:
    """A teacher's output for one view of one crop, in the student's classes.

    Attributes:
        text: the teacher's reading folded into the student charset.
        min_conf: its weakest character confidence (0 for an empty reading).
        frames: ``(T, C)`` float32 class probabilities over the student's classes (class 0 = blank),
            only the frames that cover the crop.
    """

    text: str
    min_conf: float
    frames: np.ndarray

    def bag(self) -> np.ndarray:
        """The time-averaged class distribution, ``(C,)``."""
        return self.frames.mean(axis=0) if len(self.frames) else np.eye(self.frames.shape[1])[0]

    def encode(self) -> bytes:
        text = self.text.encode("utf-8")
        t, c = self.frames.shape
        return _HEADER.pack(t, c, float(self.min_conf), len(text)) + text + \
            np.ascontiguousarray(self.frames, np.float16).tobytes()

    @classmethod
    def decode(cls, raw: bytes) -> TeacherTarget:
        t, c, conf, n = _HEADER.unpack_from(raw)
        start = _HEADER.size
        text = bytes(raw[start:start + n]).decode("utf-8")
        frames = np.frombuffer(raw, np.float16, count=t * c, offset=start + n).astype(np.float32).reshape(t, c)
        return cls(text, conf, frames)


def image_key(image: np.ndarray, view: int = 0) -> bytes:
    """The cache key of view ``view`` of a decoded image: SHA-1 of its shape, dtype and pixels + the view."""
    h = hashlib.sha1(f"{image.shape}|{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.digest() + struct.pack("<H", view)


class TeacherCache:
    """Teacher targets in an LMDB folder (see the module docstring).

    Args:
        path: the cache folder (created when ``readonly`` is false).
        teacher: the teacher's name (e.g. ``rapidocr:PP-OCRv6_rec_small``).
        charset: the student charset's name and characters, as stored in its checkpoint.
        readonly: open for reading only (training data workers).

    Raises:
        TeacherCacheError: the folder holds a cache of another teacher or charset.
    """

    def __init__(self, path: str | Path, teacher: str, charset: Iterable[str], readonly: bool = False,
                 map_size: int = 1 << 30) -> None:
        self.path = Path(path)
        self.meta = {"format": FORMAT_VERSION, "teacher": teacher, "charset": "".join(charset)}
        self.readonly = readonly
        self._map_size = map_size
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not (self.path / "data.mdb").is_file():
            raise TeacherCacheError(f"{self.path}: no teacher cache here (fill it first: the trainer does, "
                                    f"or tools/curate.py)")
        self._check_meta()

    @classmethod
    def open_readonly(cls, path: str | Path, charset: Iterable[str], teacher: str = "") -> TeacherCache:
        """An existing cache for reading (data workers, DDP ranks that did not fill it); ``teacher`` "" =
        the teacher that filled it (from its meta record)."""
        return cls(path, teacher or stored_meta(path)["teacher"], charset, readonly=True)

    # -- handles (one per process: DataLoader workers fork) -----------------------------------------
    def _handle(self) -> lmdb.Environment:
        # py-lmdb allows one Environment per folder and process: cache objects of one folder share it,
        # and a forked DataLoader worker opens its own.
        # A handle opened read-only is reopened writable when a writer needs it.
        pid = os.getpid()
        for stale in [k for k in _OPEN_ENVS if k[0] != pid]:  # inherited through fork (a DataLoader worker):
            _OPEN_ENVS.pop(stale)[0].close()  # py-lmdb would refuse to open the folder again in this process
        key = (pid, str(self.path.resolve()))
        entry = _OPEN_ENVS.get(key)
        if entry is not None and entry[1] and not self.readonly:
            entry[0].close()
            entry = None
        if entry is None:
            env = lmdb.open(str(self.path), readonly=self.readonly, lock=not self.readonly,
                            map_size=self._map_size, max_readers=512, readahead=False)
            entry = _OPEN_ENVS[key] = (env, self.readonly)
        return entry[0]

    def close(self) -> None:
        """Close this process's handle of the folder (any cache object of the folder reopens it on use)."""
        entry = _OPEN_ENVS.pop((os.getpid(), str(self.path.resolve())), None)
        if entry is not None:
            entry[0].close()

    def _check_meta(self) -> None:
        env = self._handle()
        with env.begin(write=not self.readonly) as txn:
            raw = txn.get(_META_KEY)
            if raw is None:
                if self.readonly or txn.stat()["entries"]:
                    raise TeacherCacheError(f"{self.path} is an LMDB but not a strkit teacher cache")
                txn.put(_META_KEY, json.dumps(self.meta).encode())
                return
        stored = json.loads(raw)
        for key in ("format", "teacher", "charset"):
            if stored.get(key) != self.meta[key]:
                raise TeacherCacheError(f"{self.path} holds targets for {key} {stored.get(key)!r}, not "
                                        f"{self.meta[key]!r}: use another distill.cache folder for this "
                                        f"teacher/charset")

    # -- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        """The number of cached targets (the meta and source records left out)."""
        with self._handle().begin() as txn:
            return max(0, txn.stat()["entries"] - 1 - self._source_records(txn))

    @staticmethod
    def _source_records(txn: lmdb.Transaction) -> int:
        cursor = txn.cursor()
        count = 0
        if cursor.set_range(_SOURCE_PREFIX):
            for key in cursor.iternext(values=False):
                if not bytes(key).startswith(_SOURCE_PREFIX):
                    break
                count += 1
        return count

    def source_complete(self, stamp: str) -> bool:
        """Whether a source with this stamp (its path, size and modification time, see
        :func:`strkit.engine.distill.source_stamp`) was read completely into this cache: a later run can skip
        decoding and hashing all its crops."""
        with self._handle().begin() as txn:
            return txn.get(_SOURCE_PREFIX + stamp.encode()) is not None

    def mark_sources_complete(self, stamps: Iterable[str]) -> None:
        """Record that every crop of the sources with these stamps has its target here (one transaction)."""
        records = [(_SOURCE_PREFIX + stamp.encode(), b"1") for stamp in stamps]
        if records:
            self._map_size = put_all(self._handle(), records, self._map_size)

    def get(self, key: bytes) -> TeacherTarget | None:
        with self._handle().begin(buffers=True) as txn:
            raw = txn.get(key)
            return None if raw is None else TeacherTarget.decode(bytes(raw))

    def missing(self, keys: Iterable[bytes]) -> list[bytes]:
        """The keys among ``keys`` that have no entry yet (in order)."""
        with self._handle().begin() as txn:
            return [k for k in keys if txn.get(k) is None]

    def put_many(self, items: Iterable[tuple[bytes, TeacherTarget]]) -> None:
        """Store entries in one transaction (all or none), growing the map when it is full."""
        self._map_size = put_all(self._handle(), [(k, t.encode()) for k, t in items], self._map_size)

    def size_bytes(self) -> int:
        """Bytes the cache takes on disk."""
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def stored_meta(path: str | Path) -> dict[str, Any]:
    """The meta record of the teacher cache in ``path`` (format, teacher, charset)."""
    if not (Path(path) / "data.mdb").is_file():
        raise TeacherCacheError(f"{path}: no teacher cache here")
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            raw = txn.get(_META_KEY)
    finally:
        env.close()
    if raw is None:
        raise TeacherCacheError(f"{path} is not a teacher cache")
    return json.loads(raw)


class TeacherTargets:
    """Wraps a training source so that items carry their cached teacher target:
    ``(image, label, geometry or None, TeacherTarget or None)`` (``None``: no entry for this view, e.g.
    a crop joined by :class:`~strkit.data.concat_augment.ConcatAugment`).

    Args:
        dataset: items ``(image, label)`` or ``(image, label, geometry)``.
        cache: the filled cache (reopened read-only in each DataLoader worker).
        view: the augmentation view whose entry is looked up (0 = the stored crop).
    """

    def __init__(self, dataset: Any, cache: TeacherCache, view: int = 0) -> None:
        self.dataset = dataset
        self.cache = cache
        self.view = view

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # num_corrupt, labels ... of the wrapped source
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        target = self.cache.get(image_key(item[0], self.view))
        return item[0], item[1], item[2] if len(item) > 2 else None, target
