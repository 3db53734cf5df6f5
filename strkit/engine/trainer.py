"""Training: the recogniser's step on the run loop (mixed data, AMP, gradient clipping, validation,
``best.pt``, exact resume).

One :class:`Trainer` runs one config. ``fit()`` (:meth:`strkit.engine.loop.RunLoop.fit`) trains until
``train.steps`` (or ``train.max_minutes``), validating every ``train.val_every`` steps and writing
``last.pt`` (full state, for resume) and ``best.pt`` (best validation accuracy) into ``train.out_dir``
beside ``config.yaml``, ``metrics.csv`` and TensorBoard events. Under ``torchrun`` it trains with
DistributedDataParallel; every rank reads a disjoint shard of each source and rank 0 validates, logs and
saves.

Resume is exact: model, optimiser, scheduler, step, RNG states and the sampler position (the
sampler is a pure function of seed and step) are restored, so a run killed at any moment and resumed
from ``last.pt`` ends with the same weights as an uninterrupted run (with deterministic kernels; each
sample's augmentation is seeded from ``(seed, rank, step, position)``, so loader workers and random
augmentation keep it exact).

Observers: ``Trainer(cfg, on_validation=fn)`` calls ``fn(step, metrics)`` on rank 0 after each validation
(the metrics of :meth:`Trainer.validate`); ``fn`` may raise :class:`~strkit.engine.loop.StopTraining` to end
the run there, like a spent budget (``last.pt`` is written and :meth:`Trainer.fit` returns). Protocol search
uses it to report intermediate accuracies to its pruner (:mod:`strkit.engine.tuning`).

What plugs in: a weight average (``train.ema``, :mod:`strkit.engine.ema`) follows every optimiser step and
is what validation, ``best.pt`` and the snapshots use; distillation (``distill:``) adds its loss term to
:meth:`Trainer.train_step`; fine-tuning
(``train.init_from``, ``train.freeze``) initialises the model and freezes parameters through a hook
(:mod:`strkit.engine.finetune`).

Word geometry: with ``model.geometry_loss > 0`` the training batches carry each sample's word geometry
(``(images, labels, geometries)``, see :mod:`strkit.engine.run_data`); :meth:`Trainer.train_step` turns it
into the ScRN rectifier's targets and the model adds the weighted geometry loss. Its unweighted value
is logged as ``geometry_loss`` (mean over the log window, steps whose batch had geometry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from strkit.charset import Charset
from strkit.codecs import CTCCodec
from strkit.config import Config, ConfigError
from strkit.data.teacher_cache import TeacherTarget
from strkit.engine.metrics import RecognitionMetrics
from strkit.models.recognizer import AUX_CTC_PREFIX, GEOMETRY_TARGETS, RecognitionModel, build_model

from .compilation import maybe_compile
from .distill import Distiller
from .ema import WeightAverage
from .finetune import FreezeParameters, adopt_init_config, init_with_charset_change, resolve_init_source
from .loop import Hook, MeanWindow, ObserveValidation, RunLoop, ValidationObserver
from .optim import build_optimizer, build_scheduler, set_schedule_length
from .run_data import RunData, build_run_data
from .runtime import autocast_context, keep_stages_in_fp32

log = logging.getLogger("strkit")


class _FitScheduleToBudget(Hook):
    """At each log step, fit the LR schedule to what ``train.max_minutes`` allows."""

    def after_log(self, loop: RunLoop, row: dict[str, float]) -> None:
        assert isinstance(loop, Trainer)
        loop._fit_schedule_to_budget(loop.step - loop.first_step, loop.budget.session_s)


class _KeepBest(Hook):
    """Write ``best.pt`` when a validation beats the best so far (rank 0)."""

    def after_validation(self, loop: RunLoop, metrics: dict[str, float]) -> None:
        assert isinstance(loop, Trainer)
        loop._keep_best(metrics)


class _KeepSnapshots(Hook):
    """Every ``train.snapshot_every`` steps, an inference-only copy of the weights in
    ``out_dir/snapshots/step_NNNNNNN.pt`` (a long run's learning curve can be evaluated from them later)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, loop: RunLoop) -> None:
        if loop.step % self.every == 0:
            loop.save(f"snapshots/step_{loop.step:07d}.pt", {}, full_state=False)


class Trainer(RunLoop):
    """Trains one model from a resolved :class:`Config` (a :class:`~strkit.engine.loop.RunLoop`).

    Args:
        cfg: the run's config.
        resume: path of a ``last.pt`` to resume from (its config's model/data sections must match).
        overwrite: replace the outputs of an earlier run in ``train.out_dir``; without it (or
            ``resume``) :meth:`fit` refuses a folder that holds one (see :mod:`strkit.engine.run_dir`).
        on_validation: an observer of each validation (see the module docstring), or None.
    """

    progress_desc = "train"

    def __init__(self, cfg: Config, resume: str | Path | None = None, overwrite: bool = False,
                 on_validation: ValidationObserver | None = None) -> None:
        cfg = adopt_init_config(cfg)
        if not cfg.model.charset:
            raise ConfigError("model.charset is empty; an empty charset means 'the init checkpoint's' and needs "
                              "train.init_from with train.init_config=true")
        super().__init__(cfg, resume, overwrite)
        self.on_validation = on_validation
        payload = self.resume_payload
        charset = Charset.from_dict(payload["charset"]) if payload else None
        self.model: RecognitionModel = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w,
                                                   cfg.data.channels, charset=charset).to(self.device)
        if cfg.train.init_from and payload is None:
            source = resolve_init_source(cfg.train.init_from)
            names = init_with_charset_change(self.model, source, cfg.train.init_prefixes)
            log.info("initialised %d tensors from %s", len(names), source)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        keep_stages_in_fp32(self.model, cfg.train.fp32_stages)  # a no-op outside autocast
        if not 0.0 <= cfg.train.ema < 1.0:
            raise ConfigError(f"train.ema must lie in [0, 1) (the decay of the weight average, e.g. 0.999; "
                              f"0 = off), got {cfg.train.ema!r}")
        # The weight average (train.ema): from the initial (or init_from) weights; a resume restores it.
        self.ema = WeightAverage(self.model, cfg.train.ema) if cfg.train.ema > 0 else None
        self.hooks = [FreezeParameters(self.model, cfg.train.freeze), _FitScheduleToBudget(), _KeepBest()]
        if cfg.train.snapshot_every > 0:
            self.hooks.append(_KeepSnapshots(cfg.train.snapshot_every))
        if on_validation is not None:
            self.hooks.append(ObserveValidation(on_validation))
        self.optimizer = build_optimizer(self.model, cfg.train.optimizer, cfg.train.lr_scale)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.scheduler, cfg.train.steps)
        self.scaler = torch.amp.GradScaler(enabled=cfg.train.precision == "fp16")
        # Steps the LR schedule spans: train.steps, or fewer when train.max_minutes allows fewer
        # (re-estimated from the measured step rate, see _fit_schedule_to_budget).
        self.schedule_steps = cfg.train.steps
        self.best: dict[str, float] = {}
        self.resume_state()
        self.net: torch.nn.Module = self.model
        if self.dist.enabled:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = maybe_compile(self.net, cfg.train.compile)
        self.data: RunData | None = None
        self.distiller = (Distiller(cfg.distill, self.model.charset, self.dist.is_main)
                          if cfg.distill.teacher else None)
        # Unweighted distillation losses of the last train_step (empty: off or no target in the batch).
        self.last_distill: dict[str, float] = {}
        # Unweighted geometry loss of the last train_step (None: off, no geometry in the batch, or skipped).
        self.last_geometry_loss: float | None = None
        self.window = MeanWindow()
        self._window_images = 0
        self._window_start = time.perf_counter()

    # -- state --------------------------------------------------------------------------------
    def state_extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {"best": self.best, "schedule_steps": self.schedule_steps}
        if self.ema is not None:
            extras["ema"] = self.ema.state_dict()
        return extras

    def load_extras(self, payload: dict[str, Any]) -> None:
        ts = payload["train_state"]
        self.best = dict(ts.get("best", {}))
        if self.ema is not None:
            if ts.get("ema") is not None:
                self.ema.load_state_dict(ts["ema"])
            else:  # train.ema turned on for a run that had none: average from the resumed weights on
                self.ema = WeightAverage(self.model, self.cfg.train.ema)
                log.info("train.ema: the run had no weight average; it starts from the weights of step %d",
                         int(payload["step"]))
        self.schedule_steps = int(ts.get("schedule_steps", self.cfg.train.steps))
        if self.schedule_steps != self.cfg.train.steps:
            set_schedule_length(self.scheduler, self.cfg.train.scheduler, self.schedule_steps)

    def checkpoint_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return {**metrics, **self.corrupt_metrics()}

    def inference_state(self) -> dict[str, Any]:
        return self.ema.averaged_state(self.model) if self.ema is not None else self.model.state_dict()

    def corrupt_metrics(self) -> dict[str, float]:
        """Corrupt records skipped so far: ``corrupt_skipped`` (total) and ``corrupt_skipped/<source>``."""
        if self.data is None:
            return {}
        counts = self.data.corrupt_counts()
        return {"corrupt_skipped": float(sum(counts.values())),
                **{f"corrupt_skipped/{name}": float(n) for name, n in counts.items()}}

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
        total = int(self.ranks.broadcast(max(self.step, min(cfg.steps, estimate))))
        if total != self.schedule_steps:
            self.schedule_steps = total
            set_schedule_length(self.scheduler, cfg.scheduler, total)

    def last_step(self) -> int:
        """Where the loop ends: ``train.steps``, or earlier when the schedule was fitted to the budget."""
        return min(self.schedule_steps, self.cfg.train.steps)

    # -- steps ----------------------------------------------------------------------------------
    def batches(self) -> Iterator[tuple[Any, ...]]:
        """Training batches: ``(images, labels)``, or ``(images, labels, geometries)`` with geometry."""
        assert self.data is not None
        return super().batches()

    def run_step(self, batch: Sequence[Any]) -> None:
        images, labels = batch[0], batch[1]
        geometries = batch[2] if len(batch) > 2 and self.cfg.model.geometry_loss > 0 else None
        loss = self.train_step(images, labels, geometries, batch[3] if len(batch) > 3 else None)
        self._window_images += len(labels) * self.dist.world_size
        self.window.add("loss", loss)
        self.window.add("geometry_loss", self.last_geometry_loss)
        for key, value in self.last_distill.items():
            self.window.add(key, value)

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
        images = self.images_to_device(images)
        targets: dict[str, Any] = {k: v.to(self.device) for k, v in self.model.encode(labels).items()}
        geom = self.model.encode_geometry(geometries) if geometries is not None else None
        if geom is not None:
            targets[GEOMETRY_TARGETS] = {k: v.to(self.device) for k, v in geom.items()}
        self.last_geometry_loss = None
        self.net.train()
        with autocast_context(self.device, self.cfg.train.precision):
            out = self.forward_loss(images, targets)
            loss = out.loss
            self.last_distill = {}
            if self.distiller is not None and teachers is not None:
                extra, self.last_distill = self.distiller.loss(
                    out.logits, teachers, ctc=isinstance(self.model.codec, CTCCodec),
                    sequence_loss=lambda texts, mask: self._sequence_loss(images, out.logits, texts, mask))
                loss = loss + extra
        if not self.optimise(loss):
            return None
        if self.ema is not None:
            self.ema.update(self.model)
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
        return self.forward_loss(images[mask], enc).loss

    def log_row(self) -> dict[str, float]:
        dt = time.perf_counter() - self._window_start
        row = {"loss": self.window.mean("loss"), "lr": self.scheduler.get_last_lr()[0],
               "images_per_s": self._window_images / max(dt, 1e-9), "skipped_steps": self.skipped_steps,
               "elapsed_s": self.budget.elapsed_s}
        row.update(self.window.means(["geometry_loss"]))
        row.update(self.window.means([k for k in sorted(self.window.values) if k not in ("loss", "geometry_loss")]))
        self.window.clear()
        self._window_images, self._window_start = 0, time.perf_counter()
        return row

    def progress_postfix(self, row: dict[str, float], last_val: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{row['loss']:.3f}", "ips": f"{row['images_per_s']:.0f}",
                "acc": f"{last_val.get('val_accuracy', float('nan')):.1f}"}

    # -- validation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Word accuracy / 1-NED / confidence on the validation loader (labels already normalised), plus
        accuracy / 1-NED of every further validation set (``val_<name>_*``). With a weight average
        (``train.ema``) these are the average's, and ``val_raw_accuracy`` / ``val_raw_ned`` the raw weights'."""
        assert self.data is not None
        if self.data.val is None:
            return {}
        self.model.eval()
        if self.ema is None:
            return self._validate_weights()
        raw = self._score(self.data.val, "val", self.cfg.train.val_batches)
        with self.ema.applied(self.model):
            metrics = self._validate_weights()
        return {**metrics, "val_raw_accuracy": raw.accuracy, "val_raw_ned": raw.ned}

    def _validate_weights(self) -> dict[str, float]:
        """The metrics of :meth:`validate` for the weights the model holds now."""
        assert self.data is not None and self.data.val is not None
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
            with autocast_context(self.device, self.cfg.train.precision):
                preds = self.model.predict(self.images_to_device(images))
            m.update([p.text for p in preds], labels, [p.confidence for p in preds])
        return m

    def _keep_best(self, metrics: dict[str, float]) -> None:
        """Write ``best.pt`` (rank 0) when ``metrics`` beat the best so far: higher accuracy, then higher
        1-NED; an exact tie keeps the earlier one."""
        if not self.ranks.is_main or not metrics or self.data is None or self.data.val is None:
            return
        key = (metrics["val_accuracy"], metrics["val_ned"])
        if not self.best or key > (self.best["val_accuracy"], self.best["val_ned"]):
            self.best = {**metrics, "step": float(self.step)}
            self.save("best.pt", metrics, full_state=False)

    # -- the run --------------------------------------------------------------------------------
    def setup(self) -> None:
        self.data = build_run_data(self.cfg, self.model.charset, self.dist, start_step=self.step,
                                   geometry=self.cfg.model.geometry_loss > 0, distiller=self.distiller)
        if self.distiller is not None:  # the teacher's reading time is part of the run's budget (train.max_minutes)
            self.budget.add(self.distiller.stats.get("fill_seconds", 0.0))
        if self.ranks.is_main:
            log.info("train sources: %s; validation samples: %d",
                     ", ".join(f"{n} ({s})" for n, s in zip(self.data.train_names, self.data.train_sizes,
                                                           strict=True)),
                     self.data.val_size)
        self.window.clear()
        self._window_images, self._window_start = 0, time.perf_counter()

    def finish(self, reason: str) -> dict[str, float]:
        """Log why training stopped and the best validation; returns the last validation metrics (empty
        without validation)."""
        if reason == "steps" and self.schedule_steps < self.cfg.train.steps:
            reason = "schedule fitted to train.max_minutes"
        if self.ranks.is_main and self.data is not None:
            log.info("training stopped at step %d (%s); %d non-finite steps skipped; %s; %s",
                     self.step, reason, self.skipped_steps, self.data.label_filter.report(),
                     self.data.corrupt_report())
            if self.best:
                extra = "".join(f", {k} {v:.1f}" for k, v in self.best.items()
                                if k.startswith("val_") and k.endswith("_accuracy") and k != "val_accuracy")
                print(f"best: step {int(self.best['step'])}, val_accuracy {self.best['val_accuracy']:.1f}{extra} "
                      f"-> {self.out_dir / 'best.pt'}", flush=True)
        return self.last_val
