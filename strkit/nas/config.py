"""The ``search`` config section, validated like the rest of the config (unknown keys are named).

The search space itself is the ``supernet`` backbone's config (``model.backbone``); this section holds
how it is searched::

    search:
      method: proxyless        # proxyless (binary gates) | full (DARTS-style weighted sum)
      paths: 1                 # binary-gate paths per architecture step: 1 | 2
      warmup_steps: 200        # weight steps on uniformly sampled paths before α starts to move
      arch_every: 1            # one α step (held-out split) after every N weight steps
      arch_lr: 0.006           # Adam for α (ProxylessNAS: 6e-3, betas (0, 0.999))
      constraint: latency      # latency | params | flops | none
      target_ms: 6.0           # the latency target (target_mparams / target_mflops for the others)
      loss: linear             # linear | hinge | mul_log
      reg_lambda: 0.1          # λ of linear / hinge
      reg_beta: 0.6            # β of mul_log
      lut: ""                  # latency table JSON; "" = measure one into train.out_dir/lut.json
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from strkit.schema import ConfigError, build_dataclass

METHODS = ("proxyless", "full")
CONSTRAINTS = ("latency", "params", "flops", "none")
LOSSES = ("linear", "hinge", "mul_log")


@dataclass
class SearchConfig:
    """How the supernet is searched (see the module docstring for every key)."""

    method: str = "proxyless"
    paths: int = 1
    warmup_steps: int = 0
    arch_every: int = 1
    arch_lr: float = 6e-3
    arch_betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    arch_eps: float = 1e-8
    arch_weight_decay: float = 0.0
    constraint: str = "latency"
    target_ms: float = 0.0
    target_mparams: float = 0.0
    target_mflops: float = 0.0
    loss: str = "linear"
    reg_lambda: float = 0.1
    reg_beta: float = 0.6
    lut: str = ""
    lut_device: str = "cpu"
    lut_threads: int = 0  # 0 = train.threads, else torch's default
    lut_repeats: int = 30
    lut_warmup: int = 5
    lut_batch: int = 1
    lut_rest: bool = True  # time rectifier and sequence + decoder once, as a fixed part
    lut_calibrate: int = 5  # random sub-networks timed whole to fit the table's scale factor (0 = none)
    validate_samples: int = 20  # random sub-networks timed end to end in the report (0 = skip)
    measure_repeats: int = 50  # timed runs of the derived network in the report
    history_every: int = 10  # record p every N steps (heat-map)
    cost_train_steps: int = 10  # timed training steps of the derived network for the search-cost ratio (0 = skip)

    @property
    def target(self) -> float:
        """The target of the chosen constraint (0 = none)."""
        return {"latency": self.target_ms, "params": self.target_mparams,
                "flops": self.target_mflops}.get(self.constraint, 0.0)


def _choice(value: str, options: tuple[str, ...], key: str) -> None:
    if value not in options:
        raise ConfigError(f"'{key}' is {value!r}; use one of: {', '.join(options)}")


def search_config(data: Mapping[str, Any] | SearchConfig | None) -> SearchConfig:
    """Validate the ``search`` section (a mapping, e.g. ``cfg.search``) into a :class:`SearchConfig`.

    Raises:
        ConfigError: an unknown key (``search.<key>``) or a bad value, named.
    """
    if isinstance(data, SearchConfig):
        cfg = data
    else:
        cfg = build_dataclass(SearchConfig, dict(data or {}), "search", {})
    _choice(cfg.method, METHODS, "search.method")
    _choice(cfg.constraint, CONSTRAINTS, "search.constraint")
    _choice(cfg.loss, LOSSES, "search.loss")
    if cfg.paths not in (1, 2):
        raise ConfigError(f"'search.paths' must be 1 or 2, got {cfg.paths}")
    if cfg.arch_every < 1:
        raise ConfigError(f"'search.arch_every' must be >= 1, got {cfg.arch_every}")
    if cfg.lut_calibrate < 0:
        raise ConfigError(f"'search.lut_calibrate' must be >= 0 (0 = no calibration), got {cfg.lut_calibrate}")
    if cfg.warmup_steps < 0 or cfg.history_every < 1 or cfg.lut_repeats < 1 or cfg.lut_batch < 1:
        raise ConfigError("'search.warmup_steps' must be >= 0 and 'search.history_every', "
                          "'search.lut_repeats', 'search.lut_batch' >= 1")
    if len(cfg.arch_betas) != 2:
        raise ConfigError(f"'search.arch_betas' must be [beta1, beta2], got {cfg.arch_betas}")
    if cfg.constraint != "none" and cfg.target <= 0:
        key = {"latency": "target_ms", "params": "target_mparams", "flops": "target_mflops"}[cfg.constraint]
        raise ConfigError(f"'search.constraint' is {cfg.constraint!r} but 'search.{key}' is not set (> 0); "
                          "set it, or search.constraint=none")
    if cfg.loss == "mul_log" and cfg.constraint != "none" and cfg.target <= 1.0:
        raise ConfigError(f"'search.loss' mul_log needs a target > 1 (log T > 0), got {cfg.target}; "
                          "use search.loss=linear")
    return cfg
