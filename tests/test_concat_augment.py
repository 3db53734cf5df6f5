"""Crop concatenation: joins, refusals and the data-config wiring."""

from __future__ import annotations

import numpy as np
import pytest

from strkit.data.concat_augment import ConcatAugment, join_crops


class _Words:
    def __init__(self, n: int = 10, h: int = 32, w: int = 64, rgb: bool = False) -> None:
        self.items = [(np.full((h, w, 3) if rgb else (h, w), i, np.uint8), f"w{i}") for i in range(n)]
        self.num_corrupt = 7

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_join_scales_to_the_first_height_and_mixes_formats():
    a = np.zeros((32, 50), np.uint8)
    b = np.full((16, 40, 3), 200, np.uint8)
    j = join_crops(a, b, max_aspect=10)
    assert j.shape == (32, 130) and j[:, :50].max() == 0 and j[:, 50:].min() == 200
    assert join_crops(a, b, max_aspect=4.0) is None  # 130 / 32 > 4


def test_pairs_within_limits_only_and_forwards_attributes():
    ds = ConcatAugment(_Words(), p=1.0, max_aspect=6.0, max_length=25, seed=0)
    image, label = ds[3]
    assert image.shape == (32, 128) and label.startswith("w3") and len(label) == 4
    assert ds.num_corrupt == 7 and len(ds) == 10 and ds.pairs == 1
    narrow = ConcatAugment(_Words(), p=1.0, max_aspect=3.0, max_length=25)
    assert narrow[3][1] == "w3"  # 128 / 32 = 4 > 3: alone
    short = ConcatAugment(_Words(), p=1.0, max_aspect=6.0, max_length=3)
    assert short[3][1] == "w3"  # joined label too long
    never = ConcatAugment(_Words(), p=0.0, max_aspect=6.0, max_length=25)
    assert all(never[i][1] == f"w{i}" for i in range(10))
    with pytest.raises(ValueError, match="concat_p"):
        ConcatAugment(_Words(), p=1.5, max_aspect=6.0, max_length=25)


def test_same_seed_same_pairs():
    a = ConcatAugment(_Words(), p=0.5, max_aspect=6.0, max_length=25, seed=4)
    b = ConcatAugment(_Words(), p=0.5, max_aspect=6.0, max_length=25, seed=4)
    labels_a = [a[i % 10][1] for i in range(40)]
    assert labels_a == [b[i % 10][1] for i in range(40)]
    assert 5 < sum(len(x) > 2 for x in labels_a) < 35


def test_data_config_wires_concat(word_folder):
    from strkit.charset import Charset
    from strkit.config import load_config
    from strkit.engine.distributed import DistInfo
    from strkit.engine.run_data import build_run_data

    cfg = load_config("configs/train/crnn_real.yaml", [
        f"data.train=[{{path: {word_folder}, kind: folder, concat_p: 1.0, concat_max_aspect: 8}}]",
        "data.workers=0", "data.val_fraction=0", "train.batch_size=4", "data.img_w=100"])
    data = build_run_data(cfg, Charset.preset(cfg.model.charset), DistInfo(0, 1, 0))
    from conftest import WORDS

    _, labels = next(iter(data.train))
    pairs = {a + b for a in WORDS for b in WORDS}
    assert len(labels) == 4 and all(lab in pairs for lab in labels)  # 100 + 100 px at height 32 fit 8:1
