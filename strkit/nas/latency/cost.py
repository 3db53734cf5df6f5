"""The expected cost of a supernet and the cost losses.

The expected latency of the searched parts is differentiable in α::

    E[lat] = fixed + Σ_parts (stem + head + Σ_cells Σ_ops softmax(α_cell)_op · LUT(op at the cell's shape))

and the same sum with per-op parameter counts or FLOPs (2 per multiply-add) gives the ``params`` / ``flops``
constraints (searched parts only: backbone, and the rectifier's localisation body when searched).
:func:`cost_loss` combines it with the task loss (``linear``, ``hinge`` or ProxylessNAS' multiplicative
``mul_log`` form).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from strkit.nas.arch import find_supernet, searched_edges, searched_parts
from strkit.nas.latency.table import LatencyTable, LatencyTableError, head_info, stem_info
from strkit.nas.search_space import SuperNet, standalone_op
from strkit.registry import Registry


def _count_flops(module: nn.Module, example: Tensor) -> float:
    """FLOPs of one forward pass of ``module`` per image: convolutions and linear layers, a multiply-add
    counted as 2 FLOPs (the convention of ``torch.utils.flop_counter`` and ``tools/eval.py``)."""
    total = [0.0]

    def conv_hook(m: nn.Conv2d, _inp: Any, out: Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += 2 * out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: Any, out: Tensor) -> None:
        total[0] += 2 * out[0].numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was = module.training
    try:
        module.eval()
        with torch.inference_mode():
            module(example)
    finally:
        module.train(was)
        for h in handles:
            h.remove()
    return total[0]


def _param_count(module: nn.Module) -> float:
    return float(sum(p.numel() for p in module.parameters()))


COST_KINDS: Registry[Callable[..., tuple[list[Tensor], float]]] = Registry("search constraint")


def _as_nets(nets: SuperNet | Sequence[SuperNet]) -> list[SuperNet]:
    return [nets] if isinstance(nets, SuperNet) else list(nets)


# Each entry: (a supernet, or the searched supernets in searched_edges order; the table) -> (per-cell
# candidate costs, the cells of every net in order; fixed cost).
@COST_KINDS.register("latency")
def _latency_costs(nets: SuperNet | Sequence[SuperNet], lut: LatencyTable | None = None) -> tuple[list[Tensor], float]:
    nets = _as_nets(nets)
    if lut is None:
        raise LatencyTableError("the latency constraint needs a latency table (search.lut, or measure "
                                "one with 'tools/search.py lut CONFIG')")
    fixed = lut.fixed_ms + sum(lut.lookup(stem_info(n)) + lut.lookup(head_info(n)) for n in nets)
    return [lut.edge_costs(e) for n in nets for e in n.edges()], fixed


@COST_KINDS.register("params")
def _params_costs(nets: SuperNet | Sequence[SuperNet], lut: LatencyTable | None = None) -> tuple[list[Tensor], float]:
    nets = _as_nets(nets)
    costs = [torch.tensor([_param_count(standalone_op(i)) / 1e6 for i in e.infos], dtype=torch.float64)
             for n in nets for e in n.edges()]
    return costs, sum(_param_count(n.stem) + _param_count(n.head) for n in nets) / 1e6


@COST_KINDS.register("flops")
def _flops_costs(nets: SuperNet | Sequence[SuperNet], lut: LatencyTable | None = None) -> tuple[list[Tensor], float]:
    nets = _as_nets(nets)
    costs = []
    fixed = 0.0
    for net in nets:
        for e in net.edges():
            x = torch.zeros(1, *e.in_shape)
            costs.append(torch.tensor([_count_flops(standalone_op(i), x) / 1e6 for i in e.infos],
                                      dtype=torch.float64))
        c, h, w = net.input["channels"], net.input["img_h"], net.input["img_w"]
        fixed += _count_flops(net.stem, torch.zeros(1, c, h, w)) + _count_flops(net.head, torch.zeros(1, *net.head_in))
    return costs, fixed / 1e6


COST_UNITS = {"latency": "ms", "params": "M params", "flops": "MFLOPs"}


class CostModel:
    """Per-cell candidate costs of the searched parts for one constraint, and their expectation under p.

    Args:
        model: a supernet or a recogniser holding one (the backbone) or two (with the rectifier's
            localisation body).
        kind: ``latency`` (needs ``lut``; includes the LUT's fixed parts), ``params`` (millions,
            searched parts) or ``flops`` (MFLOPs per image, searched parts; a multiply-add is 2 FLOPs).
        lut: the latency table.

    Attributes:
        edges, costs: the cells of every searched part in :func:`~strkit.nas.arch.searched_edges` order
            (backbone, then rectifier) and their candidate costs (one (N,) float64 tensor each).
    """

    def __init__(self, model: nn.Module, kind: str = "latency", lut: LatencyTable | None = None) -> None:
        self.kind = kind
        self.net = find_supernet(model)
        self.parts = searched_parts(model)
        self.edges = searched_edges(model)
        self.costs, self.fixed = COST_KINDS.get(kind)(list(self.parts.values()), lut)
        self.unit = COST_UNITS.get(kind, "")

    def expected(self) -> Tensor:
        """fixed + Σ_cells Σ_ops softmax(α)_op · cost_op over every searched cell: a differentiable scalar
        (float64)."""
        total: Tensor | None = None
        for e, c in zip(self.edges, self.costs, strict=True):
            term = (e.probs().double() * c.to(e.alpha.device)).sum()
            total = term if total is None else total + term
        assert total is not None
        return total + self.fixed

    def of_choices(self, choices: Sequence[int]) -> float:
        """The cost of one sub-network (candidate index per cell, in :attr:`edges` order)."""
        return float(self.fixed + sum(float(c[j]) for c, j in zip(self.costs, choices, strict=True)))

    def bounds(self) -> tuple[float, float]:
        """(cheapest, most expensive) sub-network cost."""
        return (float(self.fixed + sum(float(c.min()) for c in self.costs)),
                float(self.fixed + sum(float(c.max()) for c in self.costs)))


def expected_latency(model: nn.Module, lut: LatencyTable) -> Tensor:
    """E[lat] in ms (see the module docstring), differentiable in every α. Equals the LUT sum of the
    chosen ops when every α is one-hot (in the limit)."""
    return CostModel(model, "latency", lut).expected()


COST_LOSSES: Registry[Callable[..., Tensor]] = Registry("cost loss")


@COST_LOSSES.register("linear")
def _linear(task: Tensor, cost: Tensor, target: float, lam: float, beta: float) -> Tensor:
    """ProxylessNAS ``add#linear``: L = L_task + λ·(E − T)/T."""
    return task + lam * (cost - target) / target


@COST_LOSSES.register("hinge")
def _hinge(task: Tensor, cost: Tensor, target: float, lam: float, beta: float) -> Tensor:
    """L = L_task + λ·max(0, E − T)/T (no reward for going below the target)."""
    return task + lam * torch.relu(cost - target) / target


@COST_LOSSES.register("mul_log")
def _mul_log(task: Tensor, cost: Tensor, target: float, lam: float, beta: float) -> Tensor:
    """ProxylessNAS ``mul#log``: L = L_task · (log E / log T)^β (E clamped to > 1)."""
    if target <= 1.0:
        raise ValueError(f"the mul_log cost loss needs a target > 1 (log T > 0), got {target}; "
                         "use search.loss=linear for targets below 1")
    ratio = torch.log(cost.clamp_min(1.0 + 1e-6)) / math.log(target)
    return task * ratio.pow(beta)


def cost_loss(task_loss: Tensor, cost: Tensor, target: float, form: str = "linear", lam: float = 0.1,
              beta: float = 0.6) -> Tensor:
    """Total architecture loss from the task loss and the expected cost E (scalar tensors).

    Forms: ``linear`` L + λ(E−T)/T, ``hinge`` L + λ·max(0, E−T)/T, ``mul_log`` L·(log E/log T)^β.
    """
    if target <= 0:
        raise ValueError(f"the cost target must be > 0, got {target}")
    return COST_LOSSES.get(form)(task_loss, cost.to(task_loss.dtype), float(target), float(lam), float(beta))
