"""Shared fixtures: tiny generated word-image datasets (no font files needed: OpenCV Hershey fonts)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
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


@dataclass(frozen=True)
class WordCrops:
    """Rendered word crops (RGB ``uint8`` H×W×3) and the text drawn on each."""

    images: list[np.ndarray]
    labels: list[str]


# strkit's own renderer, 'clean' preset, matplotlib's bundled fonts only (the same on every machine); crops
# 40 px high and as wide as their text (like real crops: every one is resized, each by its own factor).
SYNTH_OVERRIDES = {"fonts.system": False, "fonts.dirs": ["@matplotlib"], "text.charset": "36_lowercase",
                   "output.keep_ratio": True, "output.height": 40}


@pytest.fixture(scope="session")
def synth_renderer(tmp_path_factory):
    """strkit's synthetic word renderer with :data:`SYNTH_OVERRIDES` (its font audit cached in a temporary
    folder, not in the user's cache)."""
    from strkit.data.synth import Renderer, load_synth_config

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRKIT_CACHE_DIR", str(tmp_path_factory.mktemp("font_cache")))
        return Renderer(load_synth_config("clean", SYNTH_OVERRIDES))


def render_synth_words(renderer, count: int, seed: int) -> WordCrops:
    """``count`` words drawn by ``renderer`` (a pure function of ``seed`` and the index)."""
    samples = [renderer.render(i, seed=seed) for i in range(count)]
    return WordCrops([s.image for s in samples], [s.label for s in samples])


@pytest.fixture(scope="session")
def synth_words(synth_renderer) -> WordCrops:
    """96 clean synthetic words that the bundled default model reads almost all of (about 93 %): the
    oracle of the parity tests (an export that changes the reading changes the text)."""
    return render_synth_words(synth_renderer, 96, 0)


TINY_BENCHMARK = "CUTE80_288"  # the smallest registered benchmark: 288 records


@pytest.fixture(scope="session")
def tiny_benchmarks(tmp_path_factory, synth_renderer) -> Path:
    """A benchmark root rendered on the fly, for the tools that read benchmarks (eval, export, compare,
    rectify) when ../shared/benchmarks is absent: ``CUTE80_288`` (288 clean synthetic words, the record
    count the registry checks) and ``IIIT5K_train`` (32 words, training crops for int8 calibration)."""
    root = tmp_path_factory.mktemp("benchmarks")
    for name, count, seed in ((TINY_BENCHMARK, 288, 1), ("IIIT5K_train", 32, 2)):
        words = render_synth_words(synth_renderer, count, seed)
        (root / name / "images").mkdir(parents=True)
        lines = []
        for i, (img, label) in enumerate(zip(words.images, words.labels, strict=True)):
            cv2.imwrite(str(root / name / "images" / f"{i:06d}.png"), img[:, :, ::-1])
            lines.append(f"images/{i:06d}.png\t{label}")
        (root / name / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def bundled_checkpoint() -> Path:
    """The default model shipped in the package (strkit/assets/default.pt; read-only: copy to change)."""
    from importlib import resources

    from strkit.inference.metadata import BUNDLE_CHECKPOINT

    return Path(str(resources.files("strkit") / "assets" / BUNDLE_CHECKPOINT))


def word_accuracy(texts: list[str], labels: list[str]) -> float:
    """Fraction of ``texts`` equal to their label under the 36-class protocol."""
    from strkit.charset import protocol_filter

    return sum(protocol_filter(t) == protocol_filter(g) for t, g in zip(texts, labels, strict=True)) / len(labels)


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    if not (SHARED_BENCHMARKS / "SVT_647" / "labels.tsv").is_file():
        pytest.skip("real benchmark crops (../shared/benchmarks) are not available")
    return SHARED_BENCHMARKS


def join_process_group(rank: int, world: int, store: str) -> None:
    """In a spawned rank: set the ``torchrun`` variables strkit reads and join a gloo process group through a
    file store (no TCP port is picked in advance, so none can be taken by another process in between);
    strkit's ``init_distributed`` then finds the group initialised. Collectives time out after 120 s."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the loopback interface: the ranks share this machine
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))


def spawn_ranks(worker: Callable[..., None], world: int, args: tuple, store: Path, timeout: float = 300.0) -> None:
    """Run ``worker(rank, world, str(store), *args)`` in ``world`` spawned processes (each calls
    :func:`join_process_group` first); fail the test, killing the ranks, if they have not all finished
    within ``timeout`` seconds (a hang guard: a deadlocked collective must not hang the suite)."""
    import torch.multiprocessing as mp

    context = mp.spawn(worker, args=(world, str(store), *args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            for proc in context.processes:
                if proc.is_alive():
                    proc.kill()
                proc.join()
            pytest.fail(f"{world} spawned ranks did not finish within {timeout:.0f} s")


@pytest.fixture(scope="module")
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``STRKIT_CACHE_DIR`` set to a fresh folder for a test module (font audits, fingerprints ...)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("strkit_cache")
    mp.setenv("STRKIT_CACHE_DIR", str(path))
    yield path
    mp.undo()


def mpl_fonts(charset: str):
    """The fonts of matplotlib's bundled folder only, audited for ``charset`` (a FontSet)."""
    from strkit.charset import Charset
    from strkit.data.synth.config import load_synth_config
    from strkit.data.synth.fonts import discover_fonts

    only_mpl = {"fonts.system": False, "fonts.dirs": ["@matplotlib"]}
    return discover_fonts(load_synth_config("mjsynth", only_mpl).fonts, Charset.from_spec(charset))


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster on a shared 2-core machine (restored afterwards).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
