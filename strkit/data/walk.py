"""Walking a folder tree that may hold symbolic links, each real folder once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def walk_once(root: str | Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk(root, followlinks=True)`` that enters each real folder once (a link cycle is not walked
    twice), visiting subfolders in sorted order. Yields ``(folder, dirnames, filenames)``; emptying
    ``dirnames`` (``dirnames[:] = []``) keeps the walk out of that folder's subfolders."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        yield Path(dirpath), dirnames, filenames
