"""The ``randaug`` STR augmentation preset: every op runs, N and M act, options are checked."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import render_word

from strkit.data.augment import AUGMENTATIONS
from strkit.data.str_augment import _curve_class, _shrink_class, str_ops
from strkit.data.transforms import ImageTransform, build_augmentation


@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_and_dtype(channels):
    img = render_word("hello", np.random.default_rng(0), h=32, w=128)
    if channels == 1:
        img = img[:, :, 0].copy()
    for op in str_ops(channels, m=10):
        out = op(image=img)["image"]
        assert out.shape == img.shape and out.dtype == np.uint8, type(op).__name__


def test_curve_bends_a_horizontal_line():
    img = np.zeros((32, 101), np.uint8)
    img[16] = 255
    out = _curve_class()(bend=0.3).apply(img, shift=8.0)
    rows = out.argmax(axis=0)
    assert rows[0] == 16 and rows[-1] == 16 and rows[50] == 24  # ends stay, the middle moves by the shift


def test_shrink_keeps_the_centre_and_scales():
    img = np.zeros((32, 100), np.uint8)
    img[:, 40:60] = 255
    out = _shrink_class()(amount=0.5).apply(img, sx=0.5, sy=1.0)
    cols = np.flatnonzero(out[16] > 127)
    assert abs(cols.mean() - 49.5) < 1.5 and 8 <= len(cols) <= 12


def test_randaug_is_registered_seeded_and_changes_images():
    assert "randaug" in AUGMENTATIONS.names()
    img = render_word("world", np.random.default_rng(1), h=32, w=128)[:, :, 0].copy()
    a = build_augmentation("randaug", channels=1, seed=3, options={"n": 2, "m": 7})
    b = build_augmentation("randaug", channels=1, seed=3, options={"n": 2, "m": 7})
    outs_a = [a(img) for _ in range(8)]
    outs_b = [b(img) for _ in range(8)]
    assert all(np.array_equal(x, y) for x, y in zip(outs_a, outs_b, strict=True))  # same seed, same draws
    assert sum(not np.array_equal(x, img) for x in outs_a) >= 6


def test_randaug_magnitude_zero_changes_little_and_bad_options_fail():
    img = render_word("stone", np.random.default_rng(2), h=32, w=128)[:, :, 0].copy()
    weak = build_augmentation("randaug", channels=1, seed=0, options={"n": 1, "m": 0})
    diffs = [np.abs(weak(img).astype(int) - img).mean() for _ in range(20)]
    strong = build_augmentation("randaug", channels=1, seed=0, options={"n": 3, "m": 10})
    strong_diffs = [np.abs(strong(img).astype(int) - img).mean() for _ in range(20)]
    assert np.median(diffs) < np.median(strong_diffs)
    with pytest.raises(ValueError, match="magnitude"):
        build_augmentation("randaug", options={"m": 11})
    with pytest.raises(ValueError, match="at least 1"):
        build_augmentation("randaug", options={"n": 0})
    with pytest.raises(ValueError, match="augment_options"):
        build_augmentation("light", options={"n": 2})


def test_image_transform_with_randaug_options():
    tf = ImageTransform(32, 128, channels=1, augment="randaug", seed=0, augment_options={"n": 2, "m": 5})
    x = tf(render_word("paper", np.random.default_rng(4), h=40, w=150))
    assert tuple(x.shape) == (1, 32, 128) and float(x.min()) >= -1 and float(x.max()) <= 1


def test_randaug_follows_per_sample_seeds():
    """Exact resume with augmentation reseeds each sample (SeededIndex): randaug's own ops must obey it."""
    img = render_word("music", np.random.default_rng(5), h=32, w=128)[:, :, 0].copy()
    aug = build_augmentation("randaug", channels=1, seed=0, options={"n": 3, "m": 9})
    outs = []
    for _ in range(2):
        row = []
        for s in range(6):
            aug.seed_sample(100 + s)
            row.append(aug(img))
        outs.append(row)
    assert all(np.array_equal(a, b) for a, b in zip(*outs, strict=True))
    assert len({x.tobytes() for x in outs[0]}) > 3


def test_randaug_pickles_for_spawn_started_loader_workers():
    """A spawn-started DataLoader worker (macOS, Windows, a worker of ``tune.py --jobs``) pickles the
    transform: the lazily built ``Curve``/``Shrink`` classes must be found again by name."""
    import pickle

    import strkit.data.str_augment as module

    assert module.Curve is _curve_class() and module.Shrink is _shrink_class()
    aug = build_augmentation("randaug", channels=1, seed=3, options={"n": 3, "m": 8})
    clone = pickle.loads(pickle.dumps(aug))
    img = render_word("pickle", np.random.default_rng(2), h=32, w=128)[:, :, 0].copy()
    assert all(np.array_equal(aug(img), clone(img)) for _ in range(4))  # same seed, same draws
    with pytest.raises(AttributeError):
        module.NoSuchTransform  # noqa: B018
