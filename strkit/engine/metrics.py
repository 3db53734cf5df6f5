"""Recognition metrics: word accuracy, 1-NED (ICDAR 2019) and their aggregation.

1-NED follows the ICDAR 2019 robust-reading definition: for each sample
``1 - ED(pred, gt) / max(len(gt), len(pred))`` (1.0 when both are empty), averaged over samples.

The expected calibration error (ECE) of the word confidence against word correctness uses
:data:`ECE_BINS` equal-width bins: ``Σ_b n_b/N · |accuracy_b − mean confidence_b|`` (Guo et al. 2017),
where bin ``b`` (0-based) holds the confidences in ``(b/15, (b+1)/15]`` (0 falls in the first bin).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz.distance import Levenshtein


def one_minus_ned(pred: str, gt: str) -> float:
    """ICDAR 2019 ``1 - ED / max(len(gt), len(pred))``; 1.0 when both strings are empty."""
    denom = max(len(gt), len(pred))
    if denom == 0:
        return 1.0
    return 1.0 - Levenshtein.distance(pred, gt) / denom


#: Bins of the expected calibration error.
ECE_BINS = 15


def ece_bin(confidence: float, bins: int = ECE_BINS) -> int:
    """The bin of ``confidence`` (clipped to [0, 1]): ``b`` for ``(b/bins, (b+1)/bins]``, 0 for 0."""
    c = min(1.0, max(0.0, float(confidence)))
    return min(bins - 1, max(0, math.ceil(c * bins) - 1))


def expected_calibration_error(confidences: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE (a fraction in [0, 1]) of ``confidences`` against ``correct`` (0/1), over ``bins`` equal bins."""
    conf = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.shape != ok.shape:
        raise ValueError(f"{conf.size} confidences for {ok.size} correctness values")
    if conf.size == 0:
        return 0.0
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.bincount(idx, weights=ok, minlength=bins) - np.bincount(idx, weights=conf, minlength=bins)
    return float(np.abs(gap).sum() / conf.size)


@dataclass
class RecognitionMetrics:
    """Running totals for one dataset; ``update`` with (prediction, label, confidence) triples."""

    name: str = ""
    count: int = 0
    correct: int = 0
    ned_sum: float = 0.0
    confidence_sum: float = 0.0
    wrong: list[tuple[int, str, str, float]] = field(default_factory=list)  # (index, gt, pred, conf)
    # per ECE bin: samples, correct samples, confidence sum
    bin_count: list[int] = field(default_factory=lambda: [0] * ECE_BINS)
    bin_correct: list[int] = field(default_factory=lambda: [0] * ECE_BINS)
    bin_confidence: list[float] = field(default_factory=lambda: [0.0] * ECE_BINS)

    def update(self, preds: Sequence[str], gts: Sequence[str], confidences: Sequence[float] | None = None,
               start_index: int = 0, keep_wrong: bool = False) -> None:
        """Add a batch. ``preds`` and ``gts`` must already be normalised by the evaluation protocol."""
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} predictions for {len(gts)} labels")
        confidences = confidences if confidences is not None else [0.0] * len(preds)
        for i, (p, g, c) in enumerate(zip(preds, gts, confidences, strict=True)):
            self.count += 1
            ok = p == g
            self.correct += ok
            self.ned_sum += one_minus_ned(p, g)
            self.confidence_sum += float(c)
            b = ece_bin(c)
            self.bin_count[b] += 1
            self.bin_correct[b] += ok
            self.bin_confidence[b] += min(1.0, max(0.0, float(c)))
            if keep_wrong and not ok:
                self.wrong.append((start_index + i, g, p, float(c)))

    @property
    def accuracy(self) -> float:
        """Word accuracy in percent."""
        return 100.0 * self.correct / self.count if self.count else 0.0

    @property
    def ned(self) -> float:
        """Mean 1-NED in percent."""
        return 100.0 * self.ned_sum / self.count if self.count else 0.0

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / self.count if self.count else 0.0

    @property
    def ece(self) -> float:
        """Expected calibration error of the word confidence, in percent (:data:`ECE_BINS` bins)."""
        if not self.count:
            return 0.0
        gap = sum(abs(k - c) for k, c in zip(self.bin_correct, self.bin_confidence, strict=True))
        return 100.0 * gap / self.count

    def as_dict(self) -> dict[str, float | int | str]:
        return {"name": self.name, "count": self.count, "accuracy": self.accuracy, "ned": self.ned,
                "confidence": self.mean_confidence, "ece": self.ece}


def combine(results: Iterable[RecognitionMetrics], name: str = "total") -> RecognitionMetrics:
    """Sample-weighted total of several datasets' metrics."""
    total = RecognitionMetrics(name=name)
    for r in results:
        total.count += r.count
        total.correct += r.correct
        total.ned_sum += r.ned_sum
        total.confidence_sum += r.confidence_sum
        for b in range(ECE_BINS):
            total.bin_count[b] += r.bin_count[b]
            total.bin_correct[b] += r.bin_correct[b]
            total.bin_confidence[b] += r.bin_confidence[b]
    return total
