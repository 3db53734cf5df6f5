"""Latency and throughput of an inference function (model forward only, no preprocessing or decoding)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SpeedResult:
    """``ms_per_image``: median batch-1 latency; ``images_per_s``: throughput at ``batch``."""

    name: str
    ms_per_image: float
    images_per_s: float
    batch: int
    threads: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ms_per_image": round(self.ms_per_image, 3),
                "images_per_s": round(self.images_per_s, 1), "batch": self.batch, "threads": self.threads}


def median_seconds(fn: Callable[[Any], Any], x: Any, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn(x)`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(max(0, warmup)):
        fn(x)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, fn: Callable[[Any], Any], make_input: Callable[[int], Any], repeats: int = 50,
            batch: int = 64, batch_repeats: int = 5, threads: int | None = None) -> SpeedResult:
    """Batch-1 latency (median of ``repeats``) and batch-``batch`` throughput (median of
    ``batch_repeats``; 0 skips it) of ``fn``; ``make_input(b)`` gives a batch of ``b`` images."""
    ms = median_seconds(fn, make_input(1), repeats) * 1000.0
    ips = 0.0
    if batch_repeats > 0 and batch > 0:
        ips = batch / median_seconds(fn, make_input(batch), batch_repeats, warmup=1)
    return SpeedResult(name, ms, ips, batch, threads)
