"""Joint search of the TPS localisation network and the backbone (the "rectifier search" option)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch

import strkit.nas.search_space  # noqa: F401  (registers the 'supernet' backbone and localisation body)
from strkit.checkpoint import load_checkpoint, save_checkpoint
from strkit.config import load_config
from strkit.models.backbones.searched import ArchError, validate_arch
from strkit.models.pretrained import model_from_payload
from strkit.models.recognizer import build_model
from strkit.models.registry import RECTIFIERS
from strkit.nas.arch import (
    arch_ops,
    derive_arch,
    find_supernet,
    fixed_arch,
    load_arch,
    save_arch,
    searched_edges,
    searched_parts,
)
from strkit.nas.latency.cost import CostModel, expected_latency
from strkit.nas.latency.table import LatencyTable, head_info, measure_lut, predict_arch_latency, stem_info
from strkit.nas.proxyless import GateController, MixedEdge, arch_parameters, mixed_edges, probabilities
from strkit.nas.report import cell_descriptions, probability_table

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "search" / "tiny.yaml"
# the searchable localisation body of the tests: 16x32 input, 3 cells (first, reduction, normal)
LOC = {"name": "supernet", "stem_channels": 8, "first_channels": 8, "first_ops": ["k3_e1", "k5_e1"],
       "stages": [{"channels": 8, "cells": 2, "stride": [2, 2]}], "reduction_ops": ["k3_e2", "k5_e2"],
       "normal_ops": ["skip", "k3_e2"], "out_channels": 16}
RECT = {"name": "tps", "num_fiducial": 6, "loc_input": [16, 32], "loc_hidden": 8, "loc": LOC}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread


def rect_override(rect: dict = RECT) -> str:
    return f"model.rectifier={json.dumps(rect)}"


def tiny_model(*extra: str):
    cfg = load_config(TINY, [rect_override(), *extra])
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels), cfg


def synthetic_lut(model, seed: int = 0) -> LatencyTable:
    """Made-up times for every op of every searched part (no timing)."""
    rng = random.Random(seed)
    lut = LatencyTable(meta={"device": "cpu", "threads": 1, "torch": torch.__version__, "batch": 1})
    for net in searched_parts(model).values():
        lut.add(stem_info(net), rng.uniform(0.01, 0.1))
        lut.add(head_info(net), rng.uniform(0.01, 0.1))
        for e in net.edges():
            for info in e.infos:
                lut.add(info, 0.0 if info["op"] == "skip" else rng.uniform(0.01, 0.3))
    lut.fixed.update({"rectifier_rest": 0.3, "sequence_decoder": 0.2})
    return lut


@pytest.fixture
def _own_log_handlers():
    handlers = list(logging.getLogger("strkit").handlers)
    yield
    logger = logging.getLogger("strkit")
    for h in list(logger.handlers):
        if h not in handlers:
            logger.removeHandler(h)


# --- the searchable and the derived localisation network ------------------------------------------------
def test_searchable_and_derived_tps_start_as_the_identity(tmp_path):
    model, cfg = tiny_model()
    x = torch.rand(2, 1, 32, 64) * 2 - 1
    for mode in ("full", "path"):  # the supernet's forward mode does not matter: the last FC is zero
        for e in mixed_edges(model.rectifier):
            e.set_full() if mode == "full" else e.set_path(len(e) - 1)
        y = model.rectifier(x)
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    y.sum().backward()
    assert model.rectifier.localization.fc2.weight.grad is not None
    arch = save_arch(derive_arch(model), tmp_path / "arch.json")
    derived = RECTIFIERS.build({**RECT, "loc": {"name": "searched", "arch": str(arch)}}, img_h=32, img_w=64,
                               in_channels=1)
    torch.testing.assert_close(derived(x), x, atol=1e-4, rtol=0)
    assert derived.arch is not None and derived.loc_hw == (16, 32)
    assert tuple(derived(torch.rand(1, 1, 48, 160)).shape) == (1, 1, 32, 64)  # any input size, resampled


def test_parts_edges_and_gates_cover_backbone_and_rectifier():
    model, _ = tiny_model()
    parts = searched_parts(model)
    assert list(parts) == ["backbone", "rectifier"]
    assert find_supernet(model) is parts["backbone"] is model.backbone
    assert parts["rectifier"] is model.rectifier.localization.body
    assert {e.meta["part"] for e in parts["rectifier"].edges()} == {"rectifier"}
    assert len(parts["rectifier"].edges()) == 3 and len(parts["backbone"].edges()) == 5
    gates = GateController(model)
    assert {id(e) for e in gates.edges} == {id(e) for e in searched_edges(model)} and len(gates.edges) == 8
    # the rectifier's α get gate gradients in an architecture step
    gates.alpha_step()
    out = model(torch.rand(2, 1, 32, 64) * 2 - 1, model.encode(["ab", "cd"]))
    out.loss.backward()
    assert all(e.alpha.grad is not None for e in parts["rectifier"].edges())


# --- costs -----------------------------------------------------------------------------------------------
def test_expected_latency_sums_both_parts_and_is_differentiable_in_rectifier_alpha():
    model, _ = tiny_model()
    lut = synthetic_lut(model)
    edges = searched_edges(model)
    rng = random.Random(1)
    choices = [rng.randrange(len(e)) for e in edges]
    with torch.no_grad():
        for e, j in zip(edges, choices, strict=True):
            e.alpha.fill_(-1e4)
            e.alpha[j] = 1e4
    arch = derive_arch(model)
    assert [c["op"] for c in arch["rectifier"]["cells"]] == [e.candidates[j] for e, j in
                                                              zip(searched_parts(model)["rectifier"].edges(),
                                                                  choices[5:], strict=True)]
    table_sum = predict_arch_latency(arch, lut, include_fixed=True)
    rect_only = predict_arch_latency(arch, lut, parts=("rectifier",))
    assert 0 < rect_only < table_sum
    assert table_sum == pytest.approx(predict_arch_latency(arch, lut, parts=("backbone",)) + rect_only + lut.fixed_ms)
    expected = expected_latency(model, lut)
    assert float(expected.detach()) == pytest.approx(table_sum, rel=1e-9)
    assert CostModel(model, "latency", lut).of_choices(choices) == pytest.approx(table_sum)
    with torch.no_grad():
        for e in edges:
            e.alpha.zero_()
    expected_latency(model, lut).backward()
    rect_grads = [e.alpha.grad for e in searched_parts(model)["rectifier"].edges()]
    assert all(g is not None and g.abs().sum() > 0 for g in rect_grads)


@pytest.mark.parametrize("kind", ["params", "flops"])
def test_params_and_flops_costs_include_the_rectifier(kind):
    model, _ = tiny_model()
    backbone_only, _ = tiny_model("model.rectifier={name: none}")
    joint, alone = CostModel(model, kind), CostModel(backbone_only, kind)
    assert len(joint.costs) == len(alone.costs) + 3
    assert joint.bounds()[0] > alone.bounds()[0] and joint.bounds()[1] > alone.bounds()[1]


def test_measured_lut_times_the_localisation_ops_at_their_own_shapes():
    model, _ = tiny_model()
    lut = measure_lut(model, repeats=1, warmup=0)
    assert set(lut.fixed) == {"rectifier_rest", "sequence_decoder"}  # no whole-rectifier entry
    loc = searched_parts(model)["rectifier"]
    assert stem_info(loc)["h"] == 16 and stem_info(loc)["w"] == 32 and stem_info(loc) in lut
    assert all(info in lut for e in loc.edges() for info in e.infos) and head_info(loc) in lut
    assert float(expected_latency(model, lut).detach()) > 0


# --- derive, files, retraining, checkpoints ----------------------------------------------------------------
def test_derive_save_build_gives_the_same_ops_for_both_parts(tmp_path):
    model, cfg = tiny_model()
    rng = random.Random(3)
    choices = {part: [rng.randrange(len(e)) for e in net.edges()] for part, net in searched_parts(model).items()}
    arch = derive_arch(model, choices)
    path = save_arch(arch, tmp_path / "arch.json")
    loaded = load_arch(path)
    assert loaded == arch and set(loaded) >= {"rectifier", "cells", "stem", "head"}
    for part, net in searched_parts(model).items():
        assert arch_ops(loaded, part) == [e.candidates[j] for e, j in zip(net.edges(), choices[part], strict=True)]
    retrain = load_config(TINY, [rect_override({**RECT, "loc": {"name": "searched", "arch": str(path)}}),
                                 f"model.backbone={json.dumps({'name': 'searched', 'arch': str(path)})}"])
    rebuilt = build_model(retrain.model, 32, 64, 1)
    assert rebuilt.backbone.op_names() == arch_ops(loaded)
    assert rebuilt.rectifier.localization.body.op_names() == arch_ops(loaded, "rectifier")
    assert not mixed_edges(rebuilt)


def test_fixed_arch_covers_the_rectifier():
    model, _ = tiny_model()
    arch = fixed_arch(model, "k3_e2")
    assert arch_ops(arch, "rectifier") == ["k3_e1", "k3_e2", "k3_e2"]
    assert arch_ops(arch)[1:] == ["k3_e2"] * 4


def test_fixed_subcommand_writes_and_retrains_both_parts(tmp_path, capsys, _own_log_handlers):
    from strkit.cli.search import main

    out = tmp_path / "fixed"
    assert main(["fixed", str(TINY), rect_override(), "--op", "k3_e2", "--out", str(out)]) == 0
    assert "rectifier: k3_e1 k3_e2 k3_e2" in capsys.readouterr().out
    cfg = load_config(out / "train.yaml")
    assert cfg.model.rectifier["loc"]["name"] == "searched" and cfg.model.rectifier["loc_input"] == [16, 32]
    model = build_model(cfg.model, 32, 64, 1)
    assert model.rectifier.localization.body.op_names() == ["k3_e1", "k3_e2", "k3_e2"]


def test_checkpoint_reloads_without_the_arch_file(tmp_path):
    model, _ = tiny_model()
    path = save_arch(derive_arch(model), tmp_path / "arch.json")
    cfg = load_config(TINY, [rect_override({**RECT, "loc": {"name": "searched", "arch": str(path)}}),
                             f"model.backbone={json.dumps({'name': 'searched', 'arch': str(path)})}"])
    torch.manual_seed(1)
    trained = build_model(cfg.model, 32, 64, 1).eval()
    with torch.no_grad():
        trained.rectifier.localization.fc2.weight.normal_(0, 0.01)  # a non-identity warp
    assert trained.rectifier_arch is not None and "rectifier" in trained.rectifier_arch
    save_checkpoint(tmp_path / "best.pt", config=cfg.to_dict(), charset=trained.charset.to_dict(),
                    state_dict=trained.state_dict(), arch=trained.arch, rectifier_arch=trained.rectifier_arch)
    path.unlink()
    reloaded, _ = model_from_payload(load_checkpoint(tmp_path / "best.pt"))
    x = torch.rand(2, 1, 32, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, trained(x).logits)
        assert not torch.allclose(trained.rectifier(x), x, atol=1e-3)


# --- errors ------------------------------------------------------------------------------------------------
def test_bad_rectifier_sections_and_specs_are_named(tmp_path):
    model, _ = tiny_model()
    arch = derive_arch(model)
    bad = json.loads(json.dumps(arch))
    bad["rectifier"]["cells"][1]["op"] = "k4_e2"
    with pytest.raises(ArchError, match=r"rectifier\.cells\[1\]\.op"):
        validate_arch(bad)
    bad = json.loads(json.dumps(arch))
    bad["rectifier"]["cells"][0]["c_in"] = 24
    with pytest.raises(ArchError, match=r"rectifier\.cells\[0\]\.c_in"):
        validate_arch(bad)
    with pytest.raises(ArchError, match="'rectifier' must be a mapping"):
        validate_arch({**arch, "rectifier": [1, 2]})
    backbone_only = {k: v for k, v in arch.items() if k != "rectifier"}
    assert validate_arch(backbone_only) == backbone_only  # old files keep working
    old = save_arch(backbone_only, tmp_path / "old.json")
    with pytest.raises(ArchError, match=r"model\.rectifier\.loc\.arch.*no 'rectifier' section"):
        RECTIFIERS.build({**RECT, "loc": {"name": "searched", "arch": str(old)}}, img_h=32, img_w=64, in_channels=1)
    with pytest.raises(ValueError, match="loc_channels.*not both"):
        RECTIFIERS.build({**RECT, "loc_channels": [8]}, img_h=32, img_w=64, in_channels=1)
    with pytest.raises(ValueError, match=r"loc_input"):
        RECTIFIERS.build({**RECT, "loc_input": [16]}, img_h=32, img_w=64, in_channels=1)
    with pytest.raises(Exception, match=r"model\.rectifier\.loc.*unknown key 'cells'"):
        RECTIFIERS.build({**RECT, "loc": {**LOC, "cells": 3}}, img_h=32, img_w=64, in_channels=1)


def test_report_tables_label_the_rectifier_cells():
    model, _ = tiny_model()
    cells = cell_descriptions(model)
    table = probability_table(cells, [[1 / len(c["candidates"])] * len(c["candidates"]) for c in cells])
    lines = table.splitlines()
    assert lines[0].startswith("| part | cell")
    assert sum(line.startswith("| rectifier |") for line in lines) == 3
    assert sum(line.startswith("| backbone |") for line in lines) == 5



def test_every_list_of_cells_has_the_searched_edges_order():
    """α, probabilities, reports, choices and LUT costs list the cells the same way: the backbone's, then
    the rectifier's, although the rectifier comes first in the model."""
    model, _ = tiny_model()
    in_module_order = [n for n, m in model.named_modules() if isinstance(m, MixedEdge)]
    assert in_module_order[0].startswith("rectifier.")
    edges = searched_edges(model)
    assert [id(e) for e in mixed_edges(model)] == [id(e) for e in edges]
    assert [c["part"] for c in cell_descriptions(model)] == ["backbone"] * 5 + ["rectifier"] * 3
    assert [id(a) for a in arch_parameters(model)] == [id(e.alpha) for e in edges]
    with torch.no_grad():
        edges[-1].alpha.copy_(torch.tensor([0.0, 3.0]))  # the rectifier's last cell prefers its second op
    probs = probabilities(model)
    assert probs[-1][1] > 0.9 and all(p == pytest.approx([1 / len(p)] * len(p)) for p in probs[:-1])

# --- end to end ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_joint_search_derives_retrains_and_reloads(word_folder, tmp_path, _own_log_handlers):
    from strkit.cli.search import main
    from strkit.engine.trainer import Trainer
    from strkit.models.pretrained import load_model

    out = tmp_path / "search"
    assert main(["run", str(TINY), f"data.train=[{{path: {word_folder}, kind: folder, name: words}}]",
                 f"train.out_dir={out}", "train.steps=4", "search.validate_samples=0", "search.lut_calibrate=0",
                 "search.measure_repeats=1", "search.lut_repeats=1", rect_override()]) == 0
    arch = load_arch(out / "arch.json")
    assert len(arch_ops(arch, "rectifier")) == 3 and len(arch_ops(arch)) == 5
    state = load_checkpoint(out / "last.pt")["extra"]["search_state"]
    assert len(state["history"]["probs"][-1]) == 8  # backbone + rectifier cells
    assert state["arch"]["rectifier"] == arch["rectifier"]
    report = (out / "report.md").read_text()
    assert "| rectifier |" in report and "Ops (rectifier)" in report
    figures = json.loads((out / "report.json").read_text())["figures"]
    assert figures["predicted rectifier localisation latency (ms)"] > 0
    assert "rectifier_rest" in json.loads((out / "lut.json").read_text())["fixed"]
    cfg = load_config(out / "retrain.yaml", ["train.steps=1", "train.val_every=1", "train.save_every=1",
                                             f"train.out_dir={tmp_path / 'retrain'}"])
    assert cfg.model.rectifier["loc"] == {"name": "searched", "arch": str((out / "arch.json").resolve())}
    Trainer(cfg).fit()
    (out / "arch.json").unlink()  # the checkpoint describes both parts itself
    model, _ = load_model(tmp_path / "retrain" / "last.pt")
    assert model.rectifier.localization.body.op_names() == arch_ops(arch, "rectifier")
    assert model.backbone.op_names() == arch_ops(arch)
