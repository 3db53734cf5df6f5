"""The ONNX exports of checkpoints, made once and reused: ``<checkpoint>.onnx`` beside the checkpoint or,
when that folder is read-only, ``<digest>.onnx`` in a per-user cache folder that must be private to the
user. An export is reused only while the SHA-256 of the checkpoint stored in its metadata matches.
Making an export is :func:`strkit.export.onnx.cached_onnx_export`; this module finds and vets them.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from strkit.inference.metadata import ExportedModelError


class OnnxCacheError(ExportedModelError):
    """The per-user ONNX cache folder (or a file in it) is not private to the current user, so it is not
    used: another local user could have planted a model there."""


PRIVATE_DIR_MODE = 0o700


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def onnx_cache_dir() -> Path:
    """The per-user folder of ONNX exports made for checkpoints whose own folder is read-only:
    ``$XDG_CACHE_HOME/strkit/onnx`` or ``~/.cache/strkit/onnx``; without a usable home, a folder named
    with the user id in the system temporary folder (``strkit-onnx-<uid>``)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if base and Path(base).is_absolute():
        return Path(base) / "strkit" / "onnx"
    home = os.path.expanduser("~")
    if home not in ("~", "", "/"):
        return Path(home) / ".cache" / "strkit" / "onnx"
    if hasattr(os, "getuid"):
        user = str(os.getuid())
    else:  # pragma: no cover - not POSIX
        import getpass

        user = getpass.getuser()
    return Path(tempfile.gettempdir()) / f"strkit-onnx-{user}"


def check_private(path: Path, kind: str) -> None:
    """Raise :class:`OnnxCacheError` unless ``path`` (not a link) is owned by the current user and not
    writable by group or others (POSIX; elsewhere nothing is checked)."""
    if not hasattr(os, "getuid"):
        return
    st = path.lstat()
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif st.st_uid != os.getuid():
        problem = f"belongs to user id {st.st_uid}, not to you (user id {os.getuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        fix = f"chmod 700 {path}" if kind == "folder" else f"remove {path}"
        raise OnnxCacheError(f"ONNX cache {kind} {path} {problem}: it is not used, since another user could "
                             f"have put a model there. Check it, then {fix} (or set XDG_CACHE_HOME)")


def private_cache_dir(create: bool) -> Path | None:
    """:func:`onnx_cache_dir`, created 0700 when ``create``; ``None`` when it does not exist and is not to
    be created. Raises :class:`OnnxCacheError` when it is not private."""
    folder = onnx_cache_dir()
    if not folder.exists() and not folder.is_symlink():
        if not create:
            return None
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile (by another process); checked below
    check_private(folder, "folder")
    return folder


def owned_like(target: Path, checkpoint: Path) -> bool:
    """Whether ``target`` belongs to the current user or to the checkpoint's owner and is not writable by
    others (an export beside a checkpoint in a shared folder such as ``/tmp`` may be anyone's)."""
    if not hasattr(os, "getuid"):
        return True
    st = target.lstat()
    return (stat.S_ISREG(st.st_mode) and st.st_uid in (os.getuid(), checkpoint.stat().st_uid)
            and not st.st_mode & 0o002)


def export_matches(target: Path, digest: str, private: bool = False) -> bool:
    """Whether ``target`` is an ONNX export of the checkpoint whose SHA-256 is ``digest`` (stored in its
    metadata). ``private``: a file in the cache folder must also be the user's own (else
    :class:`OnnxCacheError`)."""
    from strkit.inference.onnx_backend import read_onnx_metadata

    if not target.is_file():
        return False
    if private:
        check_private(target, "file")
    try:
        meta = read_onnx_metadata(target)
    except ExportedModelError:
        return False
    old = meta.extra.get("source_checkpoint")
    return isinstance(old, dict) and old.get("sha256") == digest



def find_export(checkpoint: Path, digest: str) -> Path | None:
    """The reusable ONNX export of ``checkpoint`` (content SHA-256 ``digest``): the file beside it when it
    matches and belongs to the user or the checkpoint's owner, else the matching file of the private
    cache folder, else ``None``. Raises :class:`OnnxCacheError` when the cache folder is not private."""
    beside = beside_path(checkpoint)
    if export_matches(beside, digest) and owned_like(beside, checkpoint):
        return beside
    cache = private_cache_dir(create=False)
    if cache is not None and export_matches(cache / f"{digest}.onnx", digest, private=True):
        return cache / f"{digest}.onnx"
    return None


def beside_path(checkpoint: Path) -> Path:
    """``<checkpoint>.onnx``: where a checkpoint's export is written first."""
    return Path(f"{checkpoint}.onnx")
