"""Training and inference speed of recognition models (``tools/bench.py train`` / ``infer``).

Training speed is measured on the trainer's own code path: a :class:`strkit.engine.trainer.Trainer`
is built from the model config plus the case's precision, layout, batch size and thread count, and
its :meth:`~strkit.engine.trainer.Trainer.train_step` (label encoding, forward, loss, backward, gradient
clipping, AdamW step, schedule step) is timed on synthetic batches: uniform noise images in [-1, 1]
with random words of 3 to 10 characters from the model's charset as labels. After warm-up steps the
timed steps are split into windows; the reported images/s is the median over windows. With a data
source the batches come from the real training loader instead, and the time the step loop waits
for it is reported (a pipeline that never starves the model waits ~0%).

Inference speed is ``model.predict`` (eval forward + greedy decoding to text) under
``torch.inference_mode()``, in eager PyTorch: median ms per image at batch 1 and images/s at
batch 64, optionally with bf16 autocast, channels-last, Conv+BN folding
(:func:`strkit.models.fuse.fuse_for_inference`) or oneDNN's bf16 arithmetic for fp32 tensors.

Each case runs in a fresh process (:func:`run_isolated`) so that its peak resident memory
(``getrusage`` ``ru_maxrss``) belongs to that case alone and global settings do not leak between
cases. Timings mean little on a loaded machine: the 1-minute load average is recorded with each case.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from strkit.config import Config, ConfigError, SourceConfig, load_config

#: Folder of the shipped model configs (``configs/models/<name>.yaml``).
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"

_T = TypeVar("_T")
_R = TypeVar("_R")


# ----------------------------------------------------------------------------------------------
# Cases and results
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainCase:
    """One training-speed configuration.

    Attributes:
        model: a model config name (``configs/models/<name>.yaml``) or the path of a model YAML.
        precision: ``fp32`` or ``bf16`` (autocast), as ``train.precision``.
        channels_last: as ``train.channels_last``.
        steps: timed optimisation steps (after ``warmup``), split into ``windows`` windows.
        data: a training source (LMDB or folder dataset) to load batches from; ``None`` = synthetic.
        data_kind: ``lmdb`` or ``folder`` (the source kind of ``data``).
        workers: loader worker processes (``data.workers``) when ``data`` is set.
        overrides: further ``key=value`` config overrides (applied last).
    """

    model: str
    precision: str = "fp32"
    channels_last: bool = False
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
    load_1min: float
    data_wait_fraction: float | None = None
    final_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["case"] = asdict(self.case)
        return out


@dataclass(frozen=True)
class InferCase:
    """One inference-speed configuration.

    Attributes:
        model: a model config name or path (as in :class:`TrainCase`).
        precision: ``fp32`` or ``bf16`` (autocast around the forward).
        channels_last: model weights and input in channels-last layout.
        fuse: fold Conv2d+BatchNorm2d pairs first (:func:`strkit.models.fuse.fuse_for_inference`).
        onednn_bf16: let oneDNN compute fp32 convolutions, matmuls and RNNs with bf16 arithmetic
            (``torch.backends.mkldnn.*.fp32_precision = "bf16"``; set only in the benchmark process).
        repeats: timed batch-1 calls (median reported); ``batch_repeats`` timed batch calls.
    """

    model: str
    precision: str = "fp32"
    channels_last: bool = False
    fuse: bool = False
    onednn_bf16: bool = False
    img_h: int = 32
    img_w: int = 100
    channels: int = 1
    threads: int = 2
    batch: int = 64
    repeats: int = 50
    batch_repeats: int = 5
    warmup: int = 5
    seed: int = 0

    @property
    def levers(self) -> str:
        """The levers of this case in words, e.g. ``bf16 + channels-last + fused``."""
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels-last")
        if self.fuse:
            parts.append("fused")
        if self.onednn_bf16:
            parts.append("oneDNN bf16 math")
        return " + ".join(parts)


@dataclass
class InferResult:
    """What one inference case measured."""

    case: InferCase
    pipeline: str
    params: int
    ms_per_image: float  # batch 1, median over ``repeats`` calls
    ms_per_image_min: float
    images_per_s: float  # batch ``case.batch``, median over ``batch_repeats`` calls
    peak_rss_mib: float
    threads: int
    load_1min: float
    fused_pairs: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["case"] = asdict(self.case)
        return out


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def model_config_path(model: str) -> Path:
    """``configs/models/<model>.yaml``, or ``model`` itself when it is a YAML file.

    Raises:
        ConfigError: neither exists (the shipped names are listed).
    """
    path = Path(model).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = MODEL_CONFIG_DIR / f"{model}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"model '{model}': no such model config; give one of {', '.join(names) or '(none)'} "
                      f"(configs/models/) or the path of a model YAML file")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (``getrusage`` ``ru_maxrss``), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def load_1min() -> float:
    """The 1-minute load average (0.0 where the OS does not report it)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


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
    overrides = [
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


# ----------------------------------------------------------------------------------------------
# Measurements (run in the current process; see run_isolated)
# ----------------------------------------------------------------------------------------------
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
        load_1min=load_1min(), data_wait_fraction=None if case.data is None else wait / total,
        final_loss=loss)


@contextlib.contextmanager
def onednn_fp32_precision(precision: str) -> Iterator[None]:
    """Set oneDNN's arithmetic for fp32 convolutions, matmuls and RNNs (``"bf16"`` or ``"none"`` =
    full fp32) inside the block, restoring the previous settings after it."""
    backends = [getattr(torch.backends.mkldnn, k) for k in ("conv", "matmul", "rnn")
                if hasattr(getattr(torch.backends.mkldnn, k, None), "fp32_precision")]
    if precision != "none" and not backends:
        raise RuntimeError("this PyTorch has no torch.backends.mkldnn.*.fp32_precision settings; "
                           "run without the oneDNN bf16 option")
    before = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = precision
        yield
    finally:
        for b, p in zip(backends, before, strict=True):
            b.fp32_precision = p


def prepare_inference_model(case: InferCase) -> torch.nn.Module:
    """The eval-mode model of ``case`` (random weights), fused and/or channels-last as asked."""
    from strkit.models.fuse import fuse_for_inference
    from strkit.models.recognizer import build_model

    cfg = load_config(model_config_path(case.model))
    torch.manual_seed(case.seed)
    model = build_model(cfg.model, case.img_h, case.img_w, case.channels).eval()
    if case.fuse:
        model = fuse_for_inference(model, inplace=True)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def measure_infer(case: InferCase) -> InferResult:
    """Median batch-1 latency and batch throughput of ``model.predict`` (forward + greedy decoding)."""
    from strkit.engine.trainer import autocast_context

    torch.set_num_threads(case.threads)
    model = prepare_inference_model(case)
    params = sum(p.numel() for p in model.parameters())
    if case.fuse:  # count the unfused model's parameters: the architecture, not its inference form
        params = sum(p.numel() for p in prepare_inference_model(replace(case, fuse=False)).parameters())
    device = torch.device("cpu")
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(case.seed)

    def inputs(batch: int) -> torch.Tensor:
        x = torch.rand(batch, case.channels, case.img_h, case.img_w, generator=gen) * 2 - 1
        return x.contiguous(memory_format=memory_format)

    def timed(x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
        times = []
        for i in range(warmup + repeats):
            t = time.perf_counter()
            with autocast_context(device, case.precision):
                model.predict(x)
            if i >= warmup:
                times.append(time.perf_counter() - t)
        return times

    with torch.inference_mode(), onednn_fp32_precision("bf16" if case.onednn_bf16 else "none"):
        single = timed(inputs(1), case.warmup, case.repeats)
        batched = timed(inputs(case.batch), 1, case.batch_repeats)
    return InferResult(
        case=case, pipeline=model.pipeline, params=params,
        ms_per_image=1000 * statistics.median(single), ms_per_image_min=1000 * min(single),
        images_per_s=case.batch / statistics.median(batched), peak_rss_mib=peak_rss_mib(),
        threads=torch.get_num_threads(), load_1min=load_1min(),
        fused_pairs=int(getattr(model, "fused_pairs", 0)))


# ----------------------------------------------------------------------------------------------
# Isolation and reporting
# ----------------------------------------------------------------------------------------------
def run_isolated(func: Callable[[_T], _R], case: _T) -> _R:
    """Run ``func(case)`` in a fresh (spawned) Python process and return its result.

    ``func`` must be a module-level function and ``case`` / its result picklable. Exceptions raised
    in the child are re-raised here.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(func, case).result()


def _fmt_params(n: int) -> str:
    return f"{n:,}"


def train_table(results: Sequence[TrainResult]) -> str:
    """A markdown table of training results, one row per case."""
    with_data = any(r.data_wait_fraction is not None for r in results)
    head = ["model", "pipeline", "params", "precision", "channels-last", "batch", "threads",
            "images/s (median)", "windows min–max", "ms/step", "peak RSS (GiB)"]
    if with_data:
        head.append("data wait")
    head.append("load (1 min)")
    rows = []
    for r in results:
        c = r.case
        row = [c.model, r.pipeline, _fmt_params(r.params), c.precision, "on" if c.channels_last else "off",
               str(c.batch_size), str(r.threads), f"{r.images_per_s:.1f}",
               f"{min(r.window_images_per_s):.1f}–{max(r.window_images_per_s):.1f}", f"{r.step_ms:.0f}",
               f"{r.peak_rss_mib / 1024:.2f}"]
        if with_data:
            row.append("–" if r.data_wait_fraction is None else f"{100 * r.data_wait_fraction:.1f}%")
        row.append(f"{r.load_1min:.2f}")
        rows.append(row)
    return _markdown(head, rows)


def infer_table(results: Sequence[InferResult]) -> str:
    """A markdown table of inference results, one row per case."""
    head = ["model", "params", "levers", "threads", "ms/image (batch 1, median)", "min",
            "images/s (batch 64)", "peak RSS (GiB)", "load (1 min)"]
    rows = [[r.case.model, _fmt_params(r.params), r.case.levers, str(r.threads), f"{r.ms_per_image:.2f}",
             f"{r.ms_per_image_min:.2f}", f"{r.images_per_s:.0f}", f"{r.peak_rss_mib / 1024:.2f}",
             f"{r.load_1min:.2f}"] for r in results]
    return _markdown(head, rows)


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class LoadGate:
    """Waits until the 1-minute load average is at most ``max_load`` (at most ``retries`` waits of
    ``wait_s`` seconds), so that timings are not taken while other work shares the cores."""

    max_load: float = 1.5
    retries: int = 3
    wait_s: float = 30.0
    waited: list[float] = field(default_factory=list)

    def wait(self, log: Callable[[str], None] = print) -> float:
        """Returns the load average at the end (possibly still above ``max_load``)."""
        load = load_1min()
        for _ in range(self.retries):
            if load <= self.max_load:
                break
            log(f"load average {load:.2f} > {self.max_load}: waiting {self.wait_s:.0f} s")
            time.sleep(self.wait_s)
            self.waited.append(load)
            load = load_1min()
        return load
