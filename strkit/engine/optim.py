"""Optimiser and learning-rate schedule factories, selected by name from ``train.optimizer`` /
``train.scheduler``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from strkit.config import ConfigError, OptimizerConfig, SchedulerConfig
from strkit.registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
SCHEDULES: Registry[Callable[[int], float]] = Registry("lr schedule")


def _groups(params: Sequence[tuple[str, torch.nn.Parameter]], cfg: OptimizerConfig, lr_scale: Mapping[str, float],
            split_decay: bool) -> list[dict]:
    """Parameter groups of the trainable ``params``: with ``split_decay`` no weight decay on biases and
    normalisation weights (1-D tensors); each name matching a ``lr_scale`` prefix (the first that matches)
    gets ``cfg.lr × scale`` (schedules scale every group alike, so the ratio holds throughout)."""
    buckets: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, p in params:
        if not p.requires_grad:
            continue
        scale = next((float(f) for prefix, f in lr_scale.items() if name.startswith(prefix)), 1.0)
        buckets.setdefault((scale, split_decay and p.ndim <= 1), []).append(p)
    groups = []
    for (scale, no_decay), ps in buckets.items():
        group: dict = {"params": ps, "lr": cfg.lr * scale}
        if no_decay:
            group["weight_decay"] = 0.0
        groups.append(group)
    return groups


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


@OPTIMIZERS.register("adadelta")
def _adadelta(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # The four-stage benchmark's default: Adadelta(lr=1, rho=0.95, eps=1e-8).
    return torch.optim.Adadelta(groups, lr=cfg.lr, rho=cfg.rho, eps=cfg.eps)


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0)


#: Optimisers whose biases and normalisation weights get no weight decay (the others have none to split).
_SPLIT_DECAY = frozenset({"adamw", "sgd"})


def parameters_with_prefix(named: Sequence[tuple[str, torch.nn.Parameter]], prefix: str,
                           key: str) -> list[torch.nn.Parameter]:
    """The parameters whose names start with ``prefix`` (a config key ``key`` names it).

    Raises:
        ConfigError: none does (the stage prefixes there are listed).
    """
    params = [p for n, p in named if n.startswith(prefix)]
    if not params:
        stages = sorted({n.split(".")[0] for n, _ in named})
        raise ConfigError(f"{key}: no parameter name starts with '{prefix}'; use a stage prefix such as "
                          f"{', '.join(repr(s + '.') for s in stages)}")
    return params


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig,
                    lr_scale: Mapping[str, float] | None = None) -> torch.optim.Optimizer:
    """Optimiser named ``cfg.name`` over the model's trainable parameters; ``lr_scale`` ({parameter-name
    prefix: factor}, ``train.lr_scale``) gives some parameters a scaled learning rate.

    Raises:
        ConfigError: a prefix names no parameter, or a factor is not a number >= 0.
    """
    return optimizer_for(list(model.named_parameters()), cfg, lr_scale)


def optimizer_for(named: Sequence[tuple[str, torch.nn.Parameter]], cfg: OptimizerConfig,
                  lr_scale: Mapping[str, float] | None = None) -> torch.optim.Optimizer:
    """:func:`build_optimizer` over given ``(name, parameter)`` pairs (e.g. a supernet's weights only)."""
    lr_scale = dict(lr_scale or {})
    named = list(named)
    for prefix, factor in lr_scale.items():
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 0:
            raise ConfigError(f"train.lr_scale.{prefix}: the factor must be a number >= 0, got {factor!r}")
        parameters_with_prefix(named, prefix, "train.lr_scale")
    return OPTIMIZERS.get(cfg.name)(_groups(named, cfg, lr_scale, cfg.name in _SPLIT_DECAY), cfg)


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
