"""ProxylessNAS mechanics: mixed edges, binary gates, α gradients, path sampling.

A :class:`MixedEdge` holds N candidate ops and their architecture logits α (``edge.alpha``, shape N);
p = softmax(α). What its forward computes is set per step by a :class:`GateController`:

- ``full`` (DARTS-style): ``Σ_i p_i · op_i(x)``; α gets its gradient from autograd. Memory of all
  paths: for small spaces and tests.
- ``path``: ``op_j(x)`` for one sampled ``j`` (weight steps, evaluation of a sub-network); α unused.
- ``binary``: binary gates g (one-hot at the sampled path ``j``): ``Σ_{i∈S} g_i · op_i(x)``. The
  gate gradients ∂L/∂g_i = ⟨∂L/∂out, op_i(x)⟩ become α gradients by

      ∂L/∂α_i = Σ_j ∂L/∂g_j · p_j (δ_ij − p_i)          (:func:`alpha_grad_from_gate_grad`)

  With one path (``paths=1``) S is every candidate, but only ``op_j`` runs in the forward pass; the
  other ⟨∂L/∂out, op_i(x)⟩ are computed in the backward pass, one op at a time without keeping a
  graph (:class:`_LazyGateGrads`), so memory stays that of one sub-network. With two paths
  (``paths=2``) S is two candidates drawn from p without replacement, both run, the gate is sampled
  between them with p renormalised over S, and only their α move (then :meth:`GateController.
  rescale_two_path` keeps the probability mass of S as it was, as in ProxylessNAS).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from strkit.models.backbones.searched import ARCH_PARTS

MODES = ("full", "path", "binary")


# ----------------------------------------------------------------------------------------------
# The gradient formula
# ----------------------------------------------------------------------------------------------
def alpha_grad_from_gate_grad(gate_grad: Tensor, probs: Tensor) -> Tensor:
    """∂L/∂α_i = Σ_j ∂L/∂g_j · p_j (δ_ij − p_i).

    Args:
        gate_grad: ∂L/∂g, shape (N,).
        probs: p = softmax(α) over the same N paths, shape (N,).

    Returns:
        ∂L/∂α, shape (N,). Equals the gradient of ``Σ_j c_j softmax(α)_j`` with c = ``gate_grad``.
    """
    jac = torch.diag(probs) - torch.outer(probs, probs)  # J[i, j] = p_j (δ_ij − p_i), symmetric
    return jac @ gate_grad


class _BinaryGates(torch.autograd.Function):
    """α (N,) -> one-hot gates g (N,) at ``active``; backward maps ∂L/∂g to ∂L/∂α over ``involved``."""

    @staticmethod
    def forward(ctx: Any, alpha: Tensor, active: int, involved: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(alpha, involved)
        gates = torch.zeros_like(alpha)
        gates[active] = 1.0
        return gates

    @staticmethod
    def backward(ctx: Any, grad_gates: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        alpha, involved = ctx.saved_tensors
        dtype = torch.promote_types(alpha.dtype, torch.float32)  # fp32 at least, fp64 kept
        probs = torch.softmax(alpha.detach().to(dtype)[involved], dim=0)
        grad = torch.zeros_like(alpha, dtype=dtype)
        grad[involved] = alpha_grad_from_gate_grad(grad_gates.to(dtype)[involved], probs)
        return grad.to(alpha.dtype), None, None


class _LazyGateGrads(torch.autograd.Function):
    """Adds nothing to the output (returns zeros of its shape) but, in backward, gives every
    inactive involved gate its gradient ⟨∂L/∂out, op_i(x)⟩, recomputing ``op_i(x)`` without a graph."""

    @staticmethod
    def forward(ctx: Any, gates: Tensor, x: Tensor, edge: MixedEdge, active: int,
                like: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.edge, ctx.active, ctx.gate_dtype = edge, active, gates.dtype
        ctx.involved = tuple(edge.involved)
        kind = x.device.type
        # the recomputation in backward runs under the forward's autocast state
        ctx.autocast = (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        return like.new_zeros(()).expand_as(like)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None, None]:  # noqa: D102
        (x,) = ctx.saved_tensors
        edge: MixedEdge = ctx.edge
        dtype = torch.promote_types(ctx.gate_dtype, torch.float32)
        grad = torch.zeros(len(edge.ops), dtype=dtype, device=grad_out.device)
        kind, enabled, amp_dtype = ctx.autocast
        with torch.no_grad(), torch.autocast(device_type=kind, dtype=amp_dtype, enabled=enabled):
            for i in ctx.involved:  # the other gates' gradients are not used (see _BinaryGates)
                if i != ctx.active:
                    grad[i] = (grad_out.to(dtype) * edge.ops[i](x).to(dtype)).sum()
        return grad.to(ctx.gate_dtype), None, None, None, None


# ----------------------------------------------------------------------------------------------
# The mixed edge
# ----------------------------------------------------------------------------------------------
class MixedEdge(nn.Module):
    """One searchable position: N candidate ops sharing an input and an output shape.

    Args:
        ops: candidate name -> module, in order (``{"skip": ..., "k3_e3": ...}``).
        infos: one mapping per candidate describing it for the latency table (op name, input
            shape, widths, stride, kernel, expansion...). Must hold ``c_in``, ``h``, ``w``.
        meta: what the architecture file records about the position (kind, stage, widths, stride).
        shared: weights the candidates share (a :class:`~strkit.nas.shared.SharedInvertedResidual`
            that the candidates slice), registered here once; None when each candidate has its own.

    Attributes:
        alpha: architecture logits, shape (N,), initialised to 0 (uniform p).
        mode, active, involved, lazy: the forward behaviour, set by :class:`GateController`.

    Shapes: ``forward(x: B×c_in×H×W) -> B×c_out×H'×W'`` (the same for every candidate).
    """

    def __init__(self, ops: Mapping[str, nn.Module], infos: Sequence[Mapping[str, Any]],
                 meta: Mapping[str, Any] | None = None, shared: nn.Module | None = None) -> None:
        super().__init__()
        if not ops:
            raise ValueError("a mixed edge needs at least one candidate op")
        if len(infos) != len(ops):
            raise ValueError(f"mixed edge: {len(ops)} ops but {len(infos)} infos")
        self.candidates: tuple[str, ...] = tuple(ops)
        self.ops = nn.ModuleList(ops.values())
        self.shared = shared
        self.infos: tuple[dict[str, Any], ...] = tuple(dict(i) for i in infos)
        self.meta: dict[str, Any] = dict(meta or {})
        self.alpha = nn.Parameter(torch.zeros(len(self.ops)))
        self.mode = "full"
        self.active = 0
        self.involved: tuple[int, ...] = tuple(range(len(self.ops)))
        self.lazy = False

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """(C_in, H, W) of the edge's input at the configured image size."""
        info = self.infos[0]
        return int(info["c_in"]), int(info["h"]), int(info["w"])

    def probs(self) -> Tensor:
        """p = softmax(α), shape (N,), differentiable."""
        return torch.softmax(self.alpha, dim=0)

    def chosen(self) -> int:
        """Index of the most probable candidate (first on ties)."""
        return int(torch.argmax(self.alpha.detach()).item())

    def set_path(self, index: int) -> None:
        """Run only candidate ``index`` (no α involvement)."""
        self.mode, self.active = "path", int(index)

    def set_full(self) -> None:
        """Softmax-weighted sum of every candidate."""
        self.mode = "full"

    def set_binary(self, active: int, involved: Sequence[int], lazy: bool) -> None:
        """Binary gates: one-hot at ``active``, α gradients over ``involved``; ``lazy`` computes the
        inactive gate gradients in backward (one-path memory) instead of running every path."""
        if active not in involved:
            raise ValueError(f"active path {active} is not among the involved paths {tuple(involved)}")
        self.mode, self.active, self.involved, self.lazy = "binary", int(active), tuple(involved), lazy

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "path":
            return self.ops[self.active](x)
        if self.mode == "full":
            p = self.probs().to(x.dtype)
            out = p[0] * self.ops[0](x)
            for i in range(1, len(self.ops)):
                out = out + p[i] * self.ops[i](x)
            return out
        if self.mode != "binary":
            raise ValueError(f"mixed edge mode {self.mode!r}: use one of {MODES}")
        involved = torch.tensor(self.involved, dtype=torch.long, device=self.alpha.device)
        gates = _BinaryGates.apply(self.alpha, self.active, involved)
        if self.lazy:
            out = self.ops[self.active](x)
            lazy = _LazyGateGrads.apply(gates, x.detach(), self, self.active, out)
            return gates[self.active].to(out.dtype) * out + lazy
        out = None
        for i in self.involved:
            term = gates[i].to(x.dtype) * self.ops[i](x)
            out = term if out is None else out + term
        assert out is not None
        return out

    def extra_repr(self) -> str:
        return f"candidates={list(self.candidates)}, meta={self.meta}"


# ----------------------------------------------------------------------------------------------
# Model-level helpers
# ----------------------------------------------------------------------------------------------
def mixed_edges(model: nn.Module) -> list[MixedEdge]:
    """Every :class:`MixedEdge` of ``model``: grouped by searched part in :data:`ARCH_PARTS` order (the
    backbone's cells, then the rectifier's; a cell without ``meta["part"]`` counts as backbone), in
    ``model.modules()`` order within a part. This is :func:`strkit.nas.arch.searched_edges`' order, so
    α, probabilities, reports, choices and latency costs all list the cells the same way."""
    rank = {part: i for i, part in enumerate(ARCH_PARTS)}
    edges = [m for m in model.modules() if isinstance(m, MixedEdge)]
    return sorted(edges, key=lambda e: rank.get(e.meta.get("part", "backbone"), len(rank)))


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The architecture logits α of every mixed edge (one (N,) parameter each)."""
    return [e.alpha for e in mixed_edges(model)]


def named_weight_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every parameter that is not an α (for the weight optimiser)."""
    alpha_ids = {id(p) for p in arch_parameters(model)}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in alpha_ids]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not an α."""
    return [p for _, p in named_weight_parameters(model)]


def build_alpha_optimizer(model: nn.Module, lr: float = 6e-3, betas: Sequence[float] = (0.0, 0.999),
                          eps: float = 1e-8, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam over the α of ``model`` (ProxylessNAS: lr 6e-3, betas (0, 0.999), eps 1e-8)."""
    params = arch_parameters(model)
    if not params:
        raise ValueError("the model has no mixed edge (no searchable part): use the 'supernet' backbone")
    return torch.optim.Adam(params, lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps,
                            weight_decay=weight_decay)


def probabilities(model: nn.Module) -> list[list[float]]:
    """p = softmax(α) of every edge, as plain lists (for logs, history and reports)."""
    return [[float(v) for v in e.probs().detach().cpu()] for e in mixed_edges(model)]


class GateController:
    """Sets the forward behaviour of every mixed edge of a model, step by step.

    Args:
        model: a model holding mixed edges (found by walking ``model.modules()``).
        method: ``proxyless`` (binary gates) or ``full`` (DARTS-style weighted sum, for small spaces).
        paths: binary-gate paths in architecture steps: 1 (every gate gradient, one-path memory)
            or 2 (two sampled paths, ProxylessNAS' two-path mode).
        seed: seed of the controller's own generator. Runs with the same seed sample the same
            paths (on every rank under ``torchrun``, so all ranks train the same sub-network).
    """

    def __init__(self, model: nn.Module, method: str = "proxyless", paths: int = 1, seed: int = 0) -> None:
        if method not in ("proxyless", "full"):
            raise ValueError(f"search method {method!r}: use 'proxyless' or 'full'")
        if paths not in (1, 2):
            raise ValueError(f"binary-gate paths must be 1 or 2, got {paths}")
        self.edges = mixed_edges(model)
        if not self.edges:
            raise ValueError("the model has no mixed edge (no searchable part): use the 'supernet' backbone")
        self.method, self.paths = method, paths
        self.generator = torch.Generator().manual_seed(int(seed))

    def __iter__(self) -> Iterator[MixedEdge]:
        return iter(self.edges)

    def _sample(self, probs: Tensor, k: int = 1) -> list[int]:
        return [int(i) for i in torch.multinomial(probs, k, replacement=False, generator=self.generator)]

    def weight_step(self, uniform: bool = False) -> list[int]:
        """Prepare a weight step: each edge runs one path sampled from p (uniformly when ``uniform``,
        the warm-up); ``full`` runs every path. Returns the sampled indices."""
        chosen = []
        for e in self.edges:
            if self.method == "full":
                e.set_full()
                chosen.append(-1)
                continue
            probs = torch.full((len(e),), 1.0 / len(e)) if uniform else e.probs().detach().float().cpu()
            (j,) = self._sample(probs)
            e.set_path(j)
            chosen.append(j)
        return chosen

    def alpha_step(self) -> list[int]:
        """Prepare an architecture step: binary gates (one or two paths) or the full weighted sum.
        Returns the active index of each edge (-1 in ``full``)."""
        chosen = []
        for e in self.edges:
            if self.method == "full":
                e.set_full()
                chosen.append(-1)
                continue
            probs = e.probs().detach().float().cpu()
            if self.paths == 1 or len(e) == 1:
                (j,) = self._sample(probs)
                e.set_binary(j, range(len(e)), lazy=True)
            else:
                pair = self._sample(probs.clamp_min(1e-12), 2)  # two distinct paths even if p underflows
                sub = torch.softmax(e.alpha.detach().float().cpu()[pair], dim=0)
                (k,) = self._sample(sub)
                j = pair[k]
                # lazy: only the active path keeps a graph, the other one is recomputed without one in
                # backward for its gate gradient (the α step then needs one path's activation memory)
                e.set_binary(j, pair, lazy=True)
            chosen.append(j)
        return chosen

    def argmax(self) -> list[int]:
        """Run the most probable path of every edge (evaluation of the current architecture)."""
        chosen = [e.chosen() for e in self.edges]
        for e, j in zip(self.edges, chosen, strict=True):
            e.set_path(j)
        return chosen

    def fixed(self, choices: Sequence[int]) -> None:
        """Run the given path of every edge (a sub-network)."""
        if len(choices) != len(self.edges):
            raise ValueError(f"{len(choices)} choices for {len(self.edges)} mixed edges")
        for e, j in zip(self.edges, choices, strict=True):
            e.set_path(j)

    def alpha_snapshot(self) -> list[Tensor]:
        """Copies of every α (take before an optimiser step when using :meth:`rescale_two_path`)."""
        return [e.alpha.detach().clone() for e in self.edges]

    @torch.no_grad()
    def rescale_two_path(self, before: Sequence[Tensor]) -> None:
        """After a two-path α step: shift the updated α of the two involved paths so that their
        total probability mass (logsumexp) is what it was, leaving the other paths' p unchanged."""
        if self.method != "proxyless" or self.paths != 2:
            return
        for e, old in zip(self.edges, before, strict=True):
            idx = torch.tensor(e.involved, dtype=torch.long, device=e.alpha.device)
            if len(idx) == len(e):
                continue
            offset = torch.logsumexp(e.alpha[idx], 0) - torch.logsumexp(old.to(e.alpha.device)[idx], 0)
            e.alpha[idx] -= offset

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "method": self.method, "paths": self.paths}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
