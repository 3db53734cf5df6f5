"""The trainer's own step, timed in a fresh process: for the search cost report
(:mod:`strkit.engine.searcher`) and ``tools/bench.py train`` (:mod:`strkit.bench.tables`).

A :class:`strkit.engine.trainer.Trainer` is built from the model config plus the case's precision,
layout, batch size and thread count, and its :meth:`~strkit.engine.trainer.Trainer.train_step` (label
encoding, forward, loss, backward, gradient clipping, AdamW step, schedule step) is timed on synthetic
batches: uniform noise images in [-1, 1] with random words of 3 to 10 characters from the model's
charset as labels. After warm-up steps the timed steps are split into windows; the reported images/s
is the median over windows. With a data source the batches come from the real training loader
instead, and the time the step loop waits for it is reported (a pipeline that never starves the model
waits ~0%).

Each case runs in a fresh process (:func:`run_isolated`) so that its peak resident memory
(``getrusage`` ``ru_maxrss``) belongs to that case alone and global settings do not leak between
cases. Timings mean little on a loaded machine: :func:`run_case` can wait for the other work on the
machine to stop (:class:`LoadGate`) and records the 1-minute load average and the number of cores
busy just before each case. On a 2-core machine shared with a 1-thread job, 2-thread timings are
distorted far more than the load suggests (the two intra-op threads wait for each other at every
operator while one shares its core), so compare only figures taken with the other core idle.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from strkit.config import Config, ConfigError, SourceConfig, load_config

#: ``TrainCase.data`` value: batches from the training config's own data section (the real recipe).
RECIPE_DATA = "config"

#: Folder of the shipped model configs (``configs/models/<name>.yaml``).
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"


_T = TypeVar("_T")


_R = TypeVar("_R")


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
        compile: ``train.compile`` (``off`` or a ``torch.compile`` mode); the warm-up steps include the
            compilation.
        start_step: the training step the loader starts at (a curriculum's mixing at that step).
        profile_steps: after the timed steps, this many more under ``torch.profiler``: the result's
            ``profile`` lists the operators by their share of the CPU time (0 = no profile).
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
    compile: str = "off"
    start_step: int = 0
    profile_steps: int = 0
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
    # With TrainCase.profile_steps: {operator: share of the profiled CPU time in %}, largest first (top 15).
    profile: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["case"] = asdict(self.case)
        return out


#: Model files the inference benchmark times with their trained weights instead of a config's random ones.
TRAINED_MODEL_SUFFIXES = (".pt", ".onnx")


def trained_model_path(model: str) -> Path | None:
    """``model`` as a checkpoint (``.pt``) or exported ONNX file when it names one, else None.

    Raises:
        ConfigError: it has such a suffix but the file does not exist.
    """
    path = Path(model).expanduser()
    if path.suffix.lower() not in TRAINED_MODEL_SUFFIXES:
        return None
    if not path.is_file():
        raise ConfigError(f"model '{model}': no such file; give a checkpoint written by tools/train.py (.pt) or "
                          f"an ONNX file written by tools/export.py (.onnx)")
    return path


def model_config_path(model: str) -> Path:
    """``configs/models/<model>.yaml``, or ``model`` itself when it is a YAML file (or, for the inference
    benchmark, a trained ``.pt`` / ``.onnx`` file: see :func:`trained_model_path`).

    Raises:
        ConfigError: none of these exists (the shipped names are listed).
    """
    path = Path(model).expanduser()
    if (path.suffix in (".yaml", ".yml") and path.is_file()) or trained_model_path(model) is not None:
        return path
    candidate = MODEL_CONFIG_DIR / f"{model}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"model '{model}': no such model config; give one of {', '.join(names) or '(none)'} "
                      f"(configs/models/) or the path of a model YAML file")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: the high-water mark of the process's current
    address space. ``getrusage``'s ``ru_maxrss`` is not used there because it survives ``execve``, so a
    benchmark child spawned by a large parent (e.g. the timing probe at the end of a search) would
    report at least the parent's resident size at fork time. Elsewhere: ``ru_maxrss``.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def load_1min() -> float:
    """The 1-minute load average (0.0 where the OS does not report it)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat`` (``None`` where it does not exist)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(interval_s: float = 1.0) -> float | None:
    """How many cores were busy (all processes) during the next ``interval_s`` seconds, measured
    while this process sleeps; ``None`` where ``/proc/stat`` is not available. Unlike the load
    average it does not remember the benchmark's own previous case."""
    before = _cpu_times()
    time.sleep(interval_s)
    after = _cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])


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


def lstm_overrides(model: str, lstm_autocast: bool) -> list[str]:
    """``["model.sequence.autocast=true"]`` when asked for and the model's sequence stage is ``bilstm``."""
    if not lstm_autocast:
        return []
    cfg = load_config(model_config_path(model))
    return ["model.sequence.autocast=true"] if cfg.model.sequence.get("name") == "bilstm" else []


def train_config(case: TrainCase) -> Config:
    """The run config of a training case: the model YAML plus the case's data and train settings."""
    overrides = [*lstm_overrides(case.model, case.lstm_autocast),
        *([] if case.data == RECIPE_DATA else  # the recipe keeps its own image geometry
          [f"data.img_h={case.img_h}", f"data.img_w={case.img_w}", f"data.channels={case.channels}"]),
        f"data.workers={case.workers}",
        f"train.precision={case.precision}", f"train.channels_last={str(case.channels_last).lower()}",
        f"train.compile={case.compile}",
        f"train.batch_size={case.batch_size}", f"train.threads={case.threads}", "train.device=cpu",
        f"train.seed={case.seed}", f"train.steps={case.warmup + case.steps + 1}",
        "train.tensorboard=false", "train.progress=false",
        *case.overrides,
    ]
    cfg = load_config(model_config_path(case.model), overrides)
    if case.data == RECIPE_DATA:  # the config's own data section: sources, mixing, augmentation, distillation
        if not cfg.data.train:
            raise ConfigError(f"{case.model}: --with-data {RECIPE_DATA} needs a training config with data.train "
                              "(e.g. configs/train/default_model.yaml)")
    elif case.data is not None:
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
        from strkit.engine.run_data import build_run_data

        run_data = build_run_data(cfg, trainer.model.charset, trainer.dist, start_step=case.start_step,
                                  distiller=trainer.distiller)
        batches = iter(run_data.train)

    for _ in range(case.warmup):
        trainer.run_step(next(batches))
    rates: list[float] = []
    wait = total = 0.0
    images = 0
    for n_steps in window_sizes(case.steps, case.windows):
        n_images = 0
        t0 = time.perf_counter()
        for _ in range(n_steps):
            t_wait = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - t_wait
            trainer.run_step(batch)  # the run's own step: geometry and distillation targets included
            n_images += len(batch[1])
        dt = time.perf_counter() - t0
        total += dt
        images += n_images
        rates.append(n_images / dt)
    profile = profile_steps(trainer, batches, case.profile_steps) if case.profile_steps > 0 else None
    return TrainResult(
        case=case, pipeline=trainer.model.pipeline,
        params=sum(p.numel() for p in trainer.model.parameters()),
        images_per_s=statistics.median(rates), window_images_per_s=rates,
        step_ms=1000 * total / case.steps, peak_rss_mib=peak_rss_mib(), threads=torch.get_num_threads(),
        data_wait_fraction=None if case.data is None else wait / total,
        final_loss=(trainer.window.values.get("loss") or [None])[-1], profile=profile)


def profile_steps(trainer: Any, batches: Iterator[Any], steps: int, top: int = 15) -> dict[str, float]:
    """Run ``steps`` training steps under ``torch.profiler`` (CPU); the ``top`` operators by self CPU time,
    as {name: % of the total self CPU time}, largest first."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.run_step(next(batches))
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {e.key: round(100.0 * e.self_cpu_time_total / total, 2) for e in events[:top]}


def run_isolated(func: Callable[[_T], _R], case: _T) -> _R:
    """Run ``func(case)`` in a fresh (spawned) Python process and return its result.

    ``func`` must be a module-level function and ``case`` / its result picklable. Exceptions raised
    in the child are re-raised here.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(func, case).result()


@dataclass
class LoadGate:
    """Waits (at most ``retries`` times ``wait_s`` seconds) until at most ``max_busy`` cores are busy
    with other work, so that timings are not taken while others share the cores; ``waits`` records
    the busy-core figures that made it wait."""

    max_busy: float = 0.5
    retries: int = 3
    wait_s: float = 30.0
    waits: list[float] = field(default_factory=list)

    def wait(self, log: Callable[[str], None] = print) -> float | None:
        """Returns the busy cores measured last (possibly still above ``max_busy``)."""
        busy = busy_cores()
        for _ in range(self.retries):
            if busy is None or busy <= self.max_busy:
                break
            log(f"{busy:.2f} cores busy with other work (> {self.max_busy}): waiting {self.wait_s:.0f} s")
            self.waits.append(busy)
            time.sleep(self.wait_s)
            busy = busy_cores()
        return busy


def run_case(func: Callable[[_T], _R], case: _T, gate: LoadGate | None = None, isolate: bool = True) -> _R:
    """Measure one case: wait for ``gate``, note the load, run ``func(case)`` (in a fresh process when
    ``isolate``) and attach ``load_1min`` / ``busy_cores`` (as measured just before) to the result."""
    busy = gate.wait() if gate is not None else busy_cores()
    load = load_1min()
    if isolate:
        result = run_isolated(func, case)
    else:
        threads = torch.get_num_threads()
        try:
            result = func(case)
        finally:
            torch.set_num_threads(threads)
    result.load_1min, result.busy_cores = load, busy  # type: ignore[attr-defined]
    return result
