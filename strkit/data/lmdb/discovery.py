"""Every LMDB below a folder, found and opened as one dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.utils.data

from strkit.config import relative_note
from strkit.data.lmdb.format import PARTIAL_SUFFIX, LmdbNotFoundError
from strkit.data.lmdb.reader import LmdbDataset, check_not_partial, partial_writer_tool
from strkit.data.walk import walk_once

log = logging.getLogger(__name__)


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
    for here, dirnames, filenames in walk_once(root):
        if "data.mdb" in filenames:
            if here.name.endswith(PARTIAL_SUFFIX):
                log.warning("ignoring unfinished LMDB %s (finish it with %s --resume)", here,
                            partial_writer_tool(here))
            else:
                found.append(here)
            dirnames[:] = []  # an LMDB folder is a leaf
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
