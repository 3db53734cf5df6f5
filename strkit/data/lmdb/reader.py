"""Reading LMDB datasets (format: :mod:`strkit.data.lmdb.format`).

The environment is opened lazily, read-only, without lock, readahead or meminit, in the process that
reads. A dataset object never holds an open environment, so it pickles before and after first use and
works with ``fork`` and ``spawn`` DataLoader workers. py-lmdb refuses to open the same files twice in
one process, so open environments live in a small per-process cache keyed by the data file's identity;
a forked child closes the ones it inherited and opens its own.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch.utils.data

from strkit.config import relative_note
from strkit.data.image_limits import DEFAULT_MAX_PIXELS, ImageTooLargeError
from strkit.data.lmdb.format import (
    GEOMETRY_KEY,
    NUM_SAMPLES_KEY,
    PARTIAL_SUFFIX,
    WRITER_TOOL_KEY,
    CorruptRecordError,
    LabelFilter,
    LmdbError,
    LmdbNotFoundError,
    PartialLmdbError,
    decode_geometry,
    decode_image,
    record_key,
)

_READ_OPTIONS = {"readonly": True, "lock": False, "readahead": False, "meminit": False, "max_readers": 1024}

log = logging.getLogger(__name__)

# Keys by which an unfinished LMDB of an older strkit (without WRITER_TOOL_KEY) shows the tool writing it.
TOOL_MARKER_KEYS = (("create-lmdb-position", "tools/create_lmdb.py"), ("meta", "tools/synth.py"))


class _EnvCache:
    """Read-only environments open in this process, keyed by (device, inode) of ``data.mdb``.

    py-lmdb allows one open environment per file and process. After ``fork`` the child inherits the
    parent's handles, which it must not use; :meth:`get` closes them and starts afresh. py-lmdb also
    remembers the inode of ``lock.mdb`` at open time, so an environment whose folder was deleted can
    block a new one that reuses a freed inode; :func:`open_env` then closes such stale handles.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.envs: dict[tuple[int, int], tuple[Path, lmdb.Environment]] = {}
        self.open_paths: dict[Path, lmdb.Environment] = {}  # fast path: no os.stat per record read

    @staticmethod
    def key(path: Path) -> tuple[int, int]:
        st = os.stat(path / "data.mdb")
        return st.st_dev, st.st_ino

    def _check_pid(self) -> None:
        if self.pid != os.getpid():
            for _, env in self.envs.values():
                env.close()
            self.envs.clear()
            self.open_paths.clear()
            self.pid = os.getpid()

    def get(self, path: Path) -> lmdb.Environment:
        self._check_pid()
        env = self.open_paths.get(path)
        if env is not None:
            return env
        key = self.key(path)
        entry = self.envs.get(key)
        if entry is None:
            entry = self.envs[key] = (path, open_env(path, **_READ_OPTIONS))
        self.open_paths[path] = entry[1]
        return entry[1]

    def begin(self, path: Path) -> lmdb.Transaction:
        """A read transaction on the LMDB at ``path`` (use it as a context manager).

        When another process grew the database beyond this process's memory map since it was opened
        (``lmdb.MapResizedError``), the environment is reopened and the transaction retried once.

        Raises:
            LmdbError: the database still does not fit the map after reopening.
        """
        try:
            return self.get(path).begin(buffers=False)
        except lmdb.MapResizedError:
            log.debug("LMDB %s grew since it was opened here: reopening it", path)
            self.evict(path)
        try:
            return self.get(path).begin(buffers=False)
        except lmdb.MapResizedError as exc:
            raise LmdbError(f"{path} keeps growing beyond this process's memory map of it ({exc}), even "
                            f"after reopening: another process is writing it. Wait until that writer has "
                            f"finished, or read a finished copy.") from None

    def _forget(self, env: lmdb.Environment) -> None:
        for p in [p for p, e in self.open_paths.items() if e is env]:
            del self.open_paths[p]

    def evict(self, path: Path) -> None:
        """Close the cached environment of ``path`` (before it is written, moved or deleted)."""
        self._check_pid()
        self.open_paths.pop(path, None)
        try:
            entry = self.envs.pop(self.key(path), None)
        except OSError:
            return
        if entry is not None:
            self._forget(entry[1])
            entry[1].close()

    def purge_stale(self) -> None:
        """Close the environments whose files were deleted or replaced since they were opened."""
        self._check_pid()
        for key, (path, env) in list(self.envs.items()):
            try:
                current = self.key(path)
            except OSError:
                current = None
            if current != key:
                del self.envs[key]
                self._forget(env)
                env.close()


ENV_CACHE = _EnvCache()


def open_env(path: Path, **options: object) -> lmdb.Environment:
    """``lmdb.open`` with a clear error, retried once after closing stale cached handles.

    A truncated ``data.mdb`` (an interrupted copy or download) is refused here: reading a page past
    the end of the file would kill the process with SIGBUS.
    """
    try:
        env = lmdb.open(str(path), **options)
    except lmdb.Error as exc:
        if "already open" not in str(exc):
            raise _open_error(path, exc) from None
        ENV_CACHE.purge_stale()
        try:
            env = lmdb.open(str(path), **options)
        except lmdb.Error as exc2:
            raise _open_error(path, exc2) from None
    data = path / "data.mdb"
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if data.is_file() and data.stat().st_size < needed:
        size = data.stat().st_size
        env.close()
        raise LmdbError(f"{data} is truncated ({size} bytes, its pages need {needed}): the copy or download "
                        f"is incomplete. Copy it again (or re-create it with tools/create_lmdb.py).")
    return env


def _open_error(path: Path, exc: Exception) -> LmdbError:
    return LmdbError(f"cannot open LMDB {path}: {exc}. Check that it is a complete LMDB (data.mdb), "
                     f"readable, and not open elsewhere in this process.")


class BadRecord(Exception):
    """Internal signal from :meth:`RecordDataset._load`: record ``index`` is unusable (``reason``)."""


class RecordDataset(torch.utils.data.Dataset):
    """Base of the STR datasets: items are ``(image, label)``; unusable records are skipped.

    Subclasses set ``self.path``, ``self.channels``, ``self.strict`` and implement
    :meth:`__len__`, :meth:`_load` and :meth:`_describe`.

    A record that cannot be read or decoded raises :class:`CorruptRecordError` when ``strict``;
    otherwise it is logged (once per dataset and process), counted in :attr:`num_corrupt` and the
    next valid record is returned instead (wrapping round at the end). The count is per process,
    unless :meth:`share_corrupt_counts` was called before DataLoader workers start: then the
    records met by any worker are counted, each once.
    """

    path: Path
    channels: int
    strict: bool

    def _decode(self, data: bytes, undecodable: str) -> np.ndarray:
        """The image encoded in ``data`` (with ``self.channels`` and ``self.max_pixels``); :class:`BadRecord`
        with the size limit's message, or with ``undecodable`` when the bytes are not an image."""
        try:
            img = decode_image(data, self.channels, self.max_pixels)
        except ImageTooLargeError as exc:
            raise BadRecord(str(exc)) from None
        if img is None:
            raise BadRecord(undecodable)
        return img

    def _filter_label(self, label: str, label_filter: LabelFilter | None) -> str | None:
        """``label`` as ``label_filter`` cleans it (unchanged without a filter), or ``None`` when the filter
        drops it (counted in ``num_filtered``)."""
        if label_filter is None:
            return label
        cleaned = label_filter(label)
        if cleaned is None:
            self.num_filtered += 1
        return cleaned

    def _init_corrupt_tracking(self) -> None:
        self._bad: set[int] = set()  # items found unusable in this process
        self._dropped = 0  # records left out when the dataset was built (e.g. a missing label)
        self._warned = False
        self._shared_bad: torch.Tensor | None = None  # one flag per item, in shared memory (opt-in)

    def share_corrupt_counts(self) -> None:
        """Count the unusable records met in *any* process from now on (DataLoader workers, forked or
        spawned after this call): one flag byte per item in shared memory, so each record counts once.
        """
        if self._shared_bad is None:
            self._shared_bad = torch.zeros(len(self), dtype=torch.uint8).share_memory_()
            for i in self._bad:
                self._shared_bad[i] = 1

    @property
    def num_corrupt(self) -> int:
        """Unusable records: those left out at construction plus distinct ones met when reading (in
        this process, or in every process after :meth:`share_corrupt_counts`)."""
        if self._shared_bad is not None:
            return self._dropped + int(self._shared_bad.sum())
        return self._dropped + len(self._bad)

    def _note_bad(self, where: str, reason: str) -> None:
        """Raise :class:`CorruptRecordError` when strict, else log (once per dataset and process)."""
        if self.strict:
            raise CorruptRecordError(f"{where}: {reason}. Re-create the dataset, or load it with "
                                     f"strict=False to skip such records.")
        if not self._warned:
            self._warned = True
            log.warning("skipping unusable record %s: %s (further ones are counted in num_corrupt)",
                        where, reason)

    def _load(self, i: int) -> tuple[Any, ...]:
        """Return item ``i`` (``(image, label)``, or a longer tuple) or raise :class:`BadRecord`."""
        raise NotImplementedError

    def _describe(self, i: int) -> str:
        """Where item ``i`` lives, for error messages."""
        raise NotImplementedError

    def _report_bad(self, i: int, reason: str) -> None:
        self._note_bad(self._describe(i), reason)
        self._bad.add(i)
        if self._shared_bad is not None:
            self._shared_bad[i] = 1

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        """Item ``i``: (uint8 image H×W or H×W×3 RGB, label), plus what the subclass adds (e.g. the word
        geometry of an :class:`LmdbDataset` opened with ``geometry=True``)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.path} ({n} records)")
        i %= n
        for step in range(n):
            j = (i + step) % n
            if j in self._bad:
                continue
            try:
                return self._load(j)
            except BadRecord as exc:
                self._report_bad(j, str(exc))
        raise CorruptRecordError(f"{self.path}: none of its {n} records can be decoded. "
                                 f"Re-create the dataset.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} records)"


def record_datasets(dataset: torch.utils.data.Dataset) -> list[RecordDataset]:
    """The :class:`RecordDataset` objects a dataset reads from (through ``ConcatDataset`` and
    ``Subset``), each once, in order."""
    found: dict[int, RecordDataset] = {}
    stack = [dataset]
    while stack:
        ds = stack.pop(0)
        if isinstance(ds, RecordDataset):
            found.setdefault(id(ds), ds)
        elif isinstance(ds, torch.utils.data.ConcatDataset):
            stack[:0] = list(ds.datasets)
        elif isinstance(ds, torch.utils.data.Subset):
            stack.insert(0, ds.dataset)
    return list(found.values())


def partial_writer_tool(path: Path) -> str:
    """The tool that writes the unfinished LMDB ``path`` (a ``.partial`` folder), as far as it shows."""
    try:
        env = lmdb.open(str(path), **_READ_OPTIONS)
    except lmdb.Error:  # open elsewhere in this process, or unreadable: fall back to naming both tools
        return "tools/create_lmdb.py or tools/synth.py"
    try:
        with env.begin(buffers=False) as txn:
            raw = txn.get(WRITER_TOOL_KEY.encode())
            if raw:
                return raw.decode("utf-8", "replace")
            for key, tool in TOOL_MARKER_KEYS:
                if txn.get(key.encode()) is not None:
                    return tool
    finally:
        env.close()
    return "tools/create_lmdb.py or tools/synth.py"


def check_not_partial(path: str | Path) -> None:
    """Refuse the unfinished output of an interrupted write, whatever path names it: the
    ``<out>.partial`` folder, a file inside it (``data.mdb``, ``lock.mdb``) or a symbolic link to either.

    Raises:
        PartialLmdbError: naming the path, the tool that writes it and the fix (``--resume``).
    """
    given = Path(path)
    for candidate in (given, given.resolve()):
        folder = candidate.parent if candidate.is_file() else candidate
        if folder.name.endswith(PARTIAL_SUFFIX) and folder.is_dir():
            tool = partial_writer_tool(folder)
            final = folder.with_name(folder.name[:-len(PARTIAL_SUFFIX)])
            raise PartialLmdbError(f"{given} is the incomplete output of an interrupted write: rerun with "
                                   f"--resume ({tool} with the same arguments plus --resume) to finish it "
                                   f"as {final}, and use that.")


def lmdb_dir(path: str | Path, allow_partial: bool = False) -> Path:
    """The folder of an LMDB given the folder or its ``data.mdb``; raises :class:`LmdbNotFoundError`,
    or :class:`PartialLmdbError` for the unfinished output of an interrupted write (unless
    ``allow_partial``, to inspect one)."""
    path = Path(path)
    if not allow_partial:
        check_not_partial(path)
    if path.name == "data.mdb" and path.is_file():
        path = path.parent
    if not (path / "data.mdb").is_file():
        what = f"does not exist{relative_note(path)}" if not path.exists() else "holds no data.mdb"
        raise LmdbNotFoundError(f"{path} {what}: expected an LMDB folder (with data.mdb). Check the path, "
                                f"or create one with tools/create_lmdb.py (from image crops) or tools/synth.py "
                                f"(synthetic words).")
    return path


def read_num_samples(txn: lmdb.Transaction, path: Path) -> int:
    """The ``num-samples`` value of an open LMDB (0 if the key is absent in an empty DB)."""
    raw = txn.get(NUM_SAMPLES_KEY)
    if raw is None:
        if txn.stat()["entries"] == 0:
            return 0
        raise LmdbError(f"{path} is an LMDB but has no 'num-samples' key: it is not in the STR format "
                        f"(num-samples, image-%09d, label-%09d). Re-create it with tools/create_lmdb.py.")
    try:
        return int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise LmdbError(f"{path}: 'num-samples' is {raw[:40]!r}, not an integer. The LMDB is damaged; "
                        f"re-create it.") from None


def lmdb_num_samples(path: str | Path) -> int:
    """The ``num-samples`` of the LMDB at ``path`` (the raw record count), without reading labels."""
    path = lmdb_dir(path)
    with ENV_CACHE.begin(path) as txn:
        return read_num_samples(txn, path)


def iter_raw_records(path: str | Path) -> Iterator[tuple[bytes, str]]:
    """Every ``(image-%09d value, label-%09d value)`` pair of the LMDB at ``path``, in key order: the
    encoded image bytes and the stored label (UTF-8, undecodable bytes replaced; ``""`` when missing)."""
    path = lmdb_dir(path)
    prefix = b"image-"
    with ENV_CACHE.begin(path) as txn:
        cursor = txn.cursor()
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                break
            label = txn.get(b"label-" + key[len(prefix):])
            yield value, (label.decode("utf-8", "replace") if label is not None else "")


def _scan_labels(txn: lmdb.Transaction, num_samples: int) -> Iterator[tuple[int, bytes]]:
    """Yield (index, raw label) for every ``label-%09d`` key with 1 <= index <= num_samples, in order."""
    cursor = txn.cursor()
    prefix = b"label-"
    if not cursor.set_range(prefix + b"000000001"):
        return
    for key, value in cursor:
        if not key.startswith(prefix):
            break
        try:
            index = int(key[len(prefix):])
        except ValueError:
            continue
        if index > num_samples:
            break
        yield index, value


class LmdbDataset(RecordDataset):
    """An STR LMDB (``num-samples``, ``image-%09d``, ``label-%09d``, 1-based).

    All labels are read once at construction (one cursor pass) and passed through ``label_filter``;
    records whose filtered label is ``None`` are dropped (counted in :attr:`num_filtered`), records
    whose label is missing or not UTF-8 are skipped as corrupt (or raise when ``strict``). The kept
    labels are stored as one UTF-8 blob plus offsets, which costs little memory and is not copied
    page by page into forked workers the way a list of millions of strings is.

    Args:
        path: the LMDB folder (or its ``data.mdb``).
        label_filter: ``raw label -> cleaned label or None``; ``None`` keeps every label as it is.
        channels: 1 (gray, items H×W) or 3 (RGB, items H×W×3).
        strict: raise :class:`CorruptRecordError` on an unusable record instead of skipping it.
        extra_keys: extra per-record keys the caller needs (``<key>-%09d``, read with :meth:`get_extra`);
            checked on the first kept record, so a DB written without them fails at once.
        geometry: also read each record's word geometry (``geom-%09d``, see :func:`decode_geometry`);
            implies ``"geom"`` in ``extra_keys``. A record whose geometry is missing or malformed is
            unusable (skipped and counted, or raises when ``strict``).
        max_pixels: a record whose image header announces more pixels is unusable, refused without
            decoding it (``None``: no limit of strkit's own; :mod:`strkit.data.image_limits`).
        allow_partial: open the unfinished ``<out>.partial`` of an interrupted write (to inspect it);
            by default it is refused with :class:`PartialLmdbError`, so it is never trained on by mistake.

    Items: ``(image uint8 H×W or H×W×3 RGB, label str)``; with ``geometry``
    ``(image, label, geometry dict)``.
    """

    def __init__(self, path: str | Path, label_filter: LabelFilter | None = None, channels: int = 3,
                 strict: bool = False, extra_keys: Sequence[str] = (), geometry: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 allow_partial: bool = False) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        self.path = lmdb_dir(path, allow_partial=allow_partial)
        self.channels = channels
        self.max_pixels = max_pixels
        self.strict = strict
        self.geometry = bool(geometry)
        keys = list(extra_keys)
        if self.geometry and GEOMETRY_KEY not in keys:
            keys.append(GEOMETRY_KEY)
        self.extra_keys = tuple(keys)
        self._init_corrupt_tracking()
        self.num_filtered = 0
        with ENV_CACHE.begin(self.path) as txn:
            self.num_records = read_num_samples(txn, self.path)
            self._read_labels(txn, label_filter)
            for key in self.extra_keys:
                if len(self) and txn.get(record_key(key, self.record_index(0))) is None:
                    hint = ""
                    if key == GEOMETRY_KEY:
                        hint = (" Word geometry is written by the synthetic generator: regenerate this LMDB "
                                "with tools/synth.py --geometry, or set 'geometry: false' on this source.")
                    raise LmdbError(f"{self.path} has no '{key}-%09d' records (checked on record "
                                    f"{self.record_index(0)}); it was written without that extra key.{hint}")

    def _read_labels(self, txn: lmdb.Transaction, label_filter: LabelFilter | None) -> None:
        """Fill ``_indices`` (1-based record index per item), ``_offsets`` and ``_label_blob``."""
        indices = array("q")
        ends = array("q", [0])
        blob = bytearray()
        expected = 1
        for index, raw in _scan_labels(txn, self.num_records):
            if index > expected:
                self._drop(expected, index - expected, "label key is missing")
            expected = index + 1
            try:
                label = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._drop(index, 1, f"label is not UTF-8 ({raw[:40]!r})")
                continue
            kept = self._filter_label(label, label_filter)
            if kept is None:
                continue
            indices.append(index)
            blob += kept.encode("utf-8")
            ends.append(len(blob))
        if self.num_records >= expected:
            self._drop(expected, self.num_records + 1 - expected, "label key is missing")
        self._indices = np.frombuffer(indices, dtype=np.int64) if indices else np.zeros(0, np.int64)
        self._offsets = np.frombuffer(ends, dtype=np.int64)
        self._label_blob = bytes(blob)

    def _drop(self, first: int, count: int, reason: str) -> None:
        """Leave out ``count`` records from index ``first`` on (their label is unusable)."""
        more = f" (and the {count - 1} following)" if count > 1 else ""
        self._note_bad(f"{self.path} record {first}{more}", reason)
        self._dropped += count

    def __len__(self) -> int:
        return len(self._indices)

    def record_index(self, i: int) -> int:
        """The 1-based LMDB index of item ``i``."""
        return int(self._indices[i])

    def label(self, i: int) -> str:
        """The (cleaned) label of item ``i``, without touching the image."""
        return self._label_blob[self._offsets[i]:self._offsets[i + 1]].decode("utf-8")

    @property
    def labels(self) -> list[str]:
        """The cleaned labels of the kept records, in order (a new list on every call)."""
        ends = self._offsets.tolist()
        blob = self._label_blob
        return [blob[a:b].decode("utf-8") for a, b in zip(ends, ends[1:], strict=False)]

    def _describe(self, i: int) -> str:
        return f"{self.path} record {self.record_index(i)}"

    def _load(self, i: int) -> tuple[Any, ...]:
        index = self.record_index(i)
        with ENV_CACHE.begin(self.path) as txn:
            data = txn.get(record_key("image", index))
            geom_raw = txn.get(record_key(GEOMETRY_KEY, index)) if self.geometry else None
        if data is None:
            raise BadRecord("image key is missing")
        img = self._decode(data, f"image bytes ({len(data)} bytes) cannot be decoded")
        if not self.geometry:
            return img, self.label(i)
        if geom_raw is None:
            raise BadRecord(f"'{GEOMETRY_KEY}' key is missing (regenerate with tools/synth.py --geometry)")
        geom = decode_geometry(geom_raw)
        if geom is None:
            raise BadRecord(f"'{GEOMETRY_KEY}' record is not valid geometry JSON ({geom_raw[:60]!r})")
        return img, self.label(i), geom

    def raw_image(self, i: int) -> bytes | None:
        """The stored (encoded) image bytes of item ``i``, or ``None`` if the key is missing."""
        return self.get_extra(i, "image")

    def get_extra(self, i: int, key: str) -> bytes | None:
        """The value of extra key ``<key>-%09d`` for item ``i``, or ``None`` if that record has none."""
        with ENV_CACHE.begin(self.path) as txn:
            return txn.get(record_key(key, self.record_index(i)))

    def get_meta(self, key: str) -> bytes | None:
        """A DB-level value written with :meth:`LmdbWriter.put_meta`, or ``None``."""
        with ENV_CACHE.begin(self.path) as txn:
            return txn.get(key.encode())
