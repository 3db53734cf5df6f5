"""The per-user cache folder of strkit (font audits, benchmark fingerprints ...)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$STRKIT_CACHE_DIR`` or ``$XDG_CACHE_HOME/strkit`` or ``~/.cache/strkit`` (not created here)."""
    if os.environ.get("STRKIT_CACHE_DIR"):
        return Path(os.environ["STRKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "strkit"


def private_cache_folder(name: str) -> Path:
    """``cache_dir() / name``, created readable by this user only (0700) if it does not exist."""
    folder = cache_dir() / name
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder
