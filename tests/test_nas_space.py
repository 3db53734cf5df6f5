"""The supernet search space, architecture files and the ``searched`` backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import strkit.models.backbones.searched  # noqa: F401  (registers 'searched')
from strkit.config import ConfigError, ModelConfig, load_config
from strkit.models.backbones.searched import ArchError, SearchedBackbone, load_arch
from strkit.models.recognizer import build_model
from strkit.models.registry import RECTIFIERS
from strkit.nas.arch import arch_ops, build_searched, derive_arch, save_arch
from strkit.nas.proxyless import GateController
from strkit.nas.search_space import DEFAULT_NORMAL_OPS, DEFAULT_REDUCTION_OPS, SuperNet, build_supernet

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "search" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread


def tiny_space() -> dict:
    return dict(load_config(TINY).model.backbone)


def tiny_net(h: int = 32, w: int = 64) -> SuperNet:
    return build_supernet(tiny_space(), 1, h, w)


def test_default_space_layout_and_shapes():
    net = SuperNet(1, 32, 128)
    kinds = [e.meta["kind"] for e in net.edges()]
    assert kinds[0] == "first" and len(kinds) == 17
    assert kinds.count("reduction") == 6
    assert net.edges()[0].candidates == ("k3_e1", "k5_e1", "k7_e1")
    for e in net.edges():
        if e.meta["kind"] == "reduction":
            assert e.candidates == DEFAULT_REDUCTION_OPS and "skip" not in e.candidates
        elif e.meta["kind"] == "normal":
            assert e.candidates == DEFAULT_NORMAL_OPS and e.meta["stride"] == [1, 1]
    # text-shaped strides: height to 1, width to W/4
    assert net.out_hw == (1, 32)
    strides = [tuple(e.meta["stride"]) for e in net.edges() if e.meta["kind"] == "reduction"]
    assert strides == [(2, 2), (2, 1), (2, 1), (1, 1), (2, 1), (1, 1)]
    GateController(net).argmax()
    assert net(torch.randn(1, 1, 32, 128)).shape == (1, 384, 1, 32)


def test_every_candidate_keeps_the_cell_shape():
    net = tiny_net().eval()
    x = torch.randn(2, 1, 32, 64)
    h = net.stem(x)
    for e in net.edges():
        outs = [op(h) for op in e.ops]
        assert len({tuple(o.shape) for o in outs}) == 1, e.meta
        assert tuple(h.shape[1:]) == e.in_shape
        h = outs[0]


@pytest.mark.parametrize("change, message", [
    ({"reduction_ops": ["skip", "k3_e6"]}, "skip"),
    ({"normal_ops": ["k4_e6"]}, "k4_e6"),
    ({"stages": [{"channels": 16, "cells": 2, "strid": [2, 2]}]}, "strid"),
    ({"stages": [[16, 2, 2, 2]], "normal_ops": ["k3_e3", "k3_e3"]}, "duplicate"),
])
def test_bad_space_configs_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        build_supernet({**tiny_space(), **change}, 1, 32, 64)


def test_unknown_supernet_key_is_reported_with_its_path():
    with pytest.raises(Exception, match="model.backbone.*kernel_sizes"):
        build_supernet({**tiny_space(), "kernel_sizes": [3]}, 1, 32, 64)


def _small(name: str) -> dict:
    return {"tps": {"name": "tps", "num_fiducial": 6, "loc_channels": [8, 16], "loc_hidden": 16}}.get(
        name, {"name": name})


@pytest.mark.parametrize("rectifier", ["none", "tps"])
@pytest.mark.parametrize("sequence, decoder", [
    ({"name": "none"}, {"name": "ctc"}),
    ({"name": "bilstm", "hidden_size": 16, "num_layers": 1}, {"name": "ctc"}),
    ({"name": "bilstm", "hidden_size": 16, "num_layers": 1}, {"name": "attention", "hidden_size": 16}),
])
def test_supernet_works_in_every_pipeline(rectifier, sequence, decoder):
    cfg = ModelConfig(max_length=6, rectifier=_small(rectifier), backbone={"name": "supernet", **tiny_space()},
                      sequence=sequence, decoder=decoder)
    model = build_model(cfg, 32, 64, 1)
    GateController(model).weight_step()
    out = model(torch.randn(2, 1, 32, 64), model.encode(["ab", "cde"]))
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_every_registered_rectifier_accepts_the_supernet():
    for name in RECTIFIERS.names():
        cfg = ModelConfig(max_length=6, rectifier=_small(name), backbone={"name": "supernet", **tiny_space()},
                          sequence={"name": "none"}, decoder={"name": "ctc"})
        model = build_model(cfg, 32, 64, 1)
        GateController(model).argmax()
        assert model(torch.randn(1, 1, 32, 64)).logits.shape[1] == 16, name


def test_derive_save_load_build_gives_the_same_ops(tmp_path):
    net = tiny_net()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for e in net.edges():
            e.alpha.copy_(torch.randn(len(e), generator=g))
    arch = derive_arch(net, metadata={"note": "test"})
    expected = [e.candidates[int(e.alpha.argmax())] for e in net.edges()]
    assert arch_ops(arch) == expected
    path = save_arch(arch, tmp_path / "arch.json")
    loaded = load_arch(path)
    assert loaded == json.loads(path.read_text()) and arch_ops(loaded) == expected
    backbone = build_searched(path)
    assert backbone.op_names() == expected
    # every block is the very module the supernet trained for that choice (same structure)
    for block, e, op in zip(backbone.blocks, net.edges(), expected, strict=True):
        assert repr(block) == repr(e.ops[e.candidates.index(op)])
    x = torch.randn(2, 1, 32, 64)
    GateController(net).argmax()
    assert backbone(x).shape == net(x).shape
    # the same file builds through the registry, inline (as a checkpoint stores it) or as a path
    for spec in (str(path), loaded):
        cfg = ModelConfig(backbone={"name": "searched", "arch": spec}, sequence={"name": "none"},
                          decoder={"name": "ctc"})
        model = build_model(cfg, 32, 64, 1)
        assert model.backbone.op_names() == expected
        assert model.backbone.arch == loaded


def test_explicit_choices_and_skip_cells():
    net = tiny_net()
    choices = [0 if e.meta["kind"] != "normal" else e.candidates.index("skip") for e in net.edges()]
    arch = derive_arch(net, choices)
    b = SearchedBackbone(1, 32, 64, arch=arch)
    assert [type(m).__name__ for m in b.blocks].count("SkipBlock") == sum(
        e.meta["kind"] == "normal" for e in net.edges())
    with pytest.raises(ValueError, match="choices"):
        derive_arch(net, choices[:-1])


def _arch() -> dict:
    return derive_arch(tiny_net(), None)


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.update(format="other"), "not a strkit architecture"),
    (lambda a: a.update(version=99), "newer"),
    (lambda a: a["cells"][1].update(c_in=24), r"cells\[1\].c_in"),
    (lambda a: a["cells"][1].update(op="k4_e6"), r"cells\[1\].op"),
    (lambda a: a["cells"][1].update(op="skip"), "skip"),
    (lambda a: a["cells"][0].update(c_out=12), "multiples of 8"),
    (lambda a: a.pop("head"), "head"),
])
def test_bad_architectures_are_named(mutate, message):
    arch = _arch()
    mutate(arch)
    with pytest.raises(ArchError, match=message):
        load_arch(arch)


def test_arch_file_errors(tmp_path):
    with pytest.raises(ArchError, match="not found"):
        load_arch(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArchError, match="bad.json"):
        load_arch(bad)
    with pytest.raises(ArchError, match="model.backbone.arch"):
        SearchedBackbone(1, 32, 64)
    cfg = ModelConfig(backbone={"name": "searched", "arch": str(tmp_path / "missing.json")})
    with pytest.raises((ArchError, ConfigError), match="missing.json"):
        build_model(cfg, 32, 64, 1)


# -- weight sharing (strkit.nas.shared) ------------------------------------------------------------------
def test_shared_candidate_equals_the_standalone_block_with_sliced_weights():
    """k3_e3 of a k7_e6 superkernel computes exactly the InvertedResidual holding the weight slices."""
    from strkit.models.backbones.blocks import InvertedResidual
    from strkit.nas.shared import SharedChoice, SharedInvertedResidual

    torch.manual_seed(0)
    shared = SharedInvertedResidual(8, 8, [3, 5, 7], [3, 6], (1, 1))
    for kernel, expansion in [(3, 3), (5, 6), (7, 6), (7, 3)]:
        op = SharedChoice(shared, kernel, expansion).eval()
        ref = InvertedResidual(8, 8, kernel, expansion, (1, 1)).eval()
        hidden, off = 8 * expansion, (7 - kernel) // 2
        with torch.no_grad():
            ref.body[0][0].weight.copy_(shared.expand[:hidden])
            ref.body[1][0].weight.copy_(shared.depthwise[:hidden, :, off:off + kernel, off:off + kernel])
            ref.body[2][0].weight.copy_(shared.project[:, :hidden])
        x = torch.randn(2, 8, 6, 10)
        torch.testing.assert_close(op(x), ref(x))
        assert [n for n, _ in op.named_parameters()] == [  # only its own BNs: the superkernel is the edge's
            f"{bn}.{p}" for bn in ("bn_expand", "bn_depthwise", "bn_project") for p in ("weight", "bias")]
    e1 = SharedChoice(SharedInvertedResidual(8, 16, [3, 5], [1], (2, 1)), 5, 1)
    assert e1.bn_expand is None and e1(torch.randn(1, 8, 6, 10)).shape == (1, 16, 3, 10)
    with pytest.raises(ValueError, match="does not fit the superkernel"):
        SharedChoice(shared, 9, 3)


def test_shared_supernet_trains_one_superkernel_from_every_path_and_keeps_costs():
    from strkit.nas.latency.cost import COST_KINDS
    from strkit.nas.shared import SharedInvertedResidual

    space = tiny_space()
    plain, shared = build_supernet(space, 1, 32, 64), build_supernet({**space, "weight_sharing": True}, 1, 32, 64)
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in plain.parameters())
    edge = next(e for e in shared.edges() if "skip" in e.candidates and len(e) > 2)
    assert isinstance(edge.shared, SharedInvertedResidual)
    x = torch.randn(2, *edge.in_shape, requires_grad=True)
    for i, name in enumerate(edge.candidates):  # any sampled path but skip trains the superkernel
        edge.zero_grad()
        edge.set_path(i)
        edge(x).sum().backward()
        got = edge.shared.depthwise.grad
        assert (got is None) == (name == "skip"), name
    # the cost tables describe the standalone blocks, so they do not depend on the sharing
    for kind in ("params", "flops"):
        a, fixed_a = COST_KINDS.get(kind)(plain)
        b, fixed_b = COST_KINDS.get(kind)(shared)
        assert fixed_a == fixed_b and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    GateController(shared).argmax()  # the derived architecture names the same ops
    assert arch_ops(derive_arch(shared)) == arch_ops(derive_arch(plain))
    assert shared(torch.randn(1, 1, 32, 64)).shape == plain(torch.randn(1, 1, 32, 64)).shape


def test_search_spaces_are_known_by_their_base_class_not_their_name(tmp_path):
    """A new space is one class: a registered SearchSpace subclass is searchable, found in a model by
    ``searched_parts``, derives its architecture section and says what it retrains as."""
    from torch import nn

    from strkit.engine.searcher import write_retrain_config
    from strkit.models.rectifiers.tps import LOC_BODIES
    from strkit.models.registry import BACKBONES
    from strkit.nas.arch import searched_parts
    from strkit.nas.proxyless import MixedEdge
    from strkit.nas.space import SearchSpace, is_search_space, search_space_names, space_class
    from strkit.registry import Registry

    assert "supernet" in search_space_names(BACKBONES) and "mobilenetv2" not in search_space_names(BACKBONES)
    assert is_search_space(LOC_BODIES, {"name": "supernet"}) and not is_search_space(LOC_BODIES, {"name": "cnn"})
    assert space_class(BACKBONES, {"name": "supernet"}) is SuperNet and space_class(BACKBONES, "supernet") is None

    spaces: Registry = Registry("toy stage")

    @spaces.register("toy")
    class ToySpace(SearchSpace):
        def __init__(self) -> None:
            super().__init__()
            ops = {"a": nn.Identity(), "b": nn.Identity()}
            infos = [{"op": "a"}, {"op": "b"}]
            self.cell = MixedEdge(ops, infos, {"part": "backbone", "index": 0})

        def arch_section(self, choices):
            return {"cells": [{"op": self.cell.candidates[j]} for j in choices]}

    assert search_space_names(spaces) == ["toy"]
    holder = nn.Sequential(nn.Identity(), ToySpace())
    parts = searched_parts(holder)
    assert list(parts) == ["backbone"] and parts["backbone"].edges() == [holder[1].cell]
    assert parts["backbone"].arch_section([1]) == {"cells": [{"op": "b"}]}
    cfg = load_config(TINY)
    path = write_retrain_config(cfg, tmp_path / "arch.json", tmp_path / "retrain.yaml", tmp_path / "run")
    retrain = load_config(path)
    assert retrain.model.backbone == SuperNet.retrain_spec(str((tmp_path / "arch.json").resolve()))
