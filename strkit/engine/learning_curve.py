"""The learning curve of a long run: validation and benchmark accuracy against the CPU-hours spent.

A run with ``train.snapshot_every`` keeps inference-only weights in ``RUN/snapshots/step_NNNNNNN.pt`` and logs
``elapsed_s`` (training seconds, summed over resumes) in ``RUN/metrics.csv``. :func:`curve_points` pairs every
validation (``val_accuracy``) with the elapsed time logged at its step; :func:`evaluate_snapshots` scores the
snapshots on benchmarks and caches each result in ``RUN/curve.json`` (a snapshot is evaluated once, so a
campaign's curve grows piece by piece); :func:`plot_curve` draws both against CPU-hours = elapsed seconds ×
threads × processes / 3600.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strkit.atomic import write_text_atomic

#: The cache of snapshot evaluations inside a run folder.
CACHE_NAME = "curve.json"


@dataclass
class CurvePoint:
    """One point of the curve: a step, the CPU-hours spent to reach it, and accuracies (%) by name
    (``validation``, a benchmark name, or ``total``)."""

    step: int
    cpu_hours: float
    accuracy: dict[str, float] = field(default_factory=dict)


def read_metrics(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """``metrics.csv`` of a run as {key: {step: value}} (the last value of a step wins, as after a resume)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {run_dir} a training run folder?)")
    table: dict[str, dict[int, float]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            table.setdefault(row["key"], {})[int(row["step"])] = float(row["value"])
    return table


def cpu_hours_per_second(run_dir: str | Path, processes: int = 1) -> float:
    """CPU-hours per second of the run's elapsed time: ``train.threads`` of its ``config.yaml`` (at least 1)
    × ``processes`` (the DDP world size it ran with) / 3600."""
    from strkit.config import load_config

    cfg = load_config(Path(run_dir) / "config.yaml")
    return max(cfg.train.threads, 1) * processes / 3600.0


def _elapsed_at(elapsed: dict[int, float], step: int) -> float | None:
    """The elapsed seconds logged at ``step``, else at the nearest logged step before it."""
    if step in elapsed:
        return elapsed[step]
    before = [s for s in elapsed if s <= step]
    return elapsed[max(before)] if before else None


def curve_points(run_dir: str | Path, cache: dict[str, dict[str, float]] | None = None,
                 processes: int = 1) -> list[CurvePoint]:
    """Validation points (every ``val_accuracy`` step) and snapshot points (``cache``: evaluations by
    snapshot file name, see :func:`evaluate_snapshots`), each with its CPU-hours, sorted by step. Steps
    logged before ``elapsed_s`` existed have no time and are left out."""
    metrics = read_metrics(run_dir)
    elapsed = metrics.get("elapsed_s", {})
    rate = cpu_hours_per_second(run_dir, processes)
    points: dict[int, CurvePoint] = {}
    for step, value in metrics.get("val_accuracy", {}).items():
        seconds = _elapsed_at(elapsed, step)
        if seconds is not None:
            points.setdefault(step, CurvePoint(step, seconds * rate)).accuracy["validation"] = value
    for accuracies in (cache or {}).values():
        step = int(accuracies["step"])
        seconds = _elapsed_at(elapsed, step)
        if seconds is not None:
            point = points.setdefault(step, CurvePoint(step, seconds * rate))
            point.accuracy.update({k: v for k, v in accuracies.items() if k != "step"})
    return [points[s] for s in sorted(points)]


def load_cache(run_dir: str | Path, benchmarks: Sequence[str] | None = None,
               protocol: str = "36") -> dict[str, dict[str, float]]:
    """The cached snapshot evaluations of a run ({} when none); with ``benchmarks``, only those scored on
    exactly these benchmarks under ``protocol``."""
    path = Path(run_dir) / CACHE_NAME
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if benchmarks is None:
        return cache
    suffix = _key_suffix(benchmarks, protocol)
    return {k: v for k, v in cache.items() if k.endswith(suffix)}


def _key_suffix(benchmarks: Sequence[str], protocol: str) -> str:
    """What a cache key adds to the snapshot's file name: the protocol and the benchmarks scored."""
    return f"@{protocol}:{','.join(benchmarks)}"


def _write_cache(run_dir: Path, cache: dict[str, dict[str, float]]) -> None:
    write_text_atomic(run_dir / CACHE_NAME, json.dumps(cache, indent=1, sort_keys=True))


def evaluate_snapshots(run_dir: str | Path, benchmarks: Sequence[str], root: str | Path, protocol: str = "36",
                       batch_size: int = 64,
                       on_done: Callable[[str, dict[str, float]], None] | None = None) -> dict[str, dict[str, float]]:
    """Score every snapshot of the run not yet in its cache on ``benchmarks`` (word accuracy %, plus
    ``total`` over all their images and ``step``); the cache is rewritten atomically after each snapshot,
    so an interrupted evaluation keeps what it finished. Returns the whole cache."""
    from strkit.engine.evaluator import evaluate_benchmarks
    from strkit.models.pretrained import load_model

    run = Path(run_dir)
    cache = load_cache(run)
    key_suffix = _key_suffix(benchmarks, protocol)
    for snap in sorted((run / "snapshots").glob("step_*.pt")):
        key = snap.name + key_suffix
        if key in cache:
            continue
        model, cfg = load_model(snap)
        report = evaluate_benchmarks(model, cfg, list(benchmarks), root, protocol=protocol, batch_size=batch_size,
                                     speed=False, model_name=snap.stem)
        result: dict[str, float] = {"step": float(int(snap.stem.split("_")[1]))}
        result.update({m.name: m.accuracy for m in report.results})
        result["total"] = report.total.accuracy
        cache[key] = result
        _write_cache(run, cache)
        if on_done is not None:
            on_done(snap.name, result)
    return {k: v for k, v in cache.items() if k.endswith(key_suffix)}


def plot_curve(points: Sequence[CurvePoint], path: str | Path, title: str = "",
               references: dict[str, float] | None = None) -> Path:
    """A PNG: accuracy (%) against CPU-hours, one line per series (validation, each benchmark, total),
    and dashed horizontal lines for ``references`` (e.g. a peer's total accuracy)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("no curve points: the run logged no validation with elapsed_s and has no snapshot results")
    names = sorted({k for p in points for k in p.accuracy}, key=lambda n: (n != "validation", n == "total", n))
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for name in names:
        xs = [p.cpu_hours for p in points if name in p.accuracy]
        ys = [p.accuracy[name] for p in points if name in p.accuracy]
        style: dict[str, Any] = ({"linewidth": 1.0, "alpha": 0.7} if name == "validation"
                                 else {"marker": "o", "linewidth": 2.2 if name == "total" else 1.2})
        label = name if name != "validation" else "validation (held-out training crops, the model's charset)"
        ax.plot(xs, ys, label=label, **style)
    for label, value in (references or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1.0, color="grey")
        ax.annotate(label, xy=(0.01, value), xycoords=("axes fraction", "data"), textcoords="offset points",
                    xytext=(0, 3), fontsize=8, color="grey")
    ax.set_xlabel("CPU-hours of training (elapsed seconds × threads × processes / 3600)")
    ax.set_ylabel("word accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
