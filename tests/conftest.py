"""Shared fixtures: tiny generated word-image datasets (no font files needed: OpenCV Hershey fonts)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

SHARED_BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
WORDS = ["cat", "dog", "sun", "tree", "road", "stop", "open", "bar", "cafe", "shop", "12", "707"]


def render_word(text: str, rng: np.random.Generator, h: int = 32, w: int = 100) -> np.ndarray:
    """A light-on-dark or dark-on-light RGB crop of ``text`` (H×W×3 uint8)."""
    bg = int(rng.integers(0, 256))
    fg = 255 - bg if abs(255 - 2 * bg) > 60 else (0 if bg > 127 else 255)
    img = np.full((h, w, 3), bg, np.uint8)
    scale = 0.9 if len(text) <= 5 else 0.7
    cv2.putText(img, text, (4, h - 9), cv2.FONT_HERSHEY_SIMPLEX, scale, (fg, fg, fg), 2, cv2.LINE_AA)
    return img


def write_folder_dataset(root: Path, n: int, seed: int = 0, words: list[str] | None = None) -> Path:
    """``root/images/*.png`` + ``root/labels.tsv`` with ``n`` rendered words."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        word = (words or WORDS)[i % len(words or WORDS)]
        cv2.imwrite(str(root / "images" / f"{i:05d}.png"), render_word(word, rng)[:, :, ::-1])
        lines.append(f"images/{i:05d}.png\t{word}")
    (root / "labels.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def word_folder(tmp_path_factory) -> Path:
    """A folder dataset of 96 rendered words."""
    return write_folder_dataset(tmp_path_factory.mktemp("words"), 96)


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    if not (SHARED_BENCHMARKS / "SVT_647" / "labels.tsv").is_file():
        pytest.skip("real benchmark crops (../shared/benchmarks) are not available")
    return SHARED_BENCHMARKS


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster on a shared 2-core machine (restored afterwards).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
