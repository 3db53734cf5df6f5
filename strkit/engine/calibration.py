"""Confidence calibration: a temperature fitted on held-out training data, stored in the checkpoint.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar ``T`` before the softmax. It does
not change greedy readings (the argmax of every frame or step is kept), only how confident they are. ``T``
is fitted on held-out *training* crops (never a benchmark test set: the data layer refuses those as
sources) by minimising the negative log-likelihood of word correctness under the word confidence
(``−Σ y·log c(T) + (1−y)·log(1−c(T))``; ``objective="ece"`` minimises the expected calibration error
instead), by a golden-section search over ``log T`` in ``[1/20, 100]``.

The fitted temperature goes into the checkpoint under the key ``calibration`` (``{"temperature": T,
...}``, :func:`save_calibrated`); :func:`strkit.models.pretrained.model_from_payload` sets
``model.temperature`` from it, :meth:`RecognitionModel.predict` and both inference backends decode
``logits / T``, and an ONNX export carries ``temperature`` in its metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from strkit.charset import Charset, protocol_filter
from strkit.config import Config
from strkit.engine.metrics import expected_calibration_error
from strkit.inference.options import DEFAULT_CONFIDENCE, prediction_confidence
from strkit.models.pretrained import CALIBRATION_KEY, MAX_TEMPERATURE
from strkit.models.recognizer import RecognitionModel

#: Search interval of the temperature.
MIN_TEMPERATURE = 0.05
OBJECTIVES = ("nll", "ece")
_EPS = 1e-7


def correctness_nll(confidences: np.ndarray, correct: np.ndarray) -> float:
    """Mean negative log-likelihood of ``correct`` (0/1) under the probabilities ``confidences``."""
    c = np.clip(np.asarray(confidences, dtype=np.float64), _EPS, 1.0 - _EPS)
    y = np.asarray(correct, dtype=np.float64)
    return float(-(y * np.log(c) + (1.0 - y) * np.log1p(-c)).mean())


def fit_temperature(confidence_at: Callable[[float], np.ndarray], correct: Sequence[bool] | np.ndarray,
                    objective: str = "nll", low: float = MIN_TEMPERATURE, high: float = MAX_TEMPERATURE,
                    iterations: int = 40) -> float:
    """The temperature that minimises ``objective`` of the word confidences ``confidence_at(T)`` against
    ``correct``: a coarse grid over ``log T`` then a golden-section search around its best point.

    Args:
        confidence_at: ``T -> word confidences`` (one per sample, in the order of ``correct``).
        correct: whether each reading is right.
        objective: ``nll`` (negative log-likelihood of correctness; a proper scoring rule) or ``ece``.

    Raises:
        ValueError: an unknown objective, no samples, or a bad interval.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown calibration objective '{objective}'; use one of: {', '.join(OBJECTIVES)}")
    y = np.asarray(correct, dtype=np.float64)
    if y.size == 0:
        raise ValueError("cannot fit a temperature on no samples")
    if not 0 < low < high:
        raise ValueError(f"temperature interval ({low}, {high}) must satisfy 0 < low < high")
    score: Callable[[np.ndarray], float] = (
        (lambda c: correctness_nll(c, y)) if objective == "nll" else (lambda c: expected_calibration_error(c, y)))
    cache: dict[float, float] = {}

    def loss(log_t: float) -> float:
        if log_t not in cache:
            cache[log_t] = score(np.asarray(confidence_at(math.exp(log_t)), dtype=np.float64))
        return cache[log_t]

    grid = np.linspace(math.log(low), math.log(high), 25)
    best = int(np.argmin([loss(float(g)) for g in grid]))
    a, b = float(grid[max(0, best - 1)]), float(grid[min(len(grid) - 1, best + 1)])
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(iterations):
        if loss(c) <= loss(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return float(min(high, max(low, math.exp((a + b) / 2))))


@dataclass
class CalibrationResult:
    """A fitted temperature and what it did on the data it was fitted on (ECE in percent)."""

    temperature: float
    objective: str
    confidence: str
    count: int
    accuracy: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"temperature {self.temperature:.3f} (fitted by {self.objective} on {self.count} crops of "
                f"{self.source or 'the validation data'}, {self.confidence} confidence): ECE on them "
                f"{self.ece_before:.2f}% -> {self.ece_after:.2f}%, NLL {self.nll_before:.4f} -> {self.nll_after:.4f}")


@torch.inference_mode()
def collect_logits(model: RecognitionModel, batches: Iterable[tuple[Any, ...]], device: torch.device,
                   limit: int | None = None) -> tuple[list[torch.Tensor], list[str]]:
    """The raw logits (CPU, float32, one ``B×L×K`` tensor per batch) and the labels of ``batches`` of
    ``(images, labels, ...)``, up to ``limit`` samples."""
    model.eval()
    logits: list[torch.Tensor] = []
    labels: list[str] = []
    for batch in batches:
        images, texts = batch[0], list(batch[1])
        if limit is not None and len(labels) >= limit:
            break
        if limit is not None:
            images, texts = images[: limit - len(labels)], texts[: limit - len(labels)]
        logits.append(model(images.to(device)).logits.float().cpu())
        labels.extend(texts)
    return logits, labels


def fit_model_temperature(model: RecognitionModel, batches: Iterable[tuple[Any, ...]], protocol: str = "36",
                          device: torch.device | str = "cpu", objective: str = "nll",
                          confidence: str = DEFAULT_CONFIDENCE, limit: int | None = None,
                          source: str = "") -> CalibrationResult:
    """Fit ``model``'s temperature on ``batches`` of held-out training crops (``(images, labels)``).

    Correctness is that of the reading at ``T = 1`` (the same greedy reading at any ``T``), compared with
    the label under ``protocol``; the word confidence follows ``confidence``
    (:data:`strkit.inference.options.CONFIDENCE_MODES`). ``model.temperature`` is left unchanged.
    """
    logits, labels = collect_logits(model, batches, torch.device(device), limit)
    if not labels:
        raise ValueError(f"no samples to fit a temperature on{f' in {source}' if source else ''}")
    decoder, codec = model.decoder, model.codec
    first = [p for lg in logits for p in decoder.decode(lg, codec)]
    correct = np.array([protocol_filter(p.text, protocol) == protocol_filter(g, protocol)
                        for p, g in zip(first, labels, strict=True)], dtype=np.float64)

    def confidence_at(t: float) -> np.ndarray:
        return np.array([prediction_confidence(p, confidence) for lg in logits
                         for p in decoder.decode(lg / t, codec)], dtype=np.float64)

    t = fit_temperature(confidence_at, correct, objective)
    before, after = confidence_at(1.0), confidence_at(t)
    return CalibrationResult(
        temperature=t, objective=objective, confidence=confidence, count=len(labels),
        accuracy=100.0 * float(correct.mean()), ece_before=100.0 * expected_calibration_error(before, correct),
        ece_after=100.0 * expected_calibration_error(after, correct), nll_before=correctness_nll(before, correct),
        nll_after=correctness_nll(after, correct), source=source)


def run_validation_split(cfg: Config, charset: Charset, benchmark_root: str | None = None
                         ) -> tuple[Dataset, list[str]]:
    """The validation data of a run, rebuilt from its config as training built it: ``data.val`` when set,
    else the part of each (non-synthetic) training source that training held out (same label filter, same
    seeded split, :func:`strkit.engine.run_data.split_holdout`). Sources missing here are left out.

    Returns:
        (the dataset of ``(image, label)`` items, the names of the sources used).

    Raises:
        ValueError: none of the run's validation data is available here.
    """
    from torch.utils.data import ConcatDataset

    from strkit.charset import LabelFilter
    from strkit.data.sources import build_source
    from strkit.engine.run_data import split_holdout

    d = cfg.data
    root = benchmark_root or d.benchmark_root
    label_filter = LabelFilter(charset, cfg.model.max_length)
    parts: list[Dataset] = []
    names: list[str] = []
    for i, src in enumerate(d.train if not d.val else []):
        fraction = d.val_fraction if src.val_fraction is None else src.val_fraction
        if fraction <= 0 or src.kind == "synth" or not Path(src.path).exists():
            continue
        ds = build_source(src, label_filter, d.channels, root, purpose="train", max_pixels=d.max_pixels)
        parts.append(split_holdout(ds, fraction, cfg.train.seed + i)[1])
        names.append(src.name or src.path)
    for src in d.val:
        if Path(src.path).exists():
            parts.append(build_source(src, label_filter, d.channels, root, purpose="val",
                                       max_pixels=d.max_pixels))
            names.append(src.name or src.path)
    if not parts:
        raise ValueError("none of the run's validation data (data.val, or the held-out part of data.train) is "
                         "available here; give held-out training crops with --val-source PATH")
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), names


def save_calibrated(checkpoint: str | Path, out: str | Path, result: CalibrationResult) -> Path:
    """Write a copy of ``checkpoint`` with ``result`` under the key ``calibration`` (atomically) to ``out``;
    loading it applies the temperature (:func:`strkit.models.pretrained.checkpoint_temperature`).

    Raises:
        ValueError: ``out`` is ``checkpoint`` itself (a calibrated copy never replaces its source).
    """
    from strkit.checkpoint import atomic_torch_save, load_checkpoint

    src, dst = Path(checkpoint), Path(out)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the calibrated checkpoint must be a new file, not the checkpoint it comes from")
    if not 0 < result.temperature <= MAX_TEMPERATURE:
        raise ValueError(f"temperature {result.temperature} is outside (0, {MAX_TEMPERATURE:g}]")
    payload = load_checkpoint(src)
    payload[CALIBRATION_KEY] = result.to_dict()
    dst.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(payload, dst)
