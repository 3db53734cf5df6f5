"""The one run loop: training, architecture search and language-model pre-training are subclasses of it.

:class:`RunLoop` owns what every run does the same way: setup (threads, device, process group, seeding),
the resume check and the common state (weights, optimiser, scheduler, gradient scaler, step, skipped steps,
RNG, the time budget), checkpoints (``last.pt`` with the full state, written atomically by rank 0), the
output folder, ``metrics.csv`` / TensorBoard, the progress bar, the time budget and the step loop::

    while step < last_step():
        run_step(next(batches))          # one optimisation step (the subclass's)
        step += 1;  hooks.after_step
        every log_every steps:  row = log_row();  log it;  hooks.after_log(row)
        out_of_time = budget.spent()      # rank 0's clock, broadcast: every rank stops at the same step
        every val_every steps, at the end and when out of time:
            metrics = validate() on rank 0;  log them;  hooks.after_validation(metrics)  (may stop the run)
        then, and every save_every steps:  save last.pt;  barrier
        stop when out of time or asked to
        on SIGTERM / SIGINT (rank 0's, broadcast): save last.pt at this step, raise RunInterrupted

A subclass supplies the step (:meth:`RunLoop.run_step`, which calls :meth:`RunLoop.forward_loss` for the
model's forward pass and :meth:`RunLoop.optimise` for backward and the optimiser step), its log row, its
validation and what its checkpoints hold beyond the common state. Behaviour that plugs into any run is a
:class:`Hook` (e.g. the validation observer of protocol search, parameters frozen for the first steps of a
fine-tuning run).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from strkit.checkpoint import load_checkpoint, save_checkpoint
from strkit.config import Config

from .distributed import shutdown
from .run_dir import prepare_out_dir_on_main
from .runtime import (
    Ranks,
    RunInterrupted,
    RunLogger,
    StopSignals,
    TimeBudget,
    check_resume,
    optimiser_step,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_run,
)

log = logging.getLogger("strkit")


class StopTraining(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a hook's :meth:`Hook.after_validation` to end the run after this validation; the message
    says why."""


class Hook:
    """Something that plugs into a :class:`RunLoop` at fixed points; every method does nothing by default.

    Every rank calls every hook; a hook that acts on rank 0 only checks ``loop.ranks.is_main``.
    """

    def before_run(self, loop: RunLoop) -> None:
        """Before the first step of this process (after the data is set up)."""

    def after_backward(self, loop: RunLoop) -> None:
        """After the backward pass of :meth:`RunLoop.optimise`, before clipping and the optimiser step."""

    def after_step(self, loop: RunLoop) -> None:
        """After each step; ``loop.step`` already counts it."""

    def after_log(self, loop: RunLoop, row: dict[str, float]) -> None:
        """After a training row was logged (``row`` holds ``step`` and the scalars)."""

    def after_validation(self, loop: RunLoop, metrics: dict[str, float]) -> None:
        """After a validation (``metrics`` is empty on ranks other than 0 and without validation data).
        May raise :class:`StopTraining`; rank 0's reason then ends the run on every rank."""

    def after_run(self, loop: RunLoop, reason: str) -> None:
        """After the loop ended (``reason``: ``steps``, ``time`` or why a hook stopped it)."""


#: ``on_validation(step, metrics)``: called on rank 0 after each validation; may raise :class:`StopTraining`.
ValidationObserver = Callable[[int, dict[str, float]], None]


class ObserveValidation(Hook):
    """Calls ``fn(step, metrics)`` on rank 0 after each validation that produced metrics."""

    def __init__(self, fn: ValidationObserver) -> None:
        self.fn = fn

    def after_validation(self, loop: RunLoop, metrics: dict[str, float]) -> None:
        if loop.ranks.is_main and metrics:
            self.fn(loop.step, dict(metrics))


class RunLoop:
    """The base of every run (see the module docstring).

    Subclasses set :attr:`model` (with ``charset``), :attr:`net` (what :meth:`forward_loss` calls: the model,
    or its DDP wrapper), :attr:`optimizer`, :attr:`scheduler` and :attr:`scaler` in their constructor, then call
    :meth:`resume_state`.

    Args:
        cfg: the run's config (``train`` holds steps, intervals, budget, output folder, seed, device).
        resume: a ``last.pt`` to continue from; it is checked against :attr:`resume_sections` here.
        overwrite: replace an earlier run's outputs in ``train.out_dir`` (see :mod:`strkit.engine.run_dir`).
        hooks: hooks called in this order.
        ranks: the collective operations (default: ``torch.distributed`` of this process's group).
        clock: the time budget's clock (seconds; a test passes its own).
    """

    #: progress bar label ("" = no bar).
    progress_desc = "train"
    #: config sections a checkpoint must share to be resumed.
    resume_sections: tuple[str, ...] = ("model", "data")
    #: an ``extra`` entry a resumable checkpoint must hold, and the kind of run that writes it.
    resume_state_key = ""
    run_kind = "training"
    #: ``last.pt`` holds the full state (False: weights and metrics only).
    resumable = True

    model: Any
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def __init__(self, cfg: Config, resume: str | Path | None = None, overwrite: bool = False,
                 hooks: Sequence[Hook] = (), ranks: Ranks | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.cfg = cfg
        self.resumed_from = resume
        self.overwrite = overwrite
        self.hooks: list[Hook] = list(hooks)
        self.device, self.dist = setup_run(cfg)
        self.ranks = ranks if ranks is not None else Ranks(self.dist)
        self.out_dir = Path(cfg.train.out_dir)
        self.resume_payload: dict[str, Any] | None = load_checkpoint(resume) if resume else None
        if self.resume_payload is not None:
            check_resume(self.resume_payload, cfg, resume, self.resume_sections, self.resume_state_key,
                         self.run_kind)
        seed_everything(cfg.train.seed + self.dist.rank)
        self.step = 0
        self.first_step = 0  # where this process's loop started
        self.skipped_steps = 0
        self.clock = clock
        self.budget = TimeBudget(cfg.train.max_minutes, clock=clock)
        self.logger: RunLogger | None = None
        self.last_val: dict[str, float] = {}  # the last validation's metrics (empty on ranks other than 0)

    # -- state ----------------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds of the run so far, across resumes."""
        return self.budget.elapsed_s

    @property
    def elapsed_before(self) -> float:
        """Seconds the run spent before this process (resumed runs, time counted outside the loop)."""
        return self.budget.spent_before_s

    def resume_state(self) -> None:
        """Load the checkpoint given as ``resume`` (weights, optimiser, scheduler, scaler, step, skipped steps,
        budget, :meth:`load_extras`, RNG); nothing without one. Call it once the run's objects exist."""
        payload = self.resume_payload
        if payload is None:
            return
        self.model.load_state_dict(payload["state_dict"])
        ts = payload["train_state"]
        self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        if ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])
        self.step = int(payload["step"])
        self.skipped_steps = int(ts.get("skipped_steps", 0))
        self.budget = TimeBudget(self.cfg.train.max_minutes, float(ts.get("elapsed_s", 0.0)), self.clock)
        self.load_extras(payload)
        rng = ts.get("rng", {}).get(str(self.dist.rank)) or ts.get("rng", {}).get("0")
        if rng is not None:
            set_rng_state(rng)
        self.resume_payload = None

    def train_state(self) -> dict[str, Any]:
        """The full state of ``last.pt`` (its ``train_state``): the common part plus :meth:`state_extras`."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": {"0": rng_state()},
            "skipped_steps": self.skipped_steps,
            "elapsed_s": self.elapsed_s,
            "sampler": {"step": self.step},
            **self.state_extras(),
        }

    def save(self, name: str, metrics: dict[str, float], full_state: bool = True) -> Path | None:
        """Atomically write ``out_dir/name`` (rank 0 only; ``full_state``: with the state to resume from)."""
        if not self.ranks.is_main:
            return None
        return save_checkpoint(self.out_dir / name, config=self.cfg.to_dict(), charset=self.model.charset.to_dict(),
                               state_dict=self.model.state_dict() if full_state else self.inference_state(),
                               step=self.step,
                               metrics=self.checkpoint_metrics(metrics),
                               arch=getattr(self.model, "arch", None),
                               rectifier_arch=getattr(self.model, "rectifier_arch", None),
                               train_state=self.train_state() if full_state else None,
                               extra=self.checkpoint_extra())

    # -- what subclasses supply -----------------------------------------------------------------
    def state_extras(self) -> dict[str, Any]:
        """Entries of ``train_state`` beyond the common ones."""
        return {}

    def load_extras(self, payload: dict[str, Any]) -> None:
        """Restore what :meth:`state_extras` and :meth:`checkpoint_extra` saved."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """The checkpoint's ``extra`` entry."""
        return {}

    def inference_state(self) -> dict[str, Any]:
        """The weights an inference-only checkpoint (``full_state=False``: ``best.pt``, snapshots) stores
        (default: the model's own; a run with a weight average stores the average)."""
        return self.model.state_dict()

    def checkpoint_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The metrics stored in a checkpoint (default: the last validation's)."""
        return metrics

    def setup(self) -> None:
        """Build the data (:attr:`data`) once the output folder is ready; log what the run reads."""

    def batches(self) -> Iterator[Any]:
        """Endless training batches (default: the mixed training loader of :attr:`data`)."""
        while True:  # the mixed loader is endless; loop in case a finite loader is plugged in
            yield from self.data.train

    def run_step(self, batch: Any) -> None:
        """One optimisation step on ``batch``; record what :meth:`log_row` reports."""
        raise NotImplementedError

    def log_row(self) -> dict[str, float]:
        """The scalars of the training row at a log step (and reset the window they summarise)."""
        return {}

    def progress_postfix(self, row: dict[str, float], last_val: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after a log step."""
        return {}

    def validate(self) -> dict[str, float]:
        """Validation metrics (called on rank 0 only); empty without validation data."""
        return {}

    def last_step(self) -> int:
        """Where the loop ends (default ``train.steps``)."""
        return self.cfg.train.steps

    def finish(self, reason: str) -> Any:
        """After the loop (every rank): write the run's outputs, return what :meth:`fit` returns."""
        return None

    # -- the step -------------------------------------------------------------------------------
    def images_to_device(self, images: torch.Tensor) -> torch.Tensor:
        """A B×C×H×W batch on the run's device (channels-last with ``train.channels_last``)."""
        images = images.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def forward_loss(self, *inputs: Any) -> Any:
        """The model's training forward pass (``net(*inputs)``, e.g. ``(images, targets)`` -> output with
        ``loss``): the one place a training step runs the network, so a compiled step wraps it here."""
        return self.net(*inputs)

    def optimise(self, loss: torch.Tensor, clip: Sequence[torch.nn.Parameter] | None = None,
                 what: str = "step") -> bool:
        """Backward and optimiser step for ``loss`` (see :func:`strkit.engine.runtime.optimiser_step`), with
        the hooks' :meth:`Hook.after_backward` and ``train.grad_clip`` over ``clip`` (default: every model
        parameter). A non-finite loss skips the step (counted in :attr:`skipped_steps`); returns False then."""
        params = list(self.model.parameters()) if clip is None else clip
        done = optimiser_step(loss, self.optimizer, self.scheduler, self.scaler, params, self.cfg.train.grad_clip,
                              after_backward=lambda: self._call("after_backward"))
        if not done:
            self.skipped_steps += 1
            log.warning("non-finite loss at step %d: %s skipped (%d so far)", self.step, what, self.skipped_steps)
        return done

    # -- the run --------------------------------------------------------------------------------
    def fit(self) -> Any:
        """Prepare the output folder, :meth:`setup`, run the loop, :meth:`finish`; returns what finish returns."""
        prepare_out_dir_on_main(self.ranks, self.out_dir, resume_step=self.step if self.resumed_from else None,
                                overwrite=self.overwrite, resumed_from=self.resumed_from)
        if self.ranks.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.dump(self.out_dir / "config.yaml")
        self.setup()
        reason = self.run()
        result = self.finish(reason)
        self.ranks.barrier()
        shutdown(self.dist)
        return result

    def run(self) -> str:
        """The step loop (see the module docstring); returns why it ended: ``steps``, ``time`` or the reason a
        hook gave to stop."""
        cfg = self.cfg.train
        self.logger = RunLogger(self.out_dir, enabled=self.ranks.is_main, tensorboard=cfg.tensorboard)
        bar = None
        if cfg.progress and self.progress_desc and self.ranks.is_main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=self.progress_desc, dynamic_ncols=True)
        self.first_step = self.step
        self.last_val = {}
        reason = "steps"
        batches = self.batches()
        self.budget.start()
        self._call("before_run")
        with StopSignals() as signals:
            try:
                while self.step < self.last_step():
                    try:
                        batch = next(batches)
                    except Exception:
                        if signals.received:  # the signal also reached the loader's workers
                            self._interrupted(signals.received)
                        raise
                    self.run_step(batch)
                    self.step += 1
                    self._call("after_step")
                    if self.step % cfg.log_every == 0 or self.step >= self.last_step():
                        row = {"step": self.step, **self.log_row()}
                        self.logger.log(row)
                        if bar is not None:
                            bar.set_postfix(**self.progress_postfix(row, self.last_val))
                        self._call("after_log", row)
                        if bar is not None:
                            bar.total = self.last_step()
                    if bar is not None:
                        bar.update(1)
                    out_of_time = self.budget.spent(self.ranks)
                    if out_of_time:
                        reason = "time"
                    stopped = ""
                    if self.step % cfg.val_every == 0 or self.step >= self.last_step() or out_of_time:
                        stopped = self._validation()
                        reason = stopped or reason
                        self._save_last()
                    elif self.step % cfg.save_every == 0:
                        self._save_last()
                    if out_of_time or stopped:
                        break
                    signum = signals.requested(self.ranks)
                    if signum:
                        self._interrupted(signum)
            finally:
                if bar is not None:
                    bar.close()
                self.logger.close()
        self._call("after_run", reason)
        return reason

    def _validation(self) -> str:
        """Validate on rank 0, log, call the hooks; the reason a hook gave to stop (rank 0's), or ``""``."""
        metrics = self.validate() if self.ranks.is_main else {}
        if metrics:
            assert self.logger is not None
            self.logger.log({"step": self.step, **metrics})
        self.last_val = metrics
        reason = ""
        try:
            self._call("after_validation", metrics)
        except StopTraining as stop:
            reason = f"stopped after validation: {stop}" if str(stop) else "stopped after validation"
        self.ranks.barrier()
        return str(self.ranks.broadcast(reason))

    def _interrupted(self, signum: int) -> None:
        """Save ``last.pt`` at the current step and raise :class:`RunInterrupted`."""
        self._save_last()
        raise RunInterrupted(signum, self.step, self.out_dir / "last.pt")

    def _save_last(self) -> None:
        self.save("last.pt", self.last_val, full_state=self.resumable)
        self.ranks.barrier()

    def _call(self, point: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self, *args)


class MeanWindow:
    """Scalars of the steps since the last log row, averaged per key."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, key: str, value: float | None) -> None:
        """Record ``value`` (None: nothing)."""
        if value is not None:
            self.values.setdefault(key, []).append(float(value))

    def mean(self, key: str) -> float:
        """The mean of ``key`` (NaN when nothing was recorded)."""
        vals = self.values.get(key)
        return float(np.mean(vals)) if vals else math.nan

    def means(self, keys: Sequence[str] | None = None) -> dict[str, float]:
        """``{key: mean}`` for ``keys`` that were recorded (default: every key, sorted)."""
        return {k: self.mean(k) for k in (keys if keys is not None else sorted(self.values)) if k in self.values}

    def clear(self) -> None:
        self.values.clear()
