"""What every run shares below its loop: seeding and RNG state, precision, ranks, the time budget, the log,
and the resume-compatibility check.

- :func:`seed_everything`, :func:`rng_state`, :func:`set_rng_state`: the global RNGs (Python, NumPy, torch)
  and their state as tensors / plain lists, loadable with ``weights_only=True``.
- :func:`autocast_context`: ``train.precision`` (``fp32`` / ``bf16`` / ``fp16``) as an autocast context.
- :func:`setup_run`: thread count, device and (under ``torchrun``) process group of a run.
- :class:`Ranks`: the collective operations the loop needs (broadcast from rank 0, barrier); a stand-in
  with the same methods simulates ranks in tests.
- :class:`TimeBudget`: ``train.max_minutes``, summed over resumes; rank 0's clock decides and every rank
  follows, so all ranks stop at the same step.
- :class:`RunLogger`: ``metrics.csv`` (``step,key,value`` rows) and TensorBoard.
- :func:`check_resume`: whether a checkpoint can continue this run, with one message naming what differs.
- :func:`optimiser_step`: backward, gradient clipping and the optimiser / scheduler step of one loss, with
  non-finite losses skipped.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from strkit.config import Config, ConfigError, from_dict

from .distributed import DistInfo, barrier, broadcast_object, init_distributed, resolve_device

log = logging.getLogger("strkit")

_AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- RNG ------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors / plain lists (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    random.setstate((state["python_version"], tuple(state["python"]), None))


# -- precision and devices ------------------------------------------------------------------------
def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``bf16`` / ``fp16``; a null context for ``fp32``."""
    if precision not in _AMP_DTYPES:
        raise ValueError(f"train.precision={precision!r}: use one of {', '.join(_AMP_DTYPES)}")
    dtype = _AMP_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs CUDA; use bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


#: Stages of a recogniser that ``train.fp32_stages`` may keep out of mixed precision.
MODEL_STAGES: tuple[str, ...] = ("rectifier", "backbone", "sequence", "decoder")


def keep_stages_in_fp32(model: torch.nn.Module, stages: Sequence[str]) -> None:
    """Make the named stages of ``model`` run in fp32 under a mixed-precision autocast (``train.fp32_stages``):
    e.g. a MobileNetV2 backbone, whose depthwise convolutions are slower in bf16 on CPUs, beside a bf16 LSTM
    (``model.sequence.autocast=true``). Forward hooks on each stage switch autocast off around its forward and
    cast floating inputs to the stage's parameter dtype; the weights and their names are untouched (checkpoints
    do not change), and a copy of the model keeps the behaviour. Outside autocast nothing changes."""
    unknown = [s for s in stages if s not in MODEL_STAGES]
    if unknown:
        raise ConfigError(f"train.fp32_stages: unknown stage {unknown[0]!r}; use some of {', '.join(MODEL_STAGES)}")
    for name in stages:
        stage = getattr(model, name)
        stage._fp32_contexts = []  # one entry per call in progress: the autocast-off context, or None
        stage.register_forward_pre_hook(_enter_fp32)
        stage.register_forward_hook(_exit_fp32, always_call=True)


def _enter_fp32(stage: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
    if not torch.is_autocast_enabled(device):
        stage._fp32_contexts.append(None)
        return None
    context = torch.autocast(device_type=device, enabled=False)
    context.__enter__()
    stage._fp32_contexts.append(context)
    param = next(stage.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _exit_fp32(stage: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
    context = stage._fp32_contexts.pop() if stage._fp32_contexts else None
    if context is not None:
        context.__exit__(None, None, None)


def setup_run(cfg: Config) -> tuple[torch.device, DistInfo]:
    """Thread count, device and (under ``torchrun``) process group of a run."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    if dist.enabled:
        device = resolve_device(cfg.train.device, dist)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, dist


class Ranks:
    """The collective operations of a run over ``torch.distributed`` (no-ops in a single process).

    Args:
        dist: this process's rank and the world size.
    """

    def __init__(self, dist: DistInfo) -> None:
        self.dist = dist

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def broadcast(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        return broadcast_object(obj, self.dist)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        barrier(self.dist)


# -- the time budget ------------------------------------------------------------------------------
class TimeBudget:
    """Wall-clock budget of a run (``train.max_minutes``; 0 = none), summed over resumes.

    Args:
        max_minutes: the budget; ``<= 0`` means no limit.
        spent_s: seconds spent before this process (by the runs this one resumes).
        clock: seconds from an arbitrary origin (``time.perf_counter``; a test passes its own).
    """

    def __init__(self, max_minutes: float, spent_s: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_minutes = float(max_minutes)
        self.spent_before_s = float(spent_s)
        self.clock = clock
        self.started = clock()

    def start(self) -> None:
        """Start this process's share of the budget now (the loop calls it before its first step)."""
        self.started = self.clock()

    def add(self, seconds: float) -> None:
        """Count ``seconds`` spent outside the loop (e.g. filling a teacher cache) against the budget."""
        self.spent_before_s += float(seconds)

    @property
    def session_s(self) -> float:
        """Seconds since :meth:`start`."""
        return self.clock() - self.started

    @property
    def elapsed_s(self) -> float:
        """Seconds spent across resumes."""
        return self.spent_before_s + self.session_s

    @property
    def remaining_s(self) -> float:
        """Seconds left (``inf`` without a budget)."""
        return self.max_minutes * 60 - self.elapsed_s if self.max_minutes > 0 else float("inf")

    def spent(self, ranks: Ranks) -> bool:
        """Whether the budget is used up, by rank 0's clock: every rank gets the same answer at the same
        step (a collective call: every rank must make it)."""
        if self.max_minutes <= 0:
            return False
        return bool(ranks.broadcast(self.elapsed_s / 60 >= self.max_minutes))


# -- stopping on a signal -------------------------------------------------------------------------
class RunInterrupted(Exception):  # noqa: N818 (how a run ended, not an error of the user)
    """The run stopped on SIGTERM / SIGINT after saving ``last.pt``; ``--resume`` continues it.

    Attributes:
        signum: the signal's number (the tools exit with ``128 + signum``, as the shell does for a kill).
        step: the step saved.
        path: the checkpoint written.
    """

    def __init__(self, signum: int, step: int, path: Path) -> None:
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; saved {path} (the same "
                         f"command with --resume continues the run; a protocol search goes on with new trials "
                         f"when its command is run again)")


class StopSignals:
    """While a run's loop runs: the first SIGTERM or SIGINT asks it to stop after the step in progress
    (it saves ``last.pt`` and raises :class:`RunInterrupted`), so that killing a long job loses nothing; a
    second signal acts as it would without this (the handlers in place before are back). Handlers can only
    be set in the main thread; elsewhere this does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received = 0
        self._pid = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked data-loader worker inherited the handler: the run decides
            return
        self.received = signum
        self._restore()
        log.warning("%s received: stopping after this step (a second one stops at once)",
                    signal.Signals(signum).name)

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def requested(self, ranks: Ranks) -> int:
        """The signal rank 0 received (0 = none): every rank gets the same answer at the same step (a
        collective call in a distributed run: every rank must make it)."""
        return int(ranks.broadcast(self.received))  # type: ignore[call-overload]  (no-op in one process)


# -- the log --------------------------------------------------------------------------------------
class RunLogger:
    """Appends rows to ``metrics.csv`` (one file, columns grown as new keys appear) and TensorBoard."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.csv"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed: TensorBoard logging is off "
                            "(pip install tensorboard, or set train.tensorboard=false)")

    def log(self, row: dict[str, float]) -> None:
        """Write ``row`` (``step`` plus scalars)."""
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "key", "value"])
            for k, v in row.items():
                if k != "step":
                    writer.writerow([row["step"], k, v])
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# -- resume ---------------------------------------------------------------------------------------
class ResumeError(ValueError):
    """A checkpoint cannot continue this run (another config, no training state, another kind of run)."""


# Settings that may change between the pieces of one run because they do not change what the run computes:
# the loader's sampler and augmentation are functions of (seed, step, position) alone, so ``data.workers``
# can follow the machine a piece runs on (one worker on a 2-core laptop, fourteen on a 16-core server).
RESUME_FREE: dict[str, tuple[str, ...]] = {"data": ("workers",)}


def check_resume(payload: Mapping[str, Any], cfg: Config, path: str | Path, sections: Sequence[str],
                 state_key: str = "", kind: str = "training") -> None:
    """Refuse a checkpoint that cannot continue the run of ``cfg``.

    Args:
        payload: the loaded checkpoint.
        cfg: this run's config.
        path: the checkpoint's path (for the message).
        sections: config sections that must be equal (e.g. ``("model", "data")``), except for the fields of
            :data:`RESUME_FREE` (``data.workers``), which a piece may set for its machine.
        state_key: an ``extra`` entry the run needs (e.g. ``search_state``); ``""`` = none.
        kind: what kind of run wrote such checkpoints (for the message).

    Raises:
        ResumeError: a section differs, the checkpoint holds no training state, or lacks ``state_key``.
    """
    saved = from_dict(payload["config"])
    for section in sections:
        mine, theirs = getattr(cfg, section), getattr(saved, section)
        if RESUME_FREE.get(section):
            theirs = dataclasses.replace(theirs, **{k: getattr(mine, k) for k in RESUME_FREE[section]})
        if theirs != mine:
            raise ResumeError(f"cannot resume from {path}: its '{section}' config differs from this run's. "
                              "Resume with the saved config (it is in the run folder as config.yaml).")
    if payload.get("train_state") is None:
        raise ResumeError(f"cannot resume from {path}: this checkpoint holds no training state (a 'best' "
                          "checkpoint?); resume from last.pt")
    if state_key and not (payload.get("extra") or {}).get(state_key):
        what = state_key.replace("_", " ")
        raise ResumeError(f"cannot resume from {path}: it is not a {kind} checkpoint (no {what}); pass the "
                          f"last.pt of a {kind} run")


# -- one optimisation step ------------------------------------------------------------------------
def optimiser_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                   scaler: torch.amp.GradScaler | None = None, clip: Iterable[torch.nn.Parameter] = (),
                   max_norm: float = 0.0, after_backward: Callable[[], None] | None = None) -> bool:
    """Backward and step for ``loss``: zero the gradients, skip a non-finite loss (the scheduler still
    advances, so the schedule stays aligned with the step count), scale and backward, ``after_backward()``
    (e.g. drop the gradients of frozen parameters), clip ``clip``'s gradient norm to ``max_norm`` (> 0),
    step the optimiser and the scheduler. Returns False when the step was skipped."""
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss.detach()):
        if scheduler is not None:
            scheduler.step()
        return False
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if after_backward is not None:
        after_backward()
    if max_norm > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in clip if p.grad is not None], max_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return True
