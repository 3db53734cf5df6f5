"""Recognition metrics: word accuracy, 1-NED (ICDAR 2019) and their aggregation.

1-NED follows the ICDAR 2019 robust-reading definition: for each sample
``1 - ED(pred, gt) / max(len(gt), len(pred))`` (1.0 when both are empty), averaged over samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rapidfuzz.distance import Levenshtein


def one_minus_ned(pred: str, gt: str) -> float:
    """ICDAR 2019 ``1 - ED / max(len(gt), len(pred))``; 1.0 when both strings are empty."""
    denom = max(len(gt), len(pred))
    if denom == 0:
        return 1.0
    return 1.0 - Levenshtein.distance(pred, gt) / denom


@dataclass
class RecognitionMetrics:
    """Running totals for one dataset; ``update`` with (prediction, label, confidence) triples."""

    name: str = ""
    count: int = 0
    correct: int = 0
    ned_sum: float = 0.0
    confidence_sum: float = 0.0
    wrong: list[tuple[int, str, str, float]] = field(default_factory=list)  # (index, gt, pred, conf)

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

    def as_dict(self) -> dict[str, float | int | str]:
        return {"name": self.name, "count": self.count, "accuracy": self.accuracy, "ned": self.ned,
                "confidence": self.mean_confidence}


def combine(results: Iterable[RecognitionMetrics], name: str = "total") -> RecognitionMetrics:
    """Sample-weighted total of several datasets' metrics."""
    total = RecognitionMetrics(name=name)
    for r in results:
        total.count += r.count
        total.correct += r.correct
        total.ned_sum += r.ned_sum
        total.confidence_sum += r.confidence_sum
    return total
