"""How well the latency table predicts measured latency: random architectures timed whole and
compared with the table's prediction (:func:`validate_lut`), and the table's calibration
(:func:`calibrate_lut`).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from strkit.nas.arch import build_searched, derive_arch, find_supernet
from strkit.nas.latency.table import LatencyTable, LatencyTableError, predict_arch_latency, time_modules, torch_threads


@dataclass
class LutValidation:
    """Predicted vs measured backbone latency of random sub-networks."""

    predicted_ms: list[float]
    measured_ms: list[float]
    ops: list[list[str]]

    @property
    def errors_pct(self) -> list[float]:
        return [100.0 * abs(p - m) / m for p, m in zip(self.predicted_ms, self.measured_ms, strict=True)]

    @property
    def mae_pct(self) -> float:
        """Mean absolute error of the prediction, in % of the measured latency."""
        return float(statistics.fmean(self.errors_pct))

    @property
    def bias_pct(self) -> float:
        """Mean signed error (prediction − measurement), in % of the measurement."""
        return float(statistics.fmean(100.0 * (p - m) / m
                                      for p, m in zip(self.predicted_ms, self.measured_ms, strict=True)))

    @property
    def correlation(self) -> float:
        """Pearson correlation of predicted and measured latency (ranking quality; insensitive to a
        uniform change of machine speed between the table and the check). NaN for fewer than 2."""
        if len(self.measured_ms) < 2 or len(set(self.predicted_ms)) < 2 or len(set(self.measured_ms)) < 2:
            return math.nan
        return float(statistics.correlation(self.predicted_ms, self.measured_ms))

    @property
    def scale(self) -> float:
        """Least-squares factor s with measured ≈ s · predicted (1 = no systematic offset)."""
        num = sum(p * m for p, m in zip(self.predicted_ms, self.measured_ms, strict=True))
        den = sum(p * p for p in self.predicted_ms)
        return num / den if den > 0 else math.nan

    @property
    def scaled_mae_pct(self) -> float:
        """MAE in % after multiplying the predictions by :attr:`scale`: the error left once a uniform
        speed difference (e.g. another load on a shared machine) is taken out."""
        s = self.scale
        return float(statistics.fmean(100.0 * abs(s * p - m) / m
                                      for p, m in zip(self.predicted_ms, self.measured_ms, strict=True)))

    def to_dict(self) -> dict[str, Any]:
        return {"n": len(self.measured_ms), "mae_pct": self.mae_pct, "bias_pct": self.bias_pct,
                "correlation": self.correlation, "scale": self.scale, "scaled_mae_pct": self.scaled_mae_pct,
                "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms, "ops": self.ops}


def measure_archs_latency(archs: Sequence[Mapping[str, Any]], device: torch.device | str = "cpu",
                          threads: int = 0, repeats: int = 30, warmup: int = 5, batch: int = 1,
                          progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Measured end-to-end latency (ms) of the ``searched`` backbone of each architecture at its search
    input, all timed in interleaved rounds (see :func:`time_modules`)."""
    device = torch.device(device)
    out: list[float] = []
    group = max(1, len(archs))
    with torch_threads(threads):
        for start in range(0, len(archs), group):
            items = []
            for arch in archs[start:start + group]:
                inp = arch["input"]
                items.append((build_searched(arch).to(device).eval(),
                              torch.randn(batch, inp["channels"], inp["img_h"], inp["img_w"], device=device)))
            out += time_modules(items, repeats, warmup, device)
            if progress:
                progress(len(out), len(archs))
    return out


def measure_arch_latency(arch: Mapping[str, Any], device: torch.device | str = "cpu", threads: int = 0,
                         repeats: int = 30, warmup: int = 5, batch: int = 1) -> float:
    """Measured end-to-end latency (ms) of the ``searched`` backbone of ``arch`` at its search input."""
    return measure_archs_latency([arch], device, threads, repeats, warmup, batch)[0]


def validate_lut(model: nn.Module, lut: LatencyTable, n: int = 20, device: torch.device | str = "cpu",
                 threads: int = 0, repeats: int = 30, warmup: int = 5, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> LutValidation:
    """Build ``n`` random sub-networks of the supernet in ``model`` (uniform op per cell) as
    ``searched`` backbones, measure each end to end and compare with the LUT prediction (backbone:
    stem + cells + head; the fixed parts are left out of both sides)."""
    threads = threads or int(lut.meta.get("threads", 0) or 0)
    batch = int(lut.meta.get("batch", 1))
    archs = random_archs(model, n, seed)
    pred = [predict_arch_latency(a, lut) for a in archs]
    ops = [[c["op"] for c in a["cells"]] for a in archs]
    meas = measure_archs_latency(archs, device, threads, repeats, warmup, batch, progress)
    return LutValidation(pred, meas, ops)


def random_archs(model: nn.Module, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` random sub-networks (a uniformly drawn op per cell) of the supernet in ``model``."""
    net = find_supernet(model)
    rng = random.Random(seed)
    return [derive_arch(net, [rng.randrange(len(e)) for e in net.edges()]) for _ in range(n)]


#: Offset of the calibration networks' seed from the validation seed: the two sets never coincide.
CALIBRATION_SEED_OFFSET = 7919


def calibrate_lut(model: nn.Module, lut: LatencyTable, n: int = 5, device: torch.device | str = "cpu",
                  threads: int = 0, repeats: int = 30, warmup: int = 5, seed: int = 0) -> LatencyTable:
    """Fit ``lut.scale`` (least squares, measured ≈ scale · Σ ops) on ``n`` random sub-networks timed end to
    end, drawn with ``seed + CALIBRATION_SEED_OFFSET`` so that :func:`validate_lut` (same ``seed``) checks
    the calibrated table on other networks. Returns ``lut`` (changed in place); ``n = 0`` leaves it as is."""
    if n <= 0:
        return lut
    threads = threads or int(lut.meta.get("threads", 0) or 0)
    archs = random_archs(model, n, seed + CALIBRATION_SEED_OFFSET)
    lut.scale = 1.0
    pred = [predict_arch_latency(a, lut) for a in archs]
    meas = measure_archs_latency(archs, device, threads, repeats, warmup, int(lut.meta.get("batch", 1)))
    fit = LutValidation(pred, meas, [[c["op"] for c in a["cells"]] for a in archs]).scale
    if not math.isfinite(fit) or fit <= 0:
        raise LatencyTableError(f"latency table calibration failed: measured {meas} ms for predicted {pred} ms")
    lut.scale = float(fit)
    lut.meta["calibration"] = {"networks": n, "seed": seed + CALIBRATION_SEED_OFFSET, "predicted_ms": pred,
                               "measured_ms": meas}
    return lut
