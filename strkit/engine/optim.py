"""Optimiser and learning-rate schedule factories, selected by name from ``train.optimizer`` /
``train.scheduler``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from strkit.config import OptimizerConfig, SchedulerConfig
from strkit.registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
SCHEDULES: Registry[Callable[[int], float]] = Registry("lr schedule")


def _split_decay(params: Iterable[tuple[str, torch.nn.Parameter]]) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@OPTIMIZERS.register("adamw")
def _adamw(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_split_decay(params), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for _, p in params if p.requires_grad], lr=cfg.lr, betas=tuple(cfg.betas),
                            eps=cfg.eps)


@OPTIMIZERS.register("adadelta")
def _adadelta(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # The four-stage benchmark's default: Adadelta(lr=1, rho=0.95, eps=1e-8).
    return torch.optim.Adadelta([p for _, p in params if p.requires_grad], lr=cfg.lr, rho=cfg.rho,
                                eps=cfg.eps)


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(_split_decay(params), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Optimiser named ``cfg.name`` over the model's trainable parameters."""
    return OPTIMIZERS.get(cfg.name)(list(model.named_parameters()), cfg)


@SCHEDULES.register("constant")
def _constant(total: int, cfg: SchedulerConfig) -> Callable[[int], float]:
    warm = max(1, int(total * cfg.warmup_fraction)) if cfg.warmup_fraction > 0 else 0
    return lambda step: min(1.0, (step + 1) / warm) if warm else 1.0


@SCHEDULES.register("cosine")
def _cosine(total: int, cfg: SchedulerConfig) -> Callable[[int], float]:
    warm = int(total * cfg.warmup_fraction)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@SCHEDULES.register("onecycle")
def _onecycle(total: int, cfg: SchedulerConfig) -> Callable[[int], float]:
    """Cosine warm-up from ``lr/25`` to ``lr`` over ``warmup_fraction``, then cosine annealing to
    ``lr * min_lr_ratio`` (the shape of ``torch.optim.lr_scheduler.OneCycleLR``)."""
    warm = max(1, int(total * cfg.warmup_fraction))
    start = 1.0 / 25.0

    def f(step: int) -> float:
        if step < warm:
            t = step / warm
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t))
        t = min(1.0, (step - warm) / max(1, total - warm))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following the schedule named ``cfg.name`` over ``total_steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES.get(cfg.name)(total_steps, cfg))


def set_schedule_length(scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: SchedulerConfig,
                        total_steps: int) -> None:
    """Re-target ``scheduler`` to end after ``total_steps`` steps (its step counter is kept), and set
    the learning rates for the current step. Used to fit a schedule to a wall-clock budget."""
    fn = SCHEDULES.get(cfg.name)(total_steps, cfg)
    scheduler.lr_lambdas = [fn for _ in scheduler.optimizer.param_groups]
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
