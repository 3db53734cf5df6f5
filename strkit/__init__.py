"""strkit: scene text recognition with latency-aware neural architecture search.

Importing ``strkit`` is cheap: submodules (and torch) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strkit.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from strkit.api import Recognizer

__all__ = ["Recognizer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Recognizer":
        from strkit.api import Recognizer

        return Recognizer
    raise AttributeError(f"module 'strkit' has no attribute {name!r}")
