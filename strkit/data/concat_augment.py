"""Crop concatenation (RecConAug / TextConAug style): two word crops of one source side by side as one sample.

With probability ``p`` an item is joined on its right by another random item of the same source, scaled
to its height, and the labels are concatenated. The pair is only formed when the joined crop is not wider
than ``max_aspect`` (width / height; the model input's own ratio, so the join is not squeezed) and the
joined label fits ``max_length``; otherwise the item is returned alone. This shows the model word
boundaries and context it rarely sees in single-word crops at no rendering cost.

Enabled per training source with ``concat_p`` in the data config. In the training loader each item's pairing
is drawn from that sample's seed (the mixed sampler's per-sample seed, handed down through
:meth:`seed_sample`), so it does not depend on the loader workers and a resumed run pairs exactly as an
uninterrupted one; items read without a seed draw from a per-worker generator.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

#: Keeps the pairing draws apart from the image augmentation, which is seeded from the same sample seed.
_PAIRING_KEY = 0xC0CA7


class ConcatAugment(Dataset):
    """Wraps a dataset of ``(image uint8 H×W[×C], label, ...)`` items (see the module docstring).

    Args:
        dataset: the source dataset.
        p: probability of trying a pair for an item.
        max_aspect: widest joined crop, as width / height.
        max_length: longest joined label.
        seed: base seed; each process (DataLoader worker) draws from its own generator, seeded from the
            worker's seed, so a run is reproducible for a given loader seed.
    """

    def __init__(self, dataset: Dataset, p: float, max_aspect: float, max_length: int, seed: int = 0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"concat_p must lie in [0, 1], got {p}")
        self.dataset = dataset
        self.p = float(p)
        self.max_aspect = float(max_aspect)
        self.max_length = int(max_length)
        self.seed = int(seed)
        self._rng: np.random.Generator | None = None
        self._pid = -1
        self._sample_seed: int | None = None
        self.pairs = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # num_corrupt, labels ... of the wrapped source
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _generator(self) -> np.random.Generator:
        if self._rng is None or self._pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self.seed, info.seed % 2**32 if info is not None else 0])
            self._pid = os.getpid()
        return self._rng

    def seed_sample(self, seed: int) -> None:
        """Draw the next item's pairing from ``seed`` (the sampler's seed of that sample)."""
        self._sample_seed = int(seed)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        if self._sample_seed is not None:
            rng = np.random.default_rng([_PAIRING_KEY, self.seed, self._sample_seed])
            self._sample_seed = None
        else:
            rng = self._generator()
        if self.p <= 0 or rng.random() >= self.p or len(item) != 2:  # items with geometry stay single
            return item
        other = self.dataset[int(rng.integers(len(self)))]
        joined = join_crops(item[0], other[0], self.max_aspect)
        label = item[1] + other[1]
        if joined is None or len(label) > self.max_length:
            return item
        self.pairs += 1
        return joined, label


def join_crops(a: np.ndarray, b: np.ndarray, max_aspect: float) -> np.ndarray | None:
    """``b`` scaled to ``a``'s height and placed on its right, or ``None`` when the result would be wider
    than ``max_aspect`` × its height. Gray and RGB crops can be mixed (the result takes ``a``'s format)."""
    h = a.shape[0]
    wb = max(1, round(b.shape[1] * h / max(b.shape[0], 1)))
    if (a.shape[1] + wb) / h > max_aspect:
        return None
    b = cv2.resize(b, (wb, h), interpolation=cv2.INTER_AREA if b.shape[0] > h else cv2.INTER_LINEAR)
    if a.ndim == 2 and b.ndim == 3:
        b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    elif a.ndim == 3 and b.ndim == 2:
        b = cv2.cvtColor(b, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(np.concatenate([a, b], axis=1))
