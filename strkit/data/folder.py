"""Folder datasets: image files plus a ground-truth list.

Two inputs are accepted:

* a folder holding ``labels.tsv`` (the layout of ``shared/benchmarks``: ``images/...`` beside it), or
* a ground-truth file of the common ``path<TAB>label`` form.

Paths in a gt file are relative to the gt file's folder (absolute paths are kept). The separator is
decided once per file: if any line holds a tab, every line must be ``path<TAB>label`` and the label
is everything after the first tab (spaces inside it are kept, e.g. ``AT HIGH``). If no line holds a
tab, the file is read in the space-separated ``path label`` form: the path ends at the first space
and the label is the rest of the line (so paths with spaces need the tab form). Empty lines are
ignored; a UTF-8 byte-order mark and CR line ends are removed; a line without any separator is an
error naming the file and line. A folder on the image path that a copy turned from a symbolic link
into a small text file holding the link target (git without symlink support) is followed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from strkit.config import relative_note
from strkit.data.image_limits import DEFAULT_MAX_PIXELS
from strkit.data.lmdb.format import LabelFilter
from strkit.data.lmdb.reader import BadRecord, RecordDataset

log = logging.getLogger(__name__)

LABELS_FILE = "labels.tsv"


class GtFormatError(ValueError):
    """A ground-truth file cannot be parsed; the message names the file and line."""


class FolderNotFoundError(FileNotFoundError):
    """The folder dataset or gt file does not exist or holds no ``labels.tsv``."""


def resolve_gt_file(root_or_gt: str | Path) -> Path:
    """The gt file of a folder dataset (``<root>/labels.tsv``) or the gt file itself."""
    path = Path(root_or_gt)
    if path.is_dir():
        gt = path / LABELS_FILE
        if not gt.is_file():
            raise FolderNotFoundError(f"{path} holds no {LABELS_FILE}: a folder dataset needs "
                                      f"{gt} with one 'relative/path<TAB>label' line per image "
                                      f"(or pass the gt file itself).")
        return gt
    if not path.is_file():
        raise FolderNotFoundError(f"{path} does not exist{relative_note(path)}: expected a folder with "
                                  f"{LABELS_FILE} or a gt file of 'path<TAB>label' lines.")
    return path


def read_gt_file(path: str | Path) -> list[tuple[Path, str]]:
    """Parse a gt file into ``(image path, label)`` pairs, in file order (see the module docstring).

    Raises:
        GtFormatError: the file is not UTF-8, or a line has no separator.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GtFormatError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                            f"UTF-8.") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    sep = "\t" if any("\t" in line for line in lines) else " "
    base = path.parent
    folders: dict[str, Path] = {}
    items: list[tuple[Path, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if sep not in line:
            form = "path<TAB>label" if sep == "\t" else "path label"
            raise GtFormatError(f"{path}:{number}: expected '{form}', got {line[:80]!r}. Fix or remove "
                                f"the line.")
        rel, label = line.split(sep, 1)
        if not rel:
            raise GtFormatError(f"{path}:{number}: empty image path in {line[:80]!r}")
        folder, _, name = rel.replace("\\", "/").rpartition("/")
        if folder not in folders:
            folders[folder] = _follow_link_stubs(base, folder)
        items.append((folders[folder] / name, label))
    return items


def _follow_link_stubs(base: Path, rel_folder: str) -> Path:
    """``base / rel_folder``, following symbolic links that a copy stored as small text files.

    Git checkouts without symlink support (and some archive tools) turn a link such as
    ``IC13_857/images -> ../IC13_1095/images`` into a file holding the target path. A path component
    that is such a file, naming an existing folder relative to its own folder, is followed.
    """
    cur = base
    for part in Path(rel_folder).parts:
        nxt = cur / part
        if nxt.is_file() and nxt.stat().st_size < 1024:
            try:
                target = cur / nxt.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                target = None
            if target is not None and target.is_dir():
                log.debug("%s is a symbolic link stored as a text file; following it to %s", nxt, target)
                nxt = target
        cur = nxt
    return cur


class FolderDataset(RecordDataset):
    """Images on disk listed in ``labels.tsv`` (or any gt file); the item contract of LmdbDataset.

    Args:
        root_or_gt: a folder holding ``labels.tsv``, or a gt file of ``path<TAB>label`` lines.
        label_filter: ``raw label -> cleaned label or None`` (``None`` drops the item, counted in
            :attr:`num_filtered`).
        channels: 1 (gray, items H×W) or 3 (RGB, items H×W×3).
        strict: raise :class:`~strkit.data.lmdb.format.CorruptRecordError` on a missing or undecodable image
            instead of skipping it (skips are counted in :attr:`num_corrupt`).
        max_pixels: an image whose header announces more pixels is unusable, refused without decoding
            it (``None``: no limit of strkit's own; :mod:`strkit.data.image_limits`).

    Items: ``(image uint8 H×W or H×W×3 RGB, label str)``.
    """

    def __init__(self, root_or_gt: str | Path, label_filter: LabelFilter | None = None, channels: int = 3,
                 strict: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        self.gt_file = resolve_gt_file(root_or_gt)
        self.path = Path(root_or_gt)
        self.channels = channels
        self.max_pixels = max_pixels
        self.strict = strict
        self._init_corrupt_tracking()
        items = read_gt_file(self.gt_file)
        self.num_records = len(items)
        self.num_filtered = 0
        self.paths: list[Path] = []
        self.labels: list[str] = []
        for image_path, label in items:
            kept = self._filter_label(label, label_filter)
            if kept is not None:
                self.paths.append(image_path)
                self.labels.append(kept)

    def __len__(self) -> int:
        return len(self.paths)

    def _describe(self, i: int) -> str:
        return f"{self.paths[i]} (item {i} of {self.gt_file})"

    def _load(self, i: int) -> tuple[np.ndarray, str]:
        try:
            data = self.paths[i].read_bytes()
        except OSError as exc:
            raise BadRecord(f"cannot read the image file ({exc.strerror or exc})") from None
        return self._decode(data, f"not a decodable image ({len(data)} bytes)"), self.labels[i]
