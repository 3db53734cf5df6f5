"""A streaming LMDB writer.

:class:`LmdbWriter` streams records into ``<path>.partial``, commits every ``commit_every`` records
together with ``num-samples`` (so a killed writer leaves a readable, resumable partial DB), doubles the
map size whenever LMDB reports it full, and renames the folder to ``<path>`` only when
:meth:`LmdbWriter.close` completes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import lmdb

from strkit.data.lmdb.format import NUM_SAMPLES_KEY, PARTIAL_SUFFIX, WRITER_TOOL_KEY, LmdbError, record_key
from strkit.data.lmdb.reader import ENV_CACHE, open_env, read_num_samples

log = logging.getLogger(__name__)


class LmdbWriter:
    """Stream records into an STR LMDB, safely.

    Records go to ``<path>.partial``. Every ``commit_every`` records (or 64 MiB) are committed in one
    transaction together with ``num-samples``, so the partial DB is always readable and a killed
    writer can be resumed (``resume=True``). When LMDB reports the map full, the map size is doubled
    and the transaction retried. :meth:`close` commits the rest and renames the folder to ``path``.

    Args:
        path: the final LMDB folder.
        map_size: initial map size in bytes (it grows as needed).
        overwrite: replace an existing LMDB at ``path`` (only once the new one is complete), and
            discard an unfinished ``.partial`` unless ``resume``.
        resume: continue an existing ``.partial`` after its committed ``num-samples``.
        commit_every: records per transaction.
        tool: the command that writes it (e.g. ``tools/create_lmdb.py``), recorded so that a reader
            refusing the unfinished ``.partial`` can say which tool's ``--resume`` finishes it.

    Used as a context manager, an exception commits what was written to the ``.partial`` folder and
    leaves it there (nothing is renamed, nothing is lost).
    """

    _FLUSH_BYTES = 64 << 20

    def __init__(self, path: str | Path, map_size: int = 1 << 30, overwrite: bool = False,
                 resume: bool = False, commit_every: int = 1000, tool: str | None = None) -> None:
        if commit_every < 1:
            raise ValueError(f"commit_every must be >= 1, got {commit_every}")
        if map_size < 1 << 16:
            raise ValueError(f"map_size must be at least 64 KiB, got {map_size}")
        self.path = Path(path)
        self.partial = Path(f"{self.path}{PARTIAL_SUFFIX}")
        self.commit_every = commit_every
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists; pass overwrite=True (--overwrite) to replace "
                                  f"it, or choose another output path.")
        if self.path.exists():
            _check_replaceable(self.path)
        if self.partial.exists() and not resume:
            if not overwrite:
                raise FileExistsError(f"an unfinished LMDB {self.partial} exists (an interrupted run); pass "
                                      f"resume=True (--resume) to continue it or overwrite=True "
                                      f"(--overwrite) to start again.")
            _check_replaceable(self.partial)
            shutil.rmtree(self.partial)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        ENV_CACHE.evict(self.partial)
        self._env: lmdb.Environment | None = open_env(self.partial, map_size=map_size, meminit=False)
        with self._env.begin() as txn:
            self._count = read_num_samples(txn, self.partial)
        self._map_size = max(map_size, self._env.info()["map_size"])
        self._pending: dict[bytes, bytes] = {}
        self._pending_records = 0
        self._pending_bytes = 0
        self._final: Path | None = None
        if tool:
            self.put_meta(WRITER_TOOL_KEY, tool.encode("utf-8"))
            self.commit()  # at once, so that even a writer killed before its first batch names its tool

    # -- writing ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def put(self, image: bytes, label: str, extra: dict[str, bytes] | None = None) -> int:
        """Add one record; returns its 1-based index. ``extra`` keys are written as ``<key>-%09d``."""
        if not isinstance(image, bytes | bytearray | memoryview):
            raise TypeError(f"image must be encoded bytes, got {type(image).__name__}")
        if not isinstance(label, str):
            raise TypeError(f"label must be str, got {type(label).__name__}")
        extra = extra or {}
        for key in extra:
            if key in ("image", "label"):
                raise ValueError(f"extra key '{key}' would overwrite the record's {key}")
        encoded = label.encode("utf-8")  # raises before anything is staged if the label cannot be stored
        index = self._count + 1
        self._stage(record_key("image", index), bytes(image))
        self._stage(record_key("label", index), encoded)
        for key, value in extra.items():
            self._stage(record_key(key, index), bytes(value))
        self._count = index
        self._pending_records += 1
        if self._pending_records >= self.commit_every or self._pending_bytes >= self._FLUSH_BYTES:
            self.commit()
        return index

    def put_meta(self, key: str, value: bytes) -> None:
        """Store a DB-level value (committed with the next batch of records)."""
        if key.encode() == NUM_SAMPLES_KEY:
            raise ValueError("'num-samples' is maintained by the writer")
        self._stage(key.encode(), bytes(value))

    def get_meta(self, key: str) -> bytes | None:
        """A DB-level value, staged or already committed, or ``None``."""
        env = self._require_open()
        if key.encode() in self._pending:
            return self._pending[key.encode()]
        with env.begin() as txn:
            return txn.get(key.encode())

    def _stage(self, key: bytes, value: bytes) -> None:
        self._require_open()
        self._pending[key] = value
        self._pending_bytes += len(value) + len(key)

    def _require_open(self) -> lmdb.Environment:
        if self._env is None:
            raise LmdbError(f"writer for {self.path} is closed")
        return self._env

    def commit(self) -> None:
        """Write the staged records and ``num-samples`` in one transaction, growing the map if full."""
        env = self._require_open()
        if not self._pending and self._pending_records == 0:
            return
        items = [*self._pending.items(), (NUM_SAMPLES_KEY, str(self._count).encode())]
        self._map_size = put_all(env, items, self._map_size)
        self._pending.clear()
        self._pending_records = 0
        self._pending_bytes = 0

    # -- finishing ----------------------------------------------------------------------------
    def close(self) -> Path:
        """Commit, close and rename ``<path>.partial`` to ``<path>``; returns the final path."""
        if self._final is not None:
            return self._final
        env = self._require_open()
        self.commit()
        with env.begin(write=True) as txn:  # an empty DB still gets num-samples = 0
            if txn.get(NUM_SAMPLES_KEY) is None:
                txn.put(NUM_SAMPLES_KEY, b"0")
        env.sync(True)
        env.close()
        self._env = None
        if self.path.exists():  # overwrite=True was checked in __init__: swap only now it is complete
            _check_replaceable(self.path)
            ENV_CACHE.evict(self.path)
            old = Path(f"{self.path}.old-{os.getpid()}")
            os.replace(self.path, old)
            os.replace(self.partial, self.path)
            shutil.rmtree(old)
        else:
            os.replace(self.partial, self.path)
        self._final = self.path
        return self.path

    def abandon(self) -> None:
        """Commit what was written to ``<path>.partial`` and close it without renaming (resumable)."""
        if self._env is None:
            return
        self.commit()
        self._env.close()
        self._env = None

    def __enter__(self) -> LmdbWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def put_all(env: lmdb.Environment, items: Sequence[tuple[bytes, bytes]], map_size: int) -> int:
    """Write ``items`` in one transaction (all or none), doubling the map while it is full; returns the
    map size in use afterwards."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return map_size
        except lmdb.MapFullError:
            map_size *= 2
            env.set_mapsize(map_size)
            log.debug("LMDB %s: map size grown to %d bytes", env.path(), map_size)


def _check_replaceable(path: Path) -> None:
    """Refuse to delete ``path`` unless it is an LMDB folder (or empty): never remove user data."""
    if path.is_dir() and ((path / "data.mdb").is_file() or not any(path.iterdir())):
        return
    raise FileExistsError(f"{path} exists and is not an LMDB folder; refusing to replace it. "
                          f"Choose another output path.")
