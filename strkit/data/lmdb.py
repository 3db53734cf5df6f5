"""LMDB datasets in the format every STR codebase shares, and a streaming writer for it.

Format (the one of the four-stage benchmark, PARSeq, ABINet, CRNN ...): keys ``num-samples`` (ASCII
integer), ``image-%09d`` (encoded image bytes: PNG, JPEG ...) and ``label-%09d`` (UTF-8 text), with
indices starting at 1. Extra per-record keys ``<key>-%09d`` may sit beside them. Existing MJ/ST and
evaluation LMDBs of those projects load as they are.

Word geometry: LMDBs written by ``tools/synth.py --geometry`` also hold ``geom-%09d`` (JSON
``{"top": [[x, y]...], "bottom": [[x, y]...], "width": W, "height": H}``: the word's upper and lower
boundary polylines in continuous pixel coordinates of the stored image, which spans ``[0, W] × [0, H]``).
``LmdbDataset(..., geometry=True)`` reads and checks it with the image (:func:`decode_geometry`).

Reading: the environment is opened lazily, read-only, without lock, readahead or meminit, in the
process that reads. A dataset object never holds an open environment, so it pickles before and after
first use and works with ``fork`` and ``spawn`` DataLoader workers. py-lmdb refuses to open the same
files twice in one process, so open environments live in a small per-process cache keyed by the
data file's identity; a forked child closes the ones it inherited and opens its own.

Writing: :class:`LmdbWriter` streams records into ``<path>.partial``, commits every ``commit_every``
records together with ``num-samples`` (so a killed writer leaves a readable, resumable partial DB),
doubles the map size whenever LMDB reports it full, and renames the folder to ``<path>`` only when
:meth:`LmdbWriter.close` completes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import lmdb
import numpy as np
import torch.utils.data
from PIL import Image

from strkit.config import relative_note
from strkit.data.image_limits import DEFAULT_MAX_PIXELS, ImageTooLargeError, check_encoded

log = logging.getLogger(__name__)

LabelFilter = Callable[[str], "str | None"]
"""Maps a raw label to its cleaned form, or to ``None`` to drop the record."""

NUM_SAMPLES_KEY = b"num-samples"
#: Extra key of the word geometry written by the synthetic generator (:mod:`strkit.data.synth.generate`).
GEOMETRY_KEY = "geom"
PARTIAL_SUFFIX = ".partial"
#: DB-level key where :class:`LmdbWriter` records the tool that writes the LMDB (named when it is unfinished).
WRITER_TOOL_KEY = "strkit-writer-tool"
# Keys by which an unfinished LMDB of an older strkit (without WRITER_TOOL_KEY) shows the tool writing it.
_TOOL_MARKER_KEYS = (("create-lmdb-position", "tools/create_lmdb.py"), ("meta", "tools/synth.py"))
_READ_OPTIONS = {"readonly": True, "lock": False, "readahead": False, "meminit": False, "max_readers": 1024}


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
class LmdbError(RuntimeError):
    """An LMDB could not be read or written. The message names the path and what to do."""


class LmdbNotFoundError(LmdbError, FileNotFoundError):
    """A path that should hold an LMDB (``data.mdb``) does not."""


class PartialLmdbError(LmdbError):
    """A path names the unfinished ``<out>.partial`` output of an interrupted :class:`LmdbWriter`."""


class CorruptRecordError(LmdbError):
    """A record is missing, or its image or label cannot be decoded (raised in strict mode)."""


# ----------------------------------------------------------------------------------------------
# Keys and image decoding
# ----------------------------------------------------------------------------------------------
def record_key(kind: str, index: int) -> bytes:
    """Key of record ``index`` (1-based) for ``kind`` (``image``, ``label`` or an extra key)."""
    return f"{kind}-{index:09d}".encode()


def decode_image(data: bytes, channels: int = 3, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """Decode encoded image bytes (PNG, JPEG, BMP, GIF, ...).

    Args:
        data: the encoded file content.
        channels: 1 for gray, 3 for RGB.
        max_pixels: refuse images whose header announces more pixels (``None``: no limit of strkit's
            own; see :mod:`strkit.data.image_limits`), before decoding them.

    Returns:
        uint8 array H×W (``channels=1``) or H×W×3 in RGB order (``channels=3``); ``None`` when the bytes
        are empty or not a decodable image. OpenCV decodes; PIL is the fallback for what it cannot read.

    Raises:
        ImageTooLargeError: the image has more than ``max_pixels`` pixels (nothing was decoded).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if not data:
        return None
    check_encoded(data, max_pixels)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if img is not None and channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img is None:
        try:
            with Image.open(io.BytesIO(data)) as pil:
                img = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
        except Exception:  # PIL raises many types for bad data; all mean "not an image"
            return None
    if img.size == 0:
        return None
    return img


def decode_geometry(data: bytes | str) -> dict[str, Any] | None:
    """Parse and check one word-geometry record (the ``geom-%09d`` JSON of the synthetic generator).

    Returns:
        ``{"top": n×2 float64 array, "bottom": n×2 float64 array, "width": float, "height": float}``
        (points ``[x, y]`` in continuous pixel coordinates of a ``width × height`` image, point i of
        ``top`` paired with point i of ``bottom``, n >= 2), or ``None`` when the record is not valid
        JSON of that form.
    """
    try:
        record = json.loads(data)
        top = np.asarray(record["top"], dtype=np.float64)
        bottom = np.asarray(record["bottom"], dtype=np.float64)
        width, height = float(record["width"]), float(record["height"])
    except (TypeError, ValueError, KeyError):
        return None
    if (top.ndim != 2 or top.shape[1:] != (2,) or top.shape[0] < 2 or bottom.shape != top.shape
            or not (np.isfinite(top).all() and np.isfinite(bottom).all())
            or not (np.isfinite(width) and np.isfinite(height) and width > 0 and height > 0)):
        return None
    return {"top": top, "bottom": bottom, "width": width, "height": height}


# ----------------------------------------------------------------------------------------------
# Per-process cache of read-only environments
# ----------------------------------------------------------------------------------------------
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


_ENVS = _EnvCache()


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
        _ENVS.purge_stale()
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


# ----------------------------------------------------------------------------------------------
# Shared dataset behaviour: corrupt records are skipped and counted, or raise in strict mode
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------
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
            for key, tool in _TOOL_MARKER_KEYS:
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
    with _ENVS.begin(path) as txn:
        return read_num_samples(txn, path)


def iter_raw_images(path: str | Path) -> Iterator[bytes]:
    """Every stored ``image-%09d`` value (encoded bytes) of the LMDB at ``path``, in key order: all
    records, whatever their label. The read transaction stays open until the iterator is exhausted."""
    path = lmdb_dir(path)
    prefix = b"image-"
    with _ENVS.begin(path) as txn:
        cursor = txn.cursor()
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                break
            yield value


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
        with _ENVS.begin(self.path) as txn:
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
            if label_filter is not None:
                cleaned = label_filter(label)
                if cleaned is None:
                    self.num_filtered += 1
                    continue
                label = cleaned
            indices.append(index)
            blob += label.encode("utf-8")
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
        with _ENVS.begin(self.path) as txn:
            data = txn.get(record_key("image", index))
            geom_raw = txn.get(record_key(GEOMETRY_KEY, index)) if self.geometry else None
        if data is None:
            raise BadRecord("image key is missing")
        try:
            img = decode_image(data, self.channels, self.max_pixels)
        except ImageTooLargeError as exc:
            raise BadRecord(str(exc)) from None
        if img is None:
            raise BadRecord(f"image bytes ({len(data)} bytes) cannot be decoded")
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
        with _ENVS.begin(self.path) as txn:
            return txn.get(record_key(key, self.record_index(i)))

    def get_meta(self, key: str) -> bytes | None:
        """A DB-level value written with :meth:`LmdbWriter.put_meta`, or ``None``."""
        with _ENVS.begin(self.path) as txn:
            return txn.get(key.encode())


def find_lmdbs(root: str | Path) -> list[Path]:
    """Every LMDB folder (holding ``data.mdb``) at or under ``root``, sorted; ``*.partial`` folders below
    ``root`` are skipped with a warning, and ``root`` itself being one raises :class:`PartialLmdbError`.

    Symbolic links are followed once (a link cycle is not walked twice).
    """
    root = Path(root)
    check_not_partial(root)
    if root.name == "data.mdb" and root.is_file():
        return [root.parent]
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        if "data.mdb" in filenames:
            if dirpath.endswith(PARTIAL_SUFFIX):
                log.warning("ignoring unfinished LMDB %s (finish it with %s --resume)", dirpath,
                            partial_writer_tool(Path(dirpath)))
            else:
                found.append(Path(dirpath))
            dirnames[:] = []  # an LMDB folder is a leaf
        else:
            dirnames.sort()
    return sorted(found)


def open_lmdb_tree(root: str | Path, **kwargs: object) -> torch.utils.data.Dataset:
    """Open ``root`` as one LMDB, or every LMDB under it at any depth (e.g. ``training/MJ/MJ_train``).

    Args:
        root: an LMDB folder, or a folder holding LMDB folders.
        **kwargs: passed to :class:`LmdbDataset` (``label_filter``, ``channels``, ``strict`` ...).

    Returns:
        An :class:`LmdbDataset`, or a ``ConcatDataset`` of them in sorted path order.
    """
    paths = find_lmdbs(root)
    if not paths:
        what = (f"does not exist{relative_note(root)}" if not Path(root).exists()
                else "holds no LMDB (no data.mdb below it)")
        raise LmdbNotFoundError(f"{root} {what}. Point the source at an LMDB folder or a folder of them.")
    datasets = [LmdbDataset(p, **kwargs) for p in paths]  # type: ignore[arg-type]
    return datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)


# ----------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------
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
        _ENVS.evict(self.partial)
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
            _ENVS.evict(self.path)
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
