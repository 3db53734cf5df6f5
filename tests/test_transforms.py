"""Tests of strkit.data.transforms: layouts, dtypes, resizing, padding, augmentation, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strkit.data.augment import AUGMENTATIONS
from strkit.data.transforms import (
    ImageTransform,
    TransformedDataset,
    build_augmentation,
    collate,
    to_channels,
    to_uint8,
)
from strkit.registry import RegistryError

H, W = 32, 128


def _text_like(h: int, w: int, channels: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _check(out: torch.Tensor, channels: int) -> None:
    assert out.shape == (channels, H, W)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= -1.0 and out.max() <= 1.0


# -- layouts and dtypes --------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shape", [(40, 90), (40, 90, 1), (40, 90, 2), (40, 90, 3), (40, 90, 4)])
def test_layouts_give_chw_in_range(shape: tuple[int, ...], channels: int) -> None:
    image = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    _check(ImageTransform(H, W, channels=channels)(image), channels)


def test_white_and_black_map_to_plus_and_minus_one() -> None:
    t = ImageTransform(H, W, channels=3)
    assert torch.equal(t(np.full((10, 30, 3), 255, np.uint8)), torch.ones(3, H, W))
    assert torch.equal(t(np.zeros((10, 30), np.uint8)), -torch.ones(3, H, W))


def test_rgb_to_gray_uses_luma_weights() -> None:
    red = np.zeros((32, 128, 3), np.uint8)
    red[..., 0] = 255  # RGB order: red channel first
    out = ImageTransform(H, W, channels=1)(red)
    assert out.shape == (1, H, W)
    assert out[0, 0, 0].item() == pytest.approx(76 / 127.5 - 1, abs=1e-6)  # 0.299 * 255 = 76.2


def test_rgba_is_composited_over_white() -> None:
    rgba = np.zeros((32, 128, 4), np.uint8)  # black, fully transparent -> white
    assert torch.allclose(ImageTransform(H, W, channels=3)(rgba), torch.ones(3, H, W))
    rgba[..., 3] = 255  # opaque black stays black
    assert torch.allclose(ImageTransform(H, W, channels=3)(rgba), -torch.ones(3, H, W))


def test_16_bit_is_scaled_to_8_bit() -> None:
    image = np.full((32, 128), 65535, np.uint16)
    assert torch.equal(ImageTransform(H, W)(image), torch.ones(1, H, W))
    assert to_uint8(np.array([[0, 257, 32896, 65535]], np.uint16)).tolist() == [[0, 1, 128, 255]]


def test_float_and_bool_inputs() -> None:
    assert to_uint8(np.array([[0.0, 0.5, 1.0]], np.float32)).tolist() == [[0, 128, 255]]
    assert to_uint8(np.array([[0.0, 100.0, 300.0]], np.float64)).tolist() == [[0, 100, 255]]
    assert to_uint8(np.array([[False, True]])).tolist() == [[0, 255]]


def test_tiny_and_tall_images() -> None:
    t = ImageTransform(H, W, channels=1)
    _check(t(np.full((1, 1), 200, np.uint8)), 1)
    _check(t(_text_like(300, 20)), 1)  # vertical text: resized like any crop, not rotated


@pytest.mark.parametrize("shape", [(0, 10), (10, 0), (0, 0, 3), (4, 4, 0)])
def test_empty_image_raises_clear_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="empty image"):
        ImageTransform(H, W)(np.zeros(shape, np.uint8))


def test_bad_layout_and_arguments_raise() -> None:
    with pytest.raises(ValueError, match="1 dimension"):
        ImageTransform(H, W)(np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="5 channels"):
        to_channels(np.zeros((4, 4, 5), np.uint8), 1)
    with pytest.raises(ValueError, match="dtype"):
        to_uint8(np.zeros((4, 4), np.complex64))
    with pytest.raises(ValueError, match="channels"):
        ImageTransform(H, W, channels=2)
    with pytest.raises(ValueError, match="pad_value"):
        ImageTransform(H, W, pad_value=3.0)
    with pytest.raises(RegistryError, match="augmentation preset 'strnog'"):
        ImageTransform(H, W, augment="strnog")


# -- resizing and padding ------------------------------------------------------------------------
def test_keep_ratio_pads_on_the_right() -> None:
    image = np.full((16, 20), 255, np.uint8)  # 16×20 -> 32×40, then padded to 32×128
    out = ImageTransform(H, W, keep_ratio=True, pad_value=-0.5)(image)
    assert out.shape == (1, H, W)
    assert torch.equal(out[:, :, :40], torch.ones(1, H, 40))
    assert torch.equal(out[:, :, 40:], torch.full((1, H, W - 40), -0.5))


def test_keep_ratio_widths() -> None:
    t = ImageTransform(H, W, keep_ratio=True)
    assert t.prepare(_text_like(16, 20)).shape == (H, 40, 1)
    assert t.prepare(_text_like(100, 20)).shape == (H, 6, 1)  # tall: round(20 * 32 / 100)
    assert t.prepare(_text_like(1000, 1)).shape == (H, 1, 1)  # at least one column
    assert t.prepare(_text_like(10, 1000)).shape == (H, W, 1)  # wide: capped at W, squeezed
    rgb = ImageTransform(H, W, channels=3, keep_ratio=True)
    assert rgb.prepare(_text_like(16, 20, 3)).shape == (H, 40, 3)


def test_stretch_ignores_aspect_ratio() -> None:
    assert ImageTransform(H, W).prepare(_text_like(16, 20)).shape == (H, W, 1)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 200), w=st.integers(1, 400), layout=st.sampled_from([0, 1, 2, 3, 4]),
       dtype=st.sampled_from(["uint8", "uint16", "float32"]), channels=st.sampled_from([1, 3]),
       keep_ratio=st.booleans())
def test_any_image_gives_a_valid_tensor(h: int, w: int, layout: int, dtype: str, channels: int,
                                        keep_ratio: bool) -> None:
    shape = (h, w) if layout == 0 else (h, w, layout)
    rng = np.random.default_rng(h * 1000 + w)
    image = (rng.random(shape) * {"uint8": 255, "uint16": 65535, "float32": 1}[dtype]).astype(dtype)
    _check(ImageTransform(H, W, channels=channels, keep_ratio=keep_ratio)(image), channels)


# -- augmentation --------------------------------------------------------------------------------
def test_presets_registered() -> None:
    assert {"none", "light", "strong"} <= set(AUGMENTATIONS.names())


@pytest.mark.parametrize("name", ["none", "light", "strong"])
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_keep_shape_and_dtype(name: str, channels: int) -> None:
    augment = build_augmentation(name, channels=channels, seed=0)
    for seed in range(8):
        image = _text_like(H, W, None if channels == 1 else 3, seed=seed)
        out = augment(image)
        assert out.shape == image.shape and out.dtype == np.uint8
    t = ImageTransform(H, W, channels=channels, keep_ratio=True, augment=name, seed=0)
    for seed in range(8):
        _check(t(_text_like(20 + seed, 50 + 10 * seed, None if channels == 1 else 3, seed=seed)), channels)


def test_none_is_identity_without_overhead() -> None:
    image = _text_like(H, W)
    assert build_augmentation("none")(image) is image
    assert ImageTransform(H, W).augmentation is None


def test_augmentation_is_deterministic_from_seed() -> None:
    images = [_text_like(H, W, seed=s) for s in range(6)]
    a = ImageTransform(H, W, augment="strong", seed=3)
    b = ImageTransform(H, W, augment="strong", seed=3)
    c = ImageTransform(H, W, augment="strong", seed=4)
    out_a = [a(im) for im in images]
    assert all(torch.equal(x, b(im)) for x, im in zip(out_a, images, strict=True))
    assert not all(torch.equal(x, c(im)) for x, im in zip(out_a, images, strict=True))
    a.reseed(3)  # reseeding replays the stream
    assert all(torch.equal(x, a(im)) for x, im in zip(out_a, images, strict=True))


def test_strong_augmentation_changes_images() -> None:
    t = ImageTransform(H, W, augment="strong", seed=0)
    plain = ImageTransform(H, W)
    images = [_text_like(H, W, seed=s) for s in range(8)]
    assert sum(not torch.equal(t(im), plain(im)) for im in images) >= 4


# -- batching ------------------------------------------------------------------------------------
def test_collate_matches_single_image_path_and_pads() -> None:
    t = ImageTransform(H, W, channels=3, keep_ratio=True, pad_value=0.25)
    images = [_text_like(16, 20, 3, seed=1), _text_like(32, 300, 3, seed=2), _text_like(8, 9, 4, seed=3)]
    batch, labels = t.collate([(t.prepare(im), f"w{i}") for i, im in enumerate(images)])
    assert batch.shape == (3, 3, H, W) and batch.dtype == torch.float32
    assert labels == ["w0", "w1", "w2"]
    for i, im in enumerate(images):
        assert torch.equal(batch[i], t(im))
    assert torch.equal(batch[0, :, :, 40:], torch.full((3, H, W - 40), 0.25))


def test_collate_float_tensors_and_default_width() -> None:
    items = [(torch.zeros(1, 4, 6), "a"), (torch.ones(1, 4, 6), "b")]
    batch, labels = collate(items)
    assert batch.shape == (2, 1, 4, 6) and labels == ["a", "b"]
    arrays = [(np.zeros((4, 3, 1), np.uint8), "a"), (np.zeros((4, 5, 1), np.uint8), "b")]
    batch, _ = collate(arrays, pad_value=1.0)
    assert batch.shape == (2, 1, 4, 5)
    assert torch.equal(batch[0, :, :, 3:], torch.ones(1, 4, 2))
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match="cannot batch"):
        collate([(np.zeros((4, 3, 1), np.uint8), "a"), (np.zeros((5, 3, 1), np.uint8), "b")])


class ListDataset(torch.utils.data.Dataset):
    """A list-backed dataset of ``(image, label)`` items."""

    def __init__(self, items: list[tuple[np.ndarray, str]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        return self.items[index]


def test_transformed_dataset() -> None:
    items = [(_text_like(20, 60, 3, seed=i), f"word{i}") for i in range(3)]
    t = ImageTransform(H, W)
    deferred = TransformedDataset(ListDataset(items), t)
    assert len(deferred) == 3
    image, label = deferred[1]
    assert image.dtype == np.uint8 and image.shape == (H, W, 1) and label == "word1"
    eager = TransformedDataset(ListDataset(items), t, batch_normalise=False)
    tensor, _ = eager[1]
    assert torch.equal(tensor, t(items[1][0]))
    assert torch.equal(collate([eager[0], eager[1]])[0], t.collate([deferred[0], deferred[1]])[0])
