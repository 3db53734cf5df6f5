"""Data-loading throughput: images/s from an LMDB to normalised batch tensors.

:func:`run_data_benchmark` measures the training loader of :func:`strkit.data.mixing.build_mixed_loader`
(LMDB read, decode, resize, augmentation, per-batch normalisation) for several geometries, channel
counts, worker counts and augmentation presets, plus a *PIL baseline*: a loader built the way the
four-stage benchmark's loader works (PIL decode, PIL bicubic resize, one float tensor normalised per
sample, stacked by the default collate), written here for comparison on the same data and load.

Throughput is steady state: the first batches (worker start-up, page cache) are not timed; the time to
the first batch is reported separately. Figures depend on the machine and on what else runs on it:
report the load average with them (:func:`load_average`).
"""

from __future__ import annotations

import gc
import io
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from strkit.data.lmdb.reader import LmdbDataset, lmdb_dir
from strkit.data.lmdb.writer import LmdbWriter
from strkit.data.mixing import build_mixed_loader
from strkit.data.transforms import ImageTransform

#: Real training-split crops tried, in order, when no LMDB is given (see shared/benchmarks/SOURCES.md).
DEFAULT_SOURCES = ("IIIT5K_train", "IC15_train")


@dataclass(frozen=True)
class LoaderCase:
    """One configuration to measure."""

    img_h: int = 32
    img_w: int = 128
    channels: int = 1
    workers: int = 0
    augment: str = "none"
    batch_size: int = 32
    loader: str = "strkit"  # strkit | pil-baseline

    @property
    def label(self) -> str:
        return (f"{self.loader} {self.img_h}×{self.img_w} {'gray' if self.channels == 1 else 'RGB'} "
                f"w{self.workers} {self.augment}")


@dataclass
class LoaderResult:
    """What one case measured."""

    case: LoaderCase
    images: int
    seconds: float
    first_batch_s: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.case), "images": self.images, "seconds": round(self.seconds, 4),
                "first_batch_s": round(self.first_batch_s, 4), "images_per_s": round(self.images_per_s, 1)}


def default_cases(batch_size: int = 32) -> list[LoaderCase]:
    """32×128 gray and RGB × 0 and 2 workers × ``none`` and ``strong``; 32×100 gray ``none`` (the
    reference loader's setting) with 0 and 2 workers, and the PIL baseline at 32×100 gray."""
    cases = [LoaderCase(32, 128, ch, w, aug, batch_size)
             for aug in ("none", "strong") for ch in (1, 3) for w in (0, 2)]
    cases += [LoaderCase(32, 100, 1, w, "none", batch_size) for w in (0, 2)]
    cases += [LoaderCase(32, 100, 1, w, "none", batch_size, loader="pil-baseline") for w in (0, 2)]
    return cases


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (zeros where the OS does not report them)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------------------------
# The benchmark LMDB
# ----------------------------------------------------------------------------------------------
def folder_records(root: Path) -> list[tuple[bytes, str]]:
    """The encoded images (bytes as stored) and labels of a folder dataset (``labels.tsv``)."""
    from strkit.data.folder import read_gt_file, resolve_gt_file

    return [(path.read_bytes(), label) for path, label in read_gt_file(resolve_gt_file(root))]


def generated_records(count: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """``count`` synthetic word crops (OpenCV Hershey text on a noisy background), PNG-encoded."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    records = []
    for _ in range(count):
        word = "".join(rng.choice(letters, int(rng.integers(3, 11))))
        scale = float(rng.uniform(0.8, 1.6))
        (tw, th), base = cv2.getTextSize(word, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        h, w = th + base + int(rng.integers(4, 16)), tw + int(rng.integers(4, 24))
        bg, fg = (int(v) for v in rng.choice([40, 90, 170, 220], 2, replace=False))
        image = np.clip(rng.normal(bg, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        cv2.putText(image, word, (int(rng.integers(0, w - tw + 1)), h - base - 2), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (fg, fg, fg), 2, cv2.LINE_AA)
        records.append((cv2.imencode(".png", image)[1].tobytes(), word))
    return records


def write_benchmark_lmdb(path: Path, records: Sequence[tuple[bytes, str]], count: int) -> Path:
    """Write ``count`` records to a new LMDB at ``path``, cycling through ``records``."""
    if not records:
        raise ValueError("no records to write into the benchmark LMDB")
    with LmdbWriter(path, map_size=64 << 20, overwrite=True) as writer:
        for i in range(count):
            image, label = records[i % len(records)]
            writer.put(image, label)
    return path


def find_default_source(root: Path) -> Path | None:
    """The first of :data:`DEFAULT_SOURCES` present under ``root`` (``None`` if none is)."""
    for name in DEFAULT_SOURCES:
        if (root / name / "labels.tsv").is_file():
            return root / name
    return None


def check_lmdb_readable(path: Path) -> int:
    """Number of records of the LMDB at ``path`` (raises the LMDB module's clear errors)."""
    ds = LmdbDataset(lmdb_dir(path), channels=1)
    if len(ds) == 0:
        raise ValueError(f"{path} holds no records: nothing to benchmark")
    return len(ds)


# ----------------------------------------------------------------------------------------------
# The PIL baseline (the four-stage benchmark's way of loading, for comparison)
# ----------------------------------------------------------------------------------------------
class PilBaselineDataset(Dataset):
    """LMDB items decoded with PIL and converted to ``L``/``RGB`` (``PIL.Image``, label)."""

    def __init__(self, path: Path, channels: int) -> None:
        self.inner = LmdbDataset(path, channels=channels)
        self.mode = "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        from PIL import Image

        from strkit.data.image_limits import check_encoded

        data = self.inner.get_extra(i, "image")  # the raw encoded bytes of record i
        check_encoded(data, self.inner.max_pixels, where=f"{self.inner.path} record {self.inner.record_index(i)}")
        return Image.open(io.BytesIO(data)).convert(self.mode), self.inner.label(i)


class PilBaselineCollate:
    """Per sample: PIL bicubic resize to ``W×H``, to float tensor, ``(x - 0.5) / 0.5``; then stack."""

    def __init__(self, img_h: int, img_w: int) -> None:
        self.size = (img_w, img_h)

    def __call__(self, batch: Sequence[tuple[Any, str]]) -> tuple[torch.Tensor, list[str]]:
        from PIL import Image

        tensors = []
        for image, _ in batch:
            array = np.asarray(image.resize(self.size, Image.BICUBIC), dtype=np.uint8)
            t = torch.from_numpy(array.copy()).float().div_(255.0)
            t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
            tensors.append(t.sub_(0.5).div_(0.5))
        return torch.stack(tensors), [label for _, label in batch]


def _pil_loader(path: Path, case: LoaderCase) -> DataLoader:
    dataset = PilBaselineDataset(path, case.channels)
    return DataLoader(dataset, batch_size=case.batch_size, shuffle=True, num_workers=case.workers,
                      collate_fn=PilBaselineCollate(case.img_h, case.img_w), drop_last=True,
                      persistent_workers=case.workers > 0, generator=torch.Generator().manual_seed(0))


def _endless(loader: DataLoader) -> Iterator[tuple[torch.Tensor, list[str]]]:
    while True:
        yield from loader


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------
def measure(path: Path, case: LoaderCase, images: int = 3200, warmup_batches: int = 4) -> LoaderResult:
    """Time ``images`` images (rounded up to whole batches) through the loader of ``case``."""
    if case.loader == "strkit":
        transform = ImageTransform(case.img_h, case.img_w, channels=case.channels, augment=case.augment,
                                   seed=0)
        loader = build_mixed_loader([LmdbDataset(path, channels=case.channels)], [1.0], case.batch_size,
                                    transform, num_workers=case.workers, seed=0, names=["bench"])
        batches: Iterable = iter(loader)
    elif case.loader == "pil-baseline":
        if case.augment != "none":
            raise ValueError("the PIL baseline has no augmentation")
        loader = _pil_loader(path, case)
        batches = _endless(loader)
    else:
        raise ValueError(f"unknown loader '{case.loader}': expected strkit or pil-baseline")
    it = iter(batches)
    start = time.perf_counter()
    next(it)
    first = time.perf_counter() - start
    for _ in range(max(0, warmup_batches - 1) + case.workers * 2):
        next(it)
    n_batches = max(1, -(-images // case.batch_size))
    start = time.perf_counter()
    shape = None
    for _ in range(n_batches):
        x, _labels = next(it)
        shape = tuple(x.shape)
    seconds = time.perf_counter() - start
    expected = (case.batch_size, case.channels, case.img_h, case.img_w)
    if shape != expected:
        raise AssertionError(f"{case.label}: batches of shape {shape}, expected {expected}")
    del it, batches, loader
    gc.collect()
    return LoaderResult(case, n_batches * case.batch_size, seconds, first)


def run_data_benchmark(path: Path, cases: Sequence[LoaderCase], images: int = 3200, repeat: int = 1,
                       progress: bool = True) -> list[LoaderResult]:
    """Measure every case on the LMDB at ``path``; with ``repeat > 1`` the cases are run in rounds
    and each keeps its fastest round (on a shared machine, the least disturbed one)."""
    best: dict[int, LoaderResult] = {}
    for round_ in range(repeat):
        for i, case in enumerate(cases):
            result = measure(path, case, images)
            if progress:
                print(f"  [{round_ + 1}/{repeat}] {case.label}: {result.images_per_s:,.0f} images/s",
                      flush=True)
            if i not in best or result.images_per_s > best[i].images_per_s:
                best[i] = result
    return [best[i] for i in range(len(cases))]


def augment_order_costs(records: Sequence[tuple[bytes, str]], img_h: int = 32, img_w: int = 128,
                        channels: int = 1, augment: str = "strong", limit: int = 1000) -> dict[str, float]:
    """Microseconds per image to augment-then-resize (the source crop) vs resize-then-augment (what
    :class:`ImageTransform` does), both single-threaded, on decoded images (decoding not timed)."""
    from strkit.data.image_limits import ImageTooLargeError
    from strkit.data.lmdb.format import decode_image
    from strkit.data.transforms import build_augmentation

    def decode(data: bytes) -> np.ndarray | None:
        try:
            return decode_image(data, channels)
        except ImageTooLargeError:
            return None  # refused from its header: not a word crop

    cv2.setNumThreads(1)
    images = [decode(data) for data, _ in records[:limit]]
    images = [im for im in images if im is not None]
    plain = ImageTransform(img_h, img_w, channels=channels)
    augmented = ImageTransform(img_h, img_w, channels=channels, augment=augment, seed=0)
    augment_fn = build_augmentation(augment, channels=channels, seed=0)

    def per_image(fn: Any) -> float:
        start = time.perf_counter()
        for im in images:
            fn(im)
        return 1e6 * (time.perf_counter() - start) / len(images)

    return {"resize_only_us": per_image(plain.prepare),
            "augment_then_resize_us": per_image(lambda im: plain.prepare(augment_fn(im))),
            "resize_then_augment_us": per_image(augmented.prepare)}


def markdown_table(results: Sequence[LoaderResult]) -> str:
    """The results as a markdown table."""
    lines = ["| loader | input | channels | workers | augment | images/s | ms / batch | first batch (s) |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for r in results:
        c = r.case
        ms = 1000.0 * r.seconds / max(1, r.images // c.batch_size)
        lines.append(f"| {c.loader} | {c.img_h}×{c.img_w}, batch {c.batch_size} | "
                     f"{'gray' if c.channels == 1 else 'RGB'} | {c.workers} | {c.augment} | "
                     f"{r.images_per_s:,.0f} | {ms:.2f} | {r.first_batch_s:.2f} |")
    return "\n".join(lines)
