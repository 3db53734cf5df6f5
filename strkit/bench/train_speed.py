"""Training speed (``tools/bench.py train``), measured on the trainer's own code path.

A :class:`strkit.engine.trainer.Trainer` is built from the model config plus the case's precision,
layout, batch size and thread count, and its :meth:`~strkit.engine.trainer.Trainer.train_step` (label
encoding, forward, loss, backward, gradient clipping, AdamW step, schedule step) is timed on synthetic
batches: uniform noise images in [-1, 1] with random words of 3 to 10 characters from the model's
charset as labels. After warm-up steps the timed steps are split into windows; the reported images/s
is the median over windows. With a data source the batches come from the real training loader
instead, and the time the step loop waits for it is reported (a pipeline that never starves the model
waits ~0%).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from strkit.bench.common import (
    fmt_busy,
    fmt_params,
    lstm_overrides,
    markdown_table,
    model_config_path,
    peak_rss_mib,
)
from strkit.config import Config, SourceConfig, load_config


@dataclass(frozen=True)
class TrainCase:
    """One training-speed configuration.

    Attributes:
        model: a model config name (``configs/models/<name>.yaml``) or the path of a model YAML.
        precision: ``fp32`` or ``bf16`` (autocast), as ``train.precision``.
        channels_last: as ``train.channels_last``.
        lstm_autocast: let a ``bilstm`` sequence stage follow bf16 autocast
            (``model.sequence.autocast=true``) instead of running in fp32.
        steps: timed optimisation steps (after ``warmup``), split into ``windows`` windows.
        data: a training source (LMDB or folder dataset) to load batches from; ``None`` = synthetic.
        data_kind: ``lmdb`` or ``folder`` (the source kind of ``data``).
        workers: loader worker processes (``data.workers``) when ``data`` is set.
        overrides: further ``key=value`` config overrides (applied last).
    """

    model: str
    precision: str = "fp32"
    channels_last: bool = False
    lstm_autocast: bool = False
    batch_size: int = 32
    img_h: int = 32
    img_w: int = 100
    channels: int = 1
    threads: int = 2
    steps: int = 20
    warmup: int = 3
    windows: int = 5
    seed: int = 0
    data: str | None = None
    data_kind: str = "folder"
    workers: int = 2
    overrides: tuple[str, ...] = ()


@dataclass
class TrainResult:
    """What one training case measured (images/s is the median over windows)."""

    case: TrainCase
    pipeline: str
    params: int
    images_per_s: float
    window_images_per_s: list[float]
    step_ms: float
    peak_rss_mib: float
    threads: int
    data_wait_fraction: float | None = None
    final_loss: float | None = None
    load_1min: float = 0.0  # set by run_case: the load average just before the case
    busy_cores: float | None = None  # set by run_case: cores busy (others) just before the case

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["case"] = asdict(self.case)
        return out


def random_words(count: int, chars: Sequence[str], rng: random.Random, min_len: int = 3,
                 max_len: int = 10) -> list[str]:
    """``count`` random words of ``min_len``..``max_len`` characters drawn uniformly from ``chars``."""
    return ["".join(rng.choice(chars) for _ in range(rng.randint(min_len, max_len))) for _ in range(count)]


def synthetic_batches(count: int, batch_size: int, channels: int, img_h: int, img_w: int,
                      chars: Sequence[str], seed: int = 0) -> list[tuple[torch.Tensor, list[str]]]:
    """``count`` batches of (B×C×H×W float32 uniform in [-1, 1], B random words of 3-10 characters)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch_size, channels, img_h, img_w, generator=gen) * 2 - 1,
             random_words(batch_size, chars, rng)) for _ in range(count)]


def window_sizes(steps: int, windows: int) -> list[int]:
    """Split ``steps`` timed steps into ``min(windows, steps)`` windows of near-equal size."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = max(1, min(windows, steps))
    return [steps // n + (1 if i < steps % n else 0) for i in range(n)]


def train_config(case: TrainCase) -> Config:
    """The run config of a training case: the model YAML plus the case's data and train settings."""
    overrides = [*lstm_overrides(case.model, case.lstm_autocast),
        f"data.img_h={case.img_h}", f"data.img_w={case.img_w}", f"data.channels={case.channels}",
        f"data.workers={case.workers}",
        f"train.precision={case.precision}", f"train.channels_last={str(case.channels_last).lower()}",
        f"train.batch_size={case.batch_size}", f"train.threads={case.threads}", "train.device=cpu",
        f"train.seed={case.seed}", f"train.steps={case.warmup + case.steps + 1}",
        "train.tensorboard=false", "train.progress=false",
        *case.overrides,
    ]
    cfg = load_config(model_config_path(case.model), overrides)
    if case.data is not None:
        cfg.data.train = [SourceConfig(path=str(case.data), kind=case.data_kind, name="bench")]
        cfg.data.val = []
        cfg.data.val_fraction = 0.0
    return cfg


def measure_train(case: TrainCase) -> TrainResult:
    """Time ``Trainer.train_step`` for ``case`` in this process (see the module docstring).

    Returns the median images/s over windows, the mean step time, this process's peak RSS and,
    with a data source, the fraction of the timed wall time spent waiting for the next batch.
    """
    from strkit.engine.trainer import Trainer

    cfg = train_config(case)
    trainer = Trainer(cfg)
    chars = trainer.model.charset.chars
    batches: Iterator[tuple[torch.Tensor, list[str]]]
    if case.data is None:
        pool = synthetic_batches(4, case.batch_size, case.channels, case.img_h, case.img_w, chars, case.seed)
        batches = (pool[i % len(pool)] for i in range(10**12))
    else:
        from strkit.engine.data import build_run_data

        run_data = build_run_data(cfg, trainer.model.charset, trainer.dist)
        batches = iter(run_data.train)

    loss = None
    for _ in range(case.warmup):
        loss = trainer.train_step(*next(batches))
    rates: list[float] = []
    wait = total = 0.0
    images = 0
    for n_steps in window_sizes(case.steps, case.windows):
        n_images = 0
        t0 = time.perf_counter()
        for _ in range(n_steps):
            t_wait = time.perf_counter()
            images_t, labels = next(batches)
            wait += time.perf_counter() - t_wait
            loss = trainer.train_step(images_t, labels)
            n_images += len(labels)
        dt = time.perf_counter() - t0
        total += dt
        images += n_images
        rates.append(n_images / dt)
    return TrainResult(
        case=case, pipeline=trainer.model.pipeline,
        params=sum(p.numel() for p in trainer.model.parameters()),
        images_per_s=statistics.median(rates), window_images_per_s=rates,
        step_ms=1000 * total / case.steps, peak_rss_mib=peak_rss_mib(), threads=torch.get_num_threads(),
        data_wait_fraction=None if case.data is None else wait / total, final_loss=loss)


def train_table(results: Sequence[TrainResult]) -> str:
    """A markdown table of training results, one row per case."""
    with_data = any(r.data_wait_fraction is not None for r in results)
    head = ["model", "pipeline", "params", "precision", "channels-last", "batch", "threads",
            "images/s (median)", "windows min–max", "ms/step", "peak RSS (GiB)"]
    if with_data:
        head.append("data wait")
    head += ["load (1 min)", "busy cores before"]
    rows = []
    for r in results:
        c = r.case
        precision = f"{c.precision} + bf16 LSTM" if c.lstm_autocast and c.precision == "bf16" else c.precision
        row = [c.model, r.pipeline, fmt_params(r.params), precision, "on" if c.channels_last else "off",
               str(c.batch_size), str(r.threads), f"{r.images_per_s:.1f}",
               f"{min(r.window_images_per_s):.1f}–{max(r.window_images_per_s):.1f}", f"{r.step_ms:.0f}",
               f"{r.peak_rss_mib / 1024:.2f}"]
        if with_data:
            row.append("–" if r.data_wait_fraction is None else f"{100 * r.data_wait_fraction:.1f}%")
        row += [f"{r.load_1min:.2f}", fmt_busy(r.busy_cores)]
        rows.append(row)
    return markdown_table(head, rows)
