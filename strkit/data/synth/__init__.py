"""MJSynth-style synthetic word images: renderer, on-the-fly dataset and LMDB generator.

Importing this package does no work: fonts are scanned and the lexicon loaded only when a
:class:`Renderer` is built. The ``synth`` data source kind is registered in :mod:`strkit.data.sources`.
Main entry points::

    from strkit.data.synth import Renderer, SynthDataset, load_synth_config

    renderer = Renderer(load_synth_config("mjsynth"))
    sample = renderer.render(7, seed=0, geometry=True)     # .image, .label, .text, .font, .geometry

The command line is ``tools/synth.py`` (``strkit-synth``); presets live in ``configs/synth/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from strkit.data.synth.config import SynthConfig, load_synth_config
    from strkit.data.synth.dataset import SynthDataset
    from strkit.data.synth.generate import generate_lmdb
    from strkit.data.synth.renderer import Renderer, SynthSample

_EXPORTS = {
    "SynthConfig": "strkit.data.synth.config",
    "load_synth_config": "strkit.data.synth.config",
    "Renderer": "strkit.data.synth.renderer",
    "SynthSample": "strkit.data.synth.renderer",
    "SynthDataset": "strkit.data.synth.dataset",
    "generate_lmdb": "strkit.data.synth.generate",
}

__all__ = ["Renderer", "SynthConfig", "SynthDataset", "SynthSample", "generate_lmdb", "load_synth_config"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'strkit.data.synth' has no attribute {name!r}")
