"""The training loop: mixed data, AMP, gradient clipping, validation, atomic checkpoints, exact resume.

One :class:`Trainer` runs one config. ``fit()`` trains until ``train.steps`` (or ``train.max_minutes``),
validating every ``train.val_every`` steps and writing ``last.pt`` (full state, for resume) and
``best.pt`` (best validation accuracy) into ``train.out_dir`` beside ``config.yaml``, ``metrics.csv``
and TensorBoard events. Under ``torchrun`` it trains with DistributedDataParallel; every rank reads
a disjoint shard of each source and rank 0 validates, logs and saves.

Resume is exact: model, optimiser, scheduler, step, RNG states and the sampler position (the
sampler is a pure function of seed and step) are restored, so a run killed at any moment and resumed
from ``last.pt`` ends with the same weights as an uninterrupted run (with deterministic kernels; each
sample's augmentation is seeded from ``(seed, rank, step, position)``, so loader workers and random
augmentation keep it exact).

Observers: ``Trainer(cfg, on_validation=fn)`` calls ``fn(step, metrics)`` on rank 0 after each validation
(the metrics of :meth:`Trainer.validate`); ``fn`` may raise :class:`StopTraining` to end the run there, like
a spent budget (``last.pt`` is written and :meth:`Trainer.fit` returns). Protocol search uses it to report
intermediate accuracies to its pruner (:mod:`strkit.engine.tuning`).

Word geometry: with ``model.geometry_loss > 0`` the training batches carry each sample's word geometry
(``(images, labels, geometries)``, see :mod:`strkit.engine.data`); :meth:`Trainer.train_step` turns it
into the ScRN rectifier's targets and the model adds the weighted geometry loss. Its unweighted value
is logged as ``geometry_loss`` (mean over the log window, steps whose batch had geometry).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from strkit.charset import Charset
from strkit.checkpoint import load_checkpoint, save_checkpoint
from strkit.codecs import CTCCodec
from strkit.config import Config, ConfigError, from_dict
from strkit.data.teacher_cache import TeacherTarget
from strkit.engine.metrics import RecognitionMetrics
from strkit.models.recognizer import AUX_CTC_PREFIX, GEOMETRY_TARGETS, RecognitionModel, build_model

from .distill import Distiller
from .distributed import DistInfo, barrier, broadcast_object, init_distributed, resolve_device, shutdown
from .finetune import adopt_init_config, init_with_charset_change, resolve_init_source
from .optim import build_optimizer, build_scheduler, parameters_with_prefix, set_schedule_length
from .run_data import RunData, build_run_data
from .run_dir import prepare_out_dir_on_main

log = logging.getLogger("strkit")

_AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
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
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    random.setstate((state["python_version"], tuple(state["python"]), None))


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


def frozen_parameters(model: torch.nn.Module, freeze: Mapping[str, int]) -> list[tuple[int, list[torch.nn.Parameter]]]:
    """``train.freeze`` ({parameter-name prefix: step}) -> [(step, parameters)], checked: every prefix
    must name parameters of the model and every step must be a non-negative integer."""
    out: list[tuple[int, list[torch.nn.Parameter]]] = []
    for prefix, until in (freeze or {}).items():
        if not isinstance(until, int) or isinstance(until, bool) or until < 0:
            raise ConfigError(f"train.freeze.{prefix}: the step until which it stays fixed must be an integer "
                              f">= 0, got {until!r}")
        out.append((until, parameters_with_prefix(list(model.named_parameters()), prefix, "train.freeze")))
    return out


def setup_run(cfg: Config) -> tuple[torch.device, DistInfo]:
    """Thread count, device and (under ``torchrun``) process group of a training or search run."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    if dist.enabled:
        device = resolve_device(cfg.train.device, dist)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, dist


class StopTraining(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by an ``on_validation`` observer to end the run after this validation; the message says why."""


#: ``on_validation(step, metrics)``: called on rank 0 after each validation; may raise :class:`StopTraining`.
ValidationObserver = Callable[[int, dict[str, float]], None]


class Trainer:
    """Trains one model from a resolved :class:`Config`.

    Args:
        cfg: the run's config.
        resume: path of a ``last.pt`` to resume from (its config's model/data sections must match).
        overwrite: replace the outputs of an earlier run in ``train.out_dir``; without it (or
            ``resume``) :meth:`fit` refuses a folder that holds one (see :mod:`strkit.engine.run_dir`).
        on_validation: an observer of each validation (see the module docstring), or None.
    """

    def __init__(self, cfg: Config, resume: str | Path | None = None, overwrite: bool = False,
                 on_validation: ValidationObserver | None = None) -> None:
        cfg = adopt_init_config(cfg)
        if not cfg.model.charset:
            raise ConfigError("model.charset is empty; an empty charset means 'the init checkpoint's' and needs "
                              "train.init_from with train.init_config=true")
        self.cfg = cfg
        self.on_validation = on_validation
        self.resumed_from = resume
        self.overwrite = overwrite
        self.device, self.dist = setup_run(cfg)
        self.out_dir = Path(cfg.train.out_dir)
        payload = load_checkpoint(resume) if resume else None
        if payload is not None:
            self._check_resume_config(payload, resume)
        seed_everything(cfg.train.seed + self.dist.rank)

        charset = Charset.from_dict(payload["charset"]) if payload else None
        self.model: RecognitionModel = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w,
                                                   cfg.data.channels, charset=charset).to(self.device)
        if cfg.train.init_from and payload is None:
            source = resolve_init_source(cfg.train.init_from)
            names = init_with_charset_change(self.model, source, cfg.train.init_prefixes)
            log.info("initialised %d tensors from %s", len(names), source)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._frozen = frozen_parameters(self.model, cfg.train.freeze)
        self.optimizer = build_optimizer(self.model, cfg.train.optimizer, cfg.train.lr_scale)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.scheduler, cfg.train.steps)
        self.scaler = torch.amp.GradScaler(enabled=cfg.train.precision == "fp16")
        self.step = 0
        # Steps the LR schedule spans: train.steps, or fewer when train.max_minutes allows fewer
        # (re-estimated from the measured step rate, see _fit_schedule_to_budget).
        self.schedule_steps = cfg.train.steps
        self.best: dict[str, float] = {}
        self.skipped_steps = 0
        self.elapsed_before = 0.0  # training seconds spent before a resume (train.max_minutes counts them)
        self._t_start = time.perf_counter()
        if payload is not None:
            self._load_state(payload)
        self.net: torch.nn.Module = self.model
        if self.dist.enabled:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.data: RunData | None = None
        self.distiller = (Distiller(cfg.distill, self.model.charset, self.dist.is_main)
                          if cfg.distill.teacher else None)
        # Unweighted distillation losses of the last train_step (empty: off or no target in the batch).
        self.last_distill: dict[str, float] = {}
        # Unweighted geometry loss of the last train_step (None: off, no geometry in the batch, or skipped).
        self.last_geometry_loss: float | None = None

    # -- state --------------------------------------------------------------------------------
    def _check_resume_config(self, payload: dict, path: str | Path) -> None:
        saved = from_dict(payload["config"])
        for section in ("model", "data"):
            if getattr(saved, section) != getattr(self.cfg, section):
                raise ValueError(f"cannot resume from {path}: its '{section}' config differs from this run's. "
                                 "Resume with the saved config (it is in the run folder as config.yaml).")

    def _load_state(self, payload: dict) -> None:
        self.model.load_state_dict(payload["state_dict"])
        ts = payload.get("train_state")
        if ts is None:
            raise ValueError("this checkpoint holds no training state (a 'best' checkpoint?); "
                             "resume from last.pt")
        self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        if ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])
        self.step = int(payload["step"])
        self.best = dict(ts.get("best", {}))
        self.skipped_steps = int(ts.get("skipped_steps", 0))
        self.elapsed_before = float(ts.get("elapsed_s", 0.0))
        self.schedule_steps = int(ts.get("schedule_steps", self.cfg.train.steps))
        if self.schedule_steps != self.cfg.train.steps:
            set_schedule_length(self.scheduler, self.cfg.train.scheduler, self.schedule_steps)
        rng = ts.get("rng", {}).get(str(self.dist.rank)) or ts.get("rng", {}).get("0")
        if rng is not None:
            set_rng_state(rng)

    def _payload_common(self) -> dict[str, Any]:
        return dict(config=self.cfg.to_dict(), charset=self.model.charset.to_dict(),
                    state_dict=self.model.state_dict(), step=self.step,
                    arch=getattr(self.model, "arch", None),
                    rectifier_arch=getattr(self.model, "rectifier_arch", None))

    def save(self, name: str, metrics: dict[str, float], full_state: bool) -> Path | None:
        """Atomically write ``out_dir/name`` (rank 0 only)."""
        if not self.dist.is_main:
            return None
        train_state = None
        if full_state:
            train_state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "rng": {"0": rng_state()},
                "best": self.best,
                "skipped_steps": self.skipped_steps,
                "elapsed_s": self.elapsed_s,
                "schedule_steps": self.schedule_steps,
                "sampler": {"step": self.step},
            }
        return save_checkpoint(self.out_dir / name, metrics={**metrics, **self.corrupt_metrics()},
                               train_state=train_state, **self._payload_common())

    def corrupt_metrics(self) -> dict[str, float]:
        """Corrupt records skipped so far: ``corrupt_skipped`` (total) and ``corrupt_skipped/<source>``."""
        if self.data is None:
            return {}
        counts = self.data.corrupt_counts()
        return {"corrupt_skipped": float(sum(counts.values())),
                **{f"corrupt_skipped/{name}": float(n) for name, n in counts.items()}}

    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds of training so far, across resumes."""
        return self.elapsed_before + time.perf_counter() - self._t_start

    def _fit_schedule_to_budget(self, steps_done: int, seconds: float) -> None:
        """With ``train.max_minutes``, shorten the LR schedule to the steps the remaining budget allows
        at the rate measured in this process (``steps_done`` steps in ``seconds``), so that the one-cycle
        or cosine annealing completes inside the budget instead of being cut at its peak. Rank 0
        decides and broadcasts, so every rank follows the same schedule. Never lengthens past
        ``train.steps``; called at log boundaries."""
        cfg = self.cfg.train
        if cfg.max_minutes <= 0 or steps_done <= 0 or self.step >= self.schedule_steps:
            return
        remaining_s = cfg.max_minutes * 60 - self.elapsed_s
        estimate = self.step + int(0.98 * remaining_s * steps_done / max(seconds, 1e-9))
        total = int(broadcast_object(max(self.step, min(cfg.steps, estimate)), self.dist))
        if total != self.schedule_steps:
            self.schedule_steps = total
            set_schedule_length(self.scheduler, cfg.scheduler, total)

    def _last_step(self) -> int:
        """Where the loop ends: ``train.steps``, or earlier when the schedule was fitted to the budget."""
        return min(self.schedule_steps, self.cfg.train.steps)

    # -- loops ----------------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[Any, ...]]:
        """Training batches: ``(images, labels)``, or ``(images, labels, geometries)`` with geometry."""
        assert self.data is not None
        while True:  # the mixed loader is endless; loop in case a finite loader is plugged in
            yield from self.data.train

    def train_step(self, images: torch.Tensor, labels: list[str],
                   geometries: Sequence[Mapping[str, Any] | None] | None = None,
                   teachers: Sequence[TeacherTarget | None] | None = None) -> float | None:
        """One optimisation step. Returns the loss, or None when it was not finite (step skipped).

        Args:
            images: B×C×H×W batch (normalised to [-1, 1]).
            labels: B normalised labels.
            geometries: B word-geometry records in the model input frame (``None`` for samples without),
                used when ``model.geometry_loss > 0``; the unweighted geometry loss is kept in
                :attr:`last_geometry_loss`.
            teachers: B cached teacher targets (``None`` for samples without), used with ``distill:``;
                the unweighted distillation losses are kept in :attr:`last_distill`.
        """
        cfg = self.cfg.train
        images = images.to(self.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets: dict[str, Any] = {k: v.to(self.device) for k, v in self.model.encode(labels).items()}
        geom = self.model.encode_geometry(geometries) if geometries is not None else None
        if geom is not None:
            targets[GEOMETRY_TARGETS] = {k: v.to(self.device) for k, v in geom.items()}
        self.last_geometry_loss = None
        self.net.train()
        with autocast_context(self.device, cfg.precision):
            out = self.net(images, targets)
            loss = out.loss
            self.last_distill = {}
            if self.distiller is not None and teachers is not None:
                extra, self.last_distill = self.distiller.loss(
                    out.logits, teachers, ctc=isinstance(self.model.codec, CTCCodec),
                    sequence_loss=lambda texts, mask: self._sequence_loss(images, out.logits, texts, mask))
                loss = loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss.detach()):
            self.skipped_steps += 1
            log.warning("non-finite loss at step %d: step skipped (%d so far)", self.step, self.skipped_steps)
            self.scheduler.step()
            return None
        self.scaler.scale(loss).backward()
        for until, params in self._frozen:
            if self.step < until:
                for p in params:  # no gradient: no update and no weight decay (gradients still computed, DDP-safe)
                    p.grad = None
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if out.geometry_loss is not None:
            self.last_geometry_loss = float(out.geometry_loss.detach())
        return float(loss.detach())

    def _sequence_loss(self, images: torch.Tensor, logits: torch.Tensor, texts: list[str],
                       mask: torch.Tensor) -> torch.Tensor:
        """The model's own loss on the teacher's readings of the masked samples: the same logits for a CTC
        decoder, a second (teacher-forced) pass over those images for the others."""
        kept = [t for t, m in zip(texts, mask.tolist(), strict=True) if m]
        enc = {k: v.to(self.device) for k, v in self.model.encode(kept).items()}
        mask = mask.to(logits.device)
        if isinstance(self.model.codec, CTCCodec):
            return self.model.decoder.loss(logits[mask], {k: v for k, v in enc.items()
                                                          if not k.startswith(AUX_CTC_PREFIX)})
        return self.net(images[mask], enc).loss

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Word accuracy / 1-NED / confidence on the validation loader (labels already normalised), plus
        accuracy / 1-NED of every further validation set (``val_<name>_*``)."""
        assert self.data is not None
        if self.data.val is None:
            return {}
        self.model.eval()
        m = self._score(self.data.val, "val", self.cfg.train.val_batches)
        metrics = {"val_accuracy": m.accuracy, "val_ned": m.ned, "val_confidence": m.mean_confidence,
                   "val_count": float(m.count)}
        for name, loader in self.data.extra_val.items():  # e.g. the replay set of a fine-tuning run
            extra = self._score(loader, name)
            metrics.update({f"val_{name}_accuracy": extra.accuracy, f"val_{name}_ned": extra.ned})
        return metrics

    def _score(self, loader: Any, name: str, max_batches: int = 0) -> RecognitionMetrics:
        """Read the batches of ``loader`` (the first ``max_batches``; 0 = all) with the model in eval mode."""
        m = RecognitionMetrics(name)
        for i, (images, labels) in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            images = images.to(self.device)
            if self.cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_context(self.device, self.cfg.train.precision):
                preds = self.model.predict(images)
            m.update([p.text for p in preds], labels, [p.confidence for p in preds])
        return m

    def fit(self) -> dict[str, float]:
        """Train to ``train.steps``; returns the last validation metrics (empty without validation)."""
        cfg = self.cfg.train
        prepare_out_dir_on_main(self.dist, self.out_dir, resume_step=self.step if self.resumed_from else None,
                                overwrite=self.overwrite, resumed_from=self.resumed_from)
        self.data = build_run_data(self.cfg, self.model.charset, self.dist, start_step=self.step,
                                   geometry=self.cfg.model.geometry_loss > 0, distiller=self.distiller)
        if self.distiller is not None:  # the teacher's reading time is part of the run's budget (train.max_minutes)
            self.elapsed_before += self.distiller.stats.get("fill_seconds", 0.0)
        main = self.dist.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.dump(self.out_dir / "config.yaml")
            log.info("train sources: %s; validation samples: %d",
                     ", ".join(f"{n} ({s})" for n, s in zip(self.data.train_names, self.data.train_sizes,
                                                           strict=True)),
                     self.data.val_size)
        logger = RunLogger(self.out_dir, enabled=main, tensorboard=cfg.tensorboard)
        bar = None
        if cfg.progress and main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
        self._t_start = time.perf_counter()
        t_window, n_window, loss_window = time.perf_counter(), 0, []
        geo_window: list[float] = []
        distill_window: list[dict[str, float]] = []
        last_val: dict[str, float] = {}
        stop_reason = "steps"
        batches = self._batches()
        first_step = self.step
        try:
            while self.step < self._last_step():
                batch = next(batches)
                images, labels = batch[0], batch[1]
                geometries = batch[2] if len(batch) > 2 and self.cfg.model.geometry_loss > 0 else None
                loss = self.train_step(images, labels, geometries, batch[3] if len(batch) > 3 else None)
                self.step += 1
                n_window += len(labels) * self.dist.world_size
                if loss is not None:
                    loss_window.append(loss)
                if self.last_geometry_loss is not None:
                    geo_window.append(self.last_geometry_loss)
                if self.last_distill:
                    distill_window.append(self.last_distill)
                if self.step % cfg.log_every == 0 or self.step >= self._last_step():
                    dt = time.perf_counter() - t_window
                    row = {"step": self.step, "loss": float(np.mean(loss_window)) if loss_window else math.nan,
                           "lr": self.scheduler.get_last_lr()[0], "images_per_s": n_window / max(dt, 1e-9),
                           "skipped_steps": self.skipped_steps}
                    if geo_window:
                        row["geometry_loss"] = float(np.mean(geo_window))
                    for key in sorted({k for d in distill_window for k in d}):
                        row[key] = float(np.mean([d[key] for d in distill_window if key in d]))
                    logger.log(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.3f}", ips=f"{row['images_per_s']:.0f}",
                                        acc=f"{last_val.get('val_accuracy', float('nan')):.1f}")
                    t_window, n_window, loss_window, geo_window = time.perf_counter(), 0, [], []
                    distill_window = []
                    self._fit_schedule_to_budget(self.step - first_step, time.perf_counter() - self._t_start)
                    if bar is not None:
                        bar.total = self.schedule_steps
                if bar is not None:
                    bar.update(1)
                out_of_time = cfg.max_minutes > 0 and self.elapsed_s / 60 >= cfg.max_minutes
                if cfg.max_minutes > 0:  # rank 0's clock decides, so that every rank stops at the same step
                    out_of_time = bool(broadcast_object(out_of_time, self.dist))
                if out_of_time:
                    stop_reason = "time"
                elif self.step >= self._last_step() and self.schedule_steps < cfg.steps:
                    stop_reason = "schedule fitted to train.max_minutes"
                do_val = self.step % cfg.val_every == 0 or self.step >= self._last_step() or out_of_time
                stopped = ""
                if do_val:
                    last_val = self._validate_and_save_best(logger)
                    stopped = self._observe_validation(last_val)
                    if stopped:
                        stop_reason = stopped
                if do_val or self.step % cfg.save_every == 0:
                    self.save("last.pt", last_val, full_state=True)
                    barrier(self.dist)
                if out_of_time or stopped:
                    break
        finally:
            if bar is not None:
                bar.close()
            logger.close()
        if main:
            log.info("training stopped at step %d (%s); %d non-finite steps skipped; %s; %s",
                     self.step, stop_reason, self.skipped_steps, self.data.label_filter.report(),
                     self.data.corrupt_report())
            if self.best:
                extra = "".join(f", {k} {v:.1f}" for k, v in self.best.items()
                                if k.startswith("val_") and k.endswith("_accuracy") and k != "val_accuracy")
                print(f"best: step {int(self.best['step'])}, val_accuracy {self.best['val_accuracy']:.1f}{extra} "
                      f"-> {self.out_dir / 'best.pt'}", flush=True)
        shutdown(self.dist)
        return last_val

    def _observe_validation(self, metrics: dict[str, float]) -> str:
        """Call ``on_validation`` (rank 0, when there were metrics); the reason it gave to stop (every rank
        gets rank 0's answer), or ``""`` to go on."""
        reason = ""
        if self.on_validation is not None and self.dist.is_main and metrics:
            try:
                self.on_validation(self.step, dict(metrics))
            except StopTraining as stop:
                reason = f"stopped after validation: {stop}" if str(stop) else "stopped after validation"
        return str(broadcast_object(reason, self.dist)) if self.on_validation is not None else reason

    def _validate_and_save_best(self, logger: RunLogger) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.dist.is_main and self.data is not None and self.data.val is not None:
            metrics = self.validate()
            logger.log({"step": self.step, **metrics})
            key = (metrics["val_accuracy"], metrics["val_ned"])
            if not self.best or key > (self.best["val_accuracy"], self.best["val_ned"]):
                self.best = {**metrics, "step": float(self.step)}
                self.save("best.pt", metrics, full_state=False)
        barrier(self.dist)
        return metrics


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
