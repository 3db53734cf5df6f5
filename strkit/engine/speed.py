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
batch 64, optionally with bf16 autocast or bf16 weights
(:func:`strkit.models.optimize.cast_for_inference`), channels-last, Conv+BN folding
(:func:`strkit.models.optimize.fuse_for_inference`) or oneDNN's bf16 arithmetic for fp32 tensors.

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
import contextlib
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from strkit.config import Config, ConfigError, SourceConfig, load_config

#: ``TrainCase.data`` value: batches from the training config's own data section (the real recipe).
RECIPE_DATA = "config"

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
        lstm_autocast: let a ``bilstm`` sequence stage follow bf16 autocast
            (``model.sequence.autocast=true``) instead of running in fp32.
        steps: timed optimisation steps (after ``warmup``), split into ``windows`` windows.
        data: a training source (LMDB or folder dataset) to load batches from; ``None`` = synthetic.
        data_kind: ``lmdb`` or ``folder`` (the source kind of ``data``).
        workers: loader worker processes (``data.workers``) when ``data`` is set.
        compile: ``train.compile`` (``off`` or a ``torch.compile`` mode); the warm-up steps include the
            compilation.
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


#: Inference precisions: ``fp32``; ``bf16`` = fp32 weights under bf16 autocast; ``bf16-weights`` =
#: weights stored in bf16 (:func:`strkit.models.optimize.cast_for_inference`), no autocast.
INFER_PRECISIONS = ("fp32", "bf16", "bf16-weights")


@dataclass(frozen=True)
class InferCase:
    """One inference-speed configuration.

    Attributes:
        model: a model config name or path (as in :class:`TrainCase`).
        precision: one of :data:`INFER_PRECISIONS`.
        lstm_autocast: as in :class:`TrainCase` (matters for ``bf16`` only).
        channels_last: model weights and input in channels-last layout.
        fuse: fold Conv2d+BatchNorm2d pairs first (:func:`strkit.models.optimize.fuse_for_inference`).
        onednn_bf16: let oneDNN compute fp32 convolutions, matmuls and RNNs with bf16 arithmetic
            (``torch.backends.mkldnn.*.fp32_precision = "bf16"``; set only in the benchmark process).
        repeats: timed batch-1 calls (median reported); ``batch_repeats`` timed batch calls.
        backend: ``torch`` (eager PyTorch, the levers above) or ``onnxruntime`` (the model exported to ONNX
            with a fixed width and run in an ONNX Runtime session with ``threads`` intra-op threads;
            fp32 only, the levers are ONNX Runtime's own graph optimisations).
    """

    model: str
    precision: str = "fp32"
    lstm_autocast: bool = False
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
    backend: str = "torch"

    @property
    def levers(self) -> str:
        """The levers of this case in words, e.g. ``bf16 + channels-last + fused``."""
        if self.model.lower().endswith(".onnx"):
            return f"{self.backend}, the file as exported"  # e.g. an int8 export: its own precision
        if self.backend != "torch":
            return f"{self.backend} {self.precision}"
        parts = [self.precision]
        if self.lstm_autocast and self.precision == "bf16":
            parts.append("bf16 LSTM")
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
    fused_pairs: int = 0
    load_1min: float = 0.0  # set by run_case
    busy_cores: float | None = None  # set by run_case

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["case"] = asdict(self.case)
        return out


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
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

        run_data = build_run_data(cfg, trainer.model.charset, trainer.dist, distiller=trainer.distiller)
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
    return TrainResult(
        case=case, pipeline=trainer.model.pipeline,
        params=sum(p.numel() for p in trainer.model.parameters()),
        images_per_s=statistics.median(rates), window_images_per_s=rates,
        step_ms=1000 * total / case.steps, peak_rss_mib=peak_rss_mib(), threads=torch.get_num_threads(),
        data_wait_fraction=None if case.data is None else wait / total, final_loss=(trainer.window.values.get("loss") or [None])[-1])


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


def prepare_inference_model(case: InferCase) -> tuple[torch.nn.Module, int]:
    """The eval-mode model of ``case`` (random weights, or a checkpoint's trained ones): fused, cast
    and/or channels-last as asked; and the parameter count of its architecture (before folding)."""
    from strkit.models.optimize import cast_for_inference, fuse_for_inference
    from strkit.models.pretrained import load_model
    from strkit.models.recognizer import build_model

    if case.precision not in INFER_PRECISIONS:
        raise ValueError(f"precision {case.precision!r}: use one of {', '.join(INFER_PRECISIONS)}")
    checkpoint = trained_model_path(case.model)
    if checkpoint is not None:
        if checkpoint.suffix.lower() != ".pt":
            raise ValueError(f"model '{case.model}' is an exported ONNX file: time it with --backend onnxruntime")
        model = load_model(checkpoint)[0].eval()
        if case.lstm_autocast:
            raise ValueError(f"model '{case.model}': --lstm-bf16 on applies to model configs, not checkpoints")
    else:
        cfg = load_config(model_config_path(case.model), lstm_overrides(case.model, case.lstm_autocast))
        torch.manual_seed(case.seed)
        model = build_model(cfg.model, case.img_h, case.img_w, case.channels).eval()
    params = model.num_parameters()
    if case.fuse:
        model = fuse_for_inference(model, inplace=True)
    if case.precision == "bf16-weights":
        model = cast_for_inference(model, torch.bfloat16, inplace=True)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, params


#: Inference backends of :class:`InferCase`.
INFER_BACKENDS = ("torch", "onnxruntime")


def _onnx_predictor(model: torch.nn.Module, case: InferCase, folder: str) -> Any:
    """``model`` exported to ONNX (fixed width: the timed inputs have one size) in an ONNX Runtime session
    with ``case.threads`` intra-op threads; its ``predict`` decodes like ``model.predict``."""
    from strkit.export import export_onnx
    from strkit.inference.onnx_backend import OnnxBackend

    path = Path(folder) / "model.onnx"
    export_onnx(model, path, dynamic_batch=True, dynamic_width=False)
    return OnnxBackend(path, threads=case.threads)


def _onnx_file_predictor(path: Path, case: InferCase) -> tuple[Any, int, str, int]:
    """An exported ``.onnx`` file in an ONNX Runtime session with ``case.threads`` threads, with its
    parameter count (initializer elements; an int8 file counts its quantised weights) and pipeline."""
    import onnx

    from strkit.inference.onnx_backend import OnnxBackend

    if case.backend != "onnxruntime":
        raise ValueError(f"model '{case.model}' is an exported ONNX file: time it with --backend onnxruntime")
    graph = onnx.load(str(path), load_external_data=False).graph
    params = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type != onnx.TensorProto.INT64)
    backend = OnnxBackend(path, threads=case.threads)
    return backend, params, backend.metadata.pipeline, 0


def measure_infer(case: InferCase) -> InferResult:
    """Median batch-1 latency and batch throughput of ``predict`` (forward + greedy decoding), in eager
    PyTorch or, with ``case.backend == "onnxruntime"``, in ONNX Runtime."""
    if case.backend not in INFER_BACKENDS:
        raise ValueError(f"backend {case.backend!r}: use one of {', '.join(INFER_BACKENDS)}")
    if case.backend != "torch" and (case.precision != "fp32" or case.channels_last or case.fuse):
        raise ValueError(f"backend {case.backend!r} is timed in fp32 without the PyTorch levers "
                         f"(got {case.levers}); ONNX Runtime applies its own graph optimisations")
    torch.set_num_threads(case.threads)
    trained = trained_model_path(case.model)
    onnx_file = trained is not None and trained.suffix.lower() == ".onnx"
    if onnx_file:
        model, params, pipeline, fused = _onnx_file_predictor(trained, case)
    else:
        model, params = prepare_inference_model(case)
        pipeline, fused = model.pipeline, int(getattr(model, "fused_pairs", 0))
    if trained is not None:  # a trained model is timed at its own input size
        spec = model.input_spec if hasattr(model, "input_spec") else model
        case = replace(case, img_h=int(spec.img_h), img_w=int(spec.img_w), channels=int(spec.channels))
    with contextlib.ExitStack() as stack:
        if case.backend == "onnxruntime" and not onnx_file:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="strkit-bench-"))
            model = _onnx_predictor(model, case, folder)
        single, batched = _time_predict(case, model)
    return InferResult(
        case=case, pipeline=pipeline, params=params,
        ms_per_image=1000 * statistics.median(single), ms_per_image_min=1000 * min(single),
        images_per_s=case.batch / statistics.median(batched), peak_rss_mib=peak_rss_mib(),
        threads=case.threads if case.backend != "torch" else torch.get_num_threads(), fused_pairs=fused)


def _time_predict(case: InferCase, model: Any) -> tuple[list[float], list[float]]:
    """Seconds of each timed ``model.predict`` call at batch 1 and at ``case.batch``."""
    from strkit.engine.runtime import autocast_context

    device = torch.device("cpu")
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    dtype = torch.bfloat16 if case.precision == "bf16-weights" else torch.float32
    autocast = "bf16" if case.precision == "bf16" else "fp32"
    gen = torch.Generator().manual_seed(case.seed)

    def inputs(batch: int) -> torch.Tensor:
        x = torch.rand(batch, case.channels, case.img_h, case.img_w, generator=gen) * 2 - 1
        return x.to(dtype).contiguous(memory_format=memory_format)

    def timed(x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
        times = []
        for i in range(warmup + repeats):
            t = time.perf_counter()
            with autocast_context(device, autocast):
                model.predict(x)
            if i >= warmup:
                times.append(time.perf_counter() - t)
        return times

    with torch.inference_mode(), onednn_fp32_precision("bf16" if case.onednn_bf16 else "none"):
        single = timed(inputs(1), case.warmup, case.repeats)
        batched = timed(inputs(case.batch), 1, case.batch_repeats)
    return single, batched


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


def _fmt_busy(busy: float | None) -> str:
    return "–" if busy is None else f"{busy:.2f}"


def train_table(results: Sequence[TrainResult]) -> str:
    """A markdown table of training results, one row per case."""
    with_data = any(r.data_wait_fraction is not None for r in results)
    head = ["model", "pipeline", "params", "precision", "channels-last", "compile", "batch", "threads",
            "images/s (median)", "windows min–max", "ms/step", "peak RSS (GiB)"]
    if with_data:
        head.append("data wait")
    head += ["load (1 min)", "busy cores before"]
    rows = []
    for r in results:
        c = r.case
        precision = f"{c.precision} + bf16 LSTM" if c.lstm_autocast and c.precision == "bf16" else c.precision
        row = [c.model, r.pipeline, _fmt_params(r.params), precision, "on" if c.channels_last else "off",
               c.compile, str(c.batch_size), str(r.threads), f"{r.images_per_s:.1f}",
               f"{min(r.window_images_per_s):.1f}–{max(r.window_images_per_s):.1f}", f"{r.step_ms:.0f}",
               f"{r.peak_rss_mib / 1024:.2f}"]
        if with_data:
            row.append("–" if r.data_wait_fraction is None else f"{100 * r.data_wait_fraction:.1f}%")
        row += [f"{r.load_1min:.2f}", _fmt_busy(r.busy_cores)]
        rows.append(row)
    return _markdown(head, rows)


def infer_table(results: Sequence[InferResult]) -> str:
    """A markdown table of inference results, one row per case."""
    batch = results[0].case.batch if results else 64
    head = ["model", "params", "levers", "threads", "ms/image (batch 1, median)", "min",
            f"images/s (batch {batch})", "peak RSS (GiB)", "load (1 min)", "busy cores before"]
    rows = [[r.case.model, _fmt_params(r.params), r.case.levers, str(r.threads), f"{r.ms_per_image:.2f}",
             f"{r.ms_per_image_min:.2f}", f"{r.images_per_s:.0f}", f"{r.peak_rss_mib / 1024:.2f}",
             f"{r.load_1min:.2f}", _fmt_busy(r.busy_cores)] for r in results]
    return _markdown(head, rows)


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


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
