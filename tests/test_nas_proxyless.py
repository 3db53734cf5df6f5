"""Binary gates, the α-gradient formula, path sampling and the α optimiser."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from strkit.models.backbones.searched import op_block_spec
from strkit.nas.proxyless import (
    GateController,
    MixedEdge,
    alpha_grad_from_gate_grad,
    arch_parameters,
    build_alpha_optimizer,
    mixed_edges,
    named_weight_parameters,
    weight_parameters,
)
from strkit.nas.search_space import build_supernet, op_info

floats = st.floats(min_value=-4, max_value=4, allow_nan=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(st.lists(floats, min_size=n, max_size=n),
                                                     st.lists(floats, min_size=n, max_size=n))))
def test_formula_equals_autograd_of_softmax(data):
    """Σ_j c_j p_j(δ_ij − p_i) is the gradient of Σ_j c_j softmax(α)_j."""
    alpha_l, c_l = data
    alpha = torch.tensor(alpha_l, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(c_l, dtype=torch.float64)
    (torch.softmax(alpha, 0) * c).sum().backward()
    formula = alpha_grad_from_gate_grad(c, torch.softmax(alpha.detach(), 0))
    torch.testing.assert_close(formula, alpha.grad)
    p = torch.softmax(alpha.detach(), 0).tolist()
    explicit = torch.tensor([sum(c_l[j] * p[j] * (float(i == j) - p[i]) for j in range(len(p)))
                             for i in range(len(p))], dtype=torch.float64)
    torch.testing.assert_close(formula, explicit)


def make_edge(ops: tuple[str, ...] = ("skip", "k3_e2", "k5_e2", "k3_e1"), c: int = 8, hw: int = 6) -> MixedEdge:
    torch.manual_seed(0)
    modules = {n: op_block_spec(n, c, (1, 1)).build(c) for n in ops}
    infos = [op_info(n, c, c, hw, hw, (1, 1)) for n in ops]
    edge = MixedEdge(modules, infos, {"kind": "normal"}).double().eval()
    with torch.no_grad():
        edge.alpha.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1][: len(ops)], dtype=torch.float64))
    return edge


def test_binary_gate_alpha_grads_match_full_mode_autograd():
    """With a loss linear in the edge output, ∂L/∂g_j = ∂L/∂p_j, so the gate-gradient formula (one-path
    binary mode, gate gradients of the unsampled paths recomputed in backward) must give exactly the
    autograd gradient of the softmax-weighted (full) mode, whichever path is sampled."""
    edge = make_edge()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    w = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    edge.set_full()
    (w * edge(x)).sum().backward()
    reference = edge.alpha.grad.clone()
    for active in range(len(edge)):
        edge.alpha.grad = None
        edge.set_binary(active, range(len(edge)), lazy=True)
        out = edge(x)
        torch.testing.assert_close(out, edge.ops[active](x))  # forward = the sampled path only
        (w * out).sum().backward()
        torch.testing.assert_close(edge.alpha.grad, reference)


@pytest.mark.parametrize("involved", [None, (0, 2)])
def test_lazy_gate_grads_equal_running_every_path(involved):
    """For any (non-linear) loss, recomputing the inactive paths in backward gives the same α and input
    gradients as keeping every path in the graph: with every path involved, and in the two-path mode."""
    edge = make_edge()
    involved = range(len(edge)) if involved is None else involved
    x0 = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    grads = {}
    for lazy in (True, False):
        x = x0.clone().requires_grad_(True)
        edge.alpha.grad = None
        edge.set_binary(2, involved, lazy=lazy)
        calls = [0] * len(edge)
        hooks = [op.register_forward_hook(lambda *_a, i=i, c=calls: c.__setitem__(i, c[i] + 1))
                 for i, op in enumerate(edge.ops)]
        (edge(x).tanh() ** 2).sum().backward()
        grads[lazy] = (edge.alpha.grad.clone(), x.grad.clone())
        for h in hooks:
            h.remove()
        assert [c > 0 for c in calls] == [i in involved for i in range(len(edge))]  # no path outside the pair
    torch.testing.assert_close(grads[True][0], grads[False][0])
    torch.testing.assert_close(grads[True][1], grads[False][1])


def test_two_path_mode_moves_only_the_pair():
    edge = make_edge()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    w = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    pair = (1, 3)
    edge.set_binary(3, pair, lazy=False)
    (w * edge(x)).sum().backward()
    grad = edge.alpha.grad
    assert grad[0] == 0 and grad[2] == 0
    c = torch.stack([(w * edge.ops[i](x)).sum() for i in pair]).detach()
    expected = alpha_grad_from_gate_grad(c, torch.softmax(edge.alpha.detach()[list(pair)], 0))
    torch.testing.assert_close(grad[list(pair)], expected)


def test_path_mode_trains_only_the_sampled_op_and_no_alpha():
    edge = make_edge()
    edge.set_path(2)
    edge(torch.randn(2, 8, 6, 6, dtype=torch.float64)).sum().backward()
    assert edge.alpha.grad is None
    for i, op in enumerate(edge.ops):
        grads = [p.grad for p in op.parameters()]
        assert all(g is not None for g in grads) if i == 2 else all(g is None for g in grads)


def tiny_space_net():
    space = {"stem_channels": 8, "first_channels": 8, "first_ops": ["k3_e1", "k5_e1"],
             "stages": [[16, 2, 2, 2]], "reduction_ops": ["k3_e2", "k5_e2"],
             "normal_ops": ["skip", "k3_e2"], "out_channels": 16}
    return build_supernet(space, 1, 16, 32)


def test_parameter_partition_and_alpha_optimiser():
    net = tiny_space_net()
    alphas = arch_parameters(net)
    assert len(alphas) == len(mixed_edges(net)) == 3
    ids = {id(p) for p in alphas} | {id(p) for p in weight_parameters(net)}
    assert ids == {id(p) for p in net.parameters()}
    assert not {id(p) for p in alphas} & {id(p) for _, p in named_weight_parameters(net)}
    opt = build_alpha_optimizer(net, lr=0.1)
    assert opt.param_groups[0]["betas"] == (0.0, 0.999)
    with pytest.raises(ValueError, match="supernet"):
        build_alpha_optimizer(nn.Linear(2, 2))


def test_controller_sampling_is_seeded_and_resumable():
    net = tiny_space_net()
    a, b = GateController(net, seed=5), GateController(net, seed=5)
    seq_a = [a.weight_step(uniform=True) for _ in range(5)]
    state = a.state_dict()
    more_a = [a.alpha_step() for _ in range(3)]
    assert seq_a == [b.weight_step(uniform=True) for _ in range(5)]
    c = GateController(net, seed=99)
    c.load_state_dict(state)
    assert more_a == [c.alpha_step() for _ in range(3)]


def test_warmup_sampling_is_uniform_whatever_alpha():
    net = tiny_space_net()
    with torch.no_grad():
        for e in mixed_edges(net):
            e.alpha.copy_(torch.tensor([8.0] + [0.0] * (len(e) - 1)))
    ctl = GateController(net, seed=0)
    picks = [ctl.weight_step(uniform=True)[0] for _ in range(400)]
    assert 0.35 < picks.count(0) / 400 < 0.65  # 2 candidates: ~0.5 (p from α would give ~1.0)
    picks = [ctl.weight_step(uniform=False)[0] for _ in range(100)]
    assert picks.count(0) > 95


def test_two_path_rescale_keeps_the_other_paths_probabilities():
    edge = make_edge()
    ctl = GateController(nn.ModuleList([edge]), paths=2, seed=1)
    ctl.alpha_step()
    pair = list(edge.involved)
    others = [i for i in range(len(edge)) if i not in pair]
    before = ctl.alpha_snapshot()
    p_before = torch.softmax(before[0], 0)
    with torch.no_grad():
        edge.alpha[pair[0]] += 1.0
        edge.alpha[pair[1]] -= 0.3
    ctl.rescale_two_path(before)
    p_after = edge.probs().detach()
    torch.testing.assert_close(p_after[others], p_before[others])
    torch.testing.assert_close(p_after[pair].sum(), p_before[pair].sum())
    assert p_after[pair[0]] > p_before[pair[0]]


def test_alpha_steps_favour_the_path_that_lowers_the_loss():
    """Proxyless α updates on a loss that only the k5 path can lower make k5 the most probable op."""
    torch.manual_seed(0)
    edge = make_edge(("skip", "k3_e1", "k5_e1")).float().train()
    ctl = GateController(nn.ModuleList([edge]), seed=0)
    opt = build_alpha_optimizer(edge, lr=0.05)
    x = torch.randn(4, 8, 6, 6)
    target = edge.ops[2](x).detach()
    for _ in range(60):
        ctl.alpha_step()
        opt.zero_grad()
        ((edge(x) - target) ** 2).mean().backward()
        opt.step()
    assert edge.chosen() == 2


def test_bad_modes_are_refused():
    edge = make_edge()
    with pytest.raises(ValueError, match="involved"):
        edge.set_binary(0, (1, 2), lazy=False)
    with pytest.raises(ValueError, match="proxyless"):
        GateController(tiny_space_net(), method="darts")
    with pytest.raises(ValueError, match="1 or 2"):
        GateController(tiny_space_net(), paths=3)
