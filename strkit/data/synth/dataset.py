"""On-the-fly synthetic training data: a map-style dataset whose item ``i`` is rendered on demand.

Item ``i`` is a pure function of ``(seed, i)`` (the same contract as an LMDB dataset), so a seeded
sampler reproduces a run exactly and any number of DataLoader workers sees the same data. Nothing is
written to disk. The renderer (fonts, lexicon) is built when the dataset is constructed, so a bad
config fails at once; the dataset pickles for ``spawn`` workers (loaded font objects are dropped and
re-opened in the worker).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.utils.data

from strkit.charset import Charset
from strkit.data.synth.config import load_synth_config
from strkit.data.synth.renderer import Renderer, sample_rng

LabelFilter = Callable[[str], "str | None"]


class SynthDataset(torch.utils.data.Dataset):
    """Synthetic word images rendered on the fly.

    Args:
        preset_or_path: ``clean``, ``mjsynth``, ``hard``, ``realistic`` or a YAML file.
        seed: the data seed.
        length: the number of items (sample indices ``0..length-1``).
        channels: 1 (items H×W) or 3 (items H×W×3 RGB).
        label_filter: ``raw label -> cleaned label or None``; a sample whose label it drops is
            replaced by a fresh draw for the same index (still a pure function of ``(seed, i)``).
        overrides: config overrides, ``{"a.b": value}`` or ``["a.b=value"]``.
        charset: render labels in this charset (default: ``text.charset`` of the config).
        font_dirs: extra font folders.

    Items: ``(uint8 image H×W or H×W×3 RGB, label str)``.
    """

    def __init__(self, preset_or_path: str = "mjsynth", seed: int = 0, length: int = 10**9, channels: int = 3,
                 label_filter: LabelFilter | None = None,
                 overrides: Mapping[str, Any] | Sequence[str] | None = None,
                 charset: Charset | str | None = None, font_dirs: Sequence[str | Path] = ()) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        if length < 1 or seed < 0:
            raise ValueError(f"length must be >= 1 and seed >= 0, got length={length} seed={seed}")
        self.preset = str(preset_or_path)
        self.seed = int(seed)
        self.length = int(length)
        self.channels = channels
        self.label_filter = label_filter
        self.cfg = load_synth_config(preset_or_path, overrides)
        self.renderer = Renderer(self.cfg, charset=charset, font_dirs=font_dirs)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        """Item ``i``: (uint8 image H×W or H×W×3 RGB, label)."""
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a synthetic dataset of {self.length} items")
        for attempt in range(32):
            rng = sample_rng(self.seed, i) if attempt == 0 else np.random.Generator(
                np.random.PCG64(np.random.SeedSequence([self.seed, i, attempt])))
            s = self.renderer.render_rng(rng)
            label = s.label if self.label_filter is None else self.label_filter(s.label)
            if label is not None:
                return self._channels(s.image), label
        raise RuntimeError(f"the label filter dropped 32 synthetic labels in a row for item {i}; the synth "
                           f"charset/max_len do not fit the model's (set text.charset and text.max_len)")

    def _channels(self, img: np.ndarray) -> np.ndarray:
        if self.channels == 1 and img.ndim == 3:
            return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        if self.channels == 3 and img.ndim == 2:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        return img

    def __repr__(self) -> str:
        return (f"SynthDataset({self.preset!r}, seed={self.seed}, length={self.length}, "
                f"fonts={len(self.renderer.fonts)}, words={len(self.renderer.text.words)})")
