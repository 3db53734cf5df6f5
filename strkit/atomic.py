"""Atomic file writes: a temporary file in the target's folder, then one rename over the target.

A crash (or SIGKILL) at any moment leaves either the old file or the new one, never a torn file, so a
checkpoint, a cache or a report that a later run reads is whole or absent. The temporary file is named
``.<name>.<8 random characters>.tmp`` beside the target (hidden, and never matched by the target's own
name pattern) and gets the permissions of any plain new file (``0666`` minus the umask), not the ``0600``
that :func:`tempfile.mkstemp` creates. Torch-free: every layer may use it.

    with atomic_write(path, "w") as fh:        # a file object
        fh.write(text)
    with atomic_path(path) as tmp:             # a path, for writers that open the file themselves
        fig.savefig(tmp)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Prefix and suffix of the temporary files (``.<name>.<random>.tmp``).
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def process_umask() -> int:
    """The process's file-creation mask (read from ``/proc`` where possible, so that it is not changed
    even for a moment; else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permissions a plain new file gets (``0666`` minus the umask, usually ``0644``)."""
    return 0o666 & ~process_umask()


def _temporary(path: Path) -> tuple[int, Path]:
    """An open descriptor and the path of a new temporary file beside ``path`` (folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, new_file_mode())
    return fd, Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (the file exists, empty); when the block ends without an
    exception it is renamed over ``path``, else removed."""
    path = Path(path)
    fd, tmp = _temporary(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None, fsync: bool = True) -> Iterator[IO[Any]]:
    """Yield a file object (``mode`` ``"wb"`` or ``"w"``) on a temporary file beside ``path``; when the
    block ends without an exception the file is flushed, fsynced (``fsync``) and renamed over ``path``,
    else removed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        if mode == "w":
            fh: IO[Any] = os.fdopen(fd, mode, encoding=encoding or "utf-8", newline=newline)
        else:
            fh = os.fdopen(fd, mode)
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "w", fsync=fsync) as fh:
        fh.write(text)
    return Path(path)
