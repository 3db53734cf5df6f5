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


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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
