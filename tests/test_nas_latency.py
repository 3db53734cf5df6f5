"""Latency lookup table, expected cost, cost losses and LUT validation."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from strkit.config import ModelConfig, load_config
from strkit.models.recognizer import build_model
from strkit.nas.arch import build_searched, derive_arch
from strkit.nas.latency.cost import CostModel, _count_flops, cost_loss, expected_latency
from strkit.nas.latency.table import (
    LatencyTable,
    LatencyTableError,
    arch_infos,
    entry_key,
    head_info,
    load_lut,
    measure_lut,
    predict_arch_latency,
    stem_info,
)
from strkit.nas.latency.validation import CALIBRATION_SEED_OFFSET, calibrate_lut, random_archs, validate_lut
from strkit.nas.search_space import build_supernet

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "search" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread


def tiny_net():
    return build_supernet(dict(load_config(TINY).model.backbone), 1, 32, 64)


def synthetic_lut(net, seed: int = 0) -> LatencyTable:
    """A table with made-up times for every op of ``net`` (no timing)."""
    rng = random.Random(seed)
    lut = LatencyTable(meta={"device": "cpu", "threads": 1, "torch": torch.__version__, "batch": 1})
    lut.add(stem_info(net), 0.05)
    lut.add(head_info(net), 0.02)
    for e in net.edges():
        for info in e.infos:
            lut.add(info, 0.0 if info["op"] == "skip" else rng.uniform(0.01, 0.3))
    lut.fixed["sequence_decoder"] = 0.4
    return lut


def one_hot(net, choices):
    with torch.no_grad():
        for e, j in zip(net.edges(), choices, strict=True):
            e.alpha.fill_(-1e4)
            e.alpha[j] = 1e4


def test_measured_lut_covers_every_candidate_and_round_trips(tmp_path):
    cfg = load_config(TINY)
    model = build_model(cfg.model, 32, 64, 1)
    lut = measure_lut(model, threads=1, repeats=2, warmup=1)
    net = model.backbone
    for e in net.edges():
        for info in e.infos:
            ms = lut.lookup(info)
            assert ms == 0.0 if info["op"] == "skip" else ms > 0.0
    assert lut.lookup(stem_info(net)) > 0 and lut.lookup(head_info(net)) > 0
    assert set(lut.fixed) == {"rectifier", "sequence_decoder"}
    meta = lut.to_dict()
    assert meta["format"] == "strkit-latency-lut" and meta["version"] == 1
    assert meta["device"] == "cpu" and meta["threads"] == 1 and meta["torch"] == torch.__version__
    assert {"h", "w", "c_in", "c_out", "stride", "kernel", "expansion", "ms"} <= set(meta["entries"][1])
    path = lut.save(tmp_path / "lut.json")
    again = load_lut(path)
    assert again.entries == lut.entries and again.fixed == lut.fixed and again.meta == lut.meta
    assert again.compatibility("cpu", 1) == []
    assert any("thread" in n for n in again.compatibility("cpu", 4))


def test_lut_errors(tmp_path):
    net = tiny_net()
    lut = synthetic_lut(net)
    info = dict(net.edges()[1].infos[0], c_in=999)
    with pytest.raises(LatencyTableError, match="c_in=999.*tools/search.py lut"):
        lut.lookup(info)
    with pytest.raises(LatencyTableError, match="not found"):
        load_lut(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(LatencyTableError, match="not a strkit latency table"):
        load_lut(tmp_path / "x.json")
    newer = {**lut.to_dict(), "version": 7}
    with pytest.raises(LatencyTableError, match="version"):
        LatencyTable.from_dict(newer)


def test_entry_key_is_canonical():
    a = {"op": "k3_e6", "h": 4, "w": 8, "c_in": 16, "c_out": 24, "stride": [2, 1], "kernel": 3, "expansion": 6}
    b = dict(reversed(list(a.items())))
    assert entry_key(a) == entry_key(b) == entry_key({**a, "ms": 1.0})
    assert entry_key(a) != entry_key({**a, "stride": [1, 2]})


def test_expected_latency_is_differentiable_and_equals_the_lut_sum_for_one_hot_alpha():
    net = tiny_net()
    lut = synthetic_lut(net)
    e_lat = expected_latency(net, lut)
    e_lat.backward()
    assert all(e.alpha.grad is not None and e.alpha.grad.abs().sum() > 0 for e in net.edges())
    # uniform α: the mean of each cell's candidates
    uniform = 0.05 + 0.02 + 0.4 + sum(sum(lut.lookup(i) for i in e.infos) / len(e) for e in net.edges())
    assert math.isclose(float(e_lat.detach()), uniform, rel_tol=1e-5)
    rng = random.Random(1)
    for _ in range(5):
        choices = [rng.randrange(len(e)) for e in net.edges()]
        one_hot(net, choices)
        arch = derive_arch(net)
        want = predict_arch_latency(arch, lut, include_fixed=True)
        manual = 0.47 + sum(lut.lookup(e.infos[j]) for e, j in zip(net.edges(), choices, strict=True))
        assert math.isclose(want, manual, rel_tol=1e-9)
        assert math.isclose(float(expected_latency(net, lut).detach()), want, rel_tol=1e-5)
        assert math.isclose(CostModel(net, "latency", lut).of_choices(choices), want, rel_tol=1e-6)


def test_arch_infos_match_the_supernet_shapes():
    net = tiny_net()
    choices = [len(e) - 1 for e in net.edges()]
    infos = arch_infos(derive_arch(net, choices))
    assert infos[0] == stem_info(net) and infos[-1] == head_info(net)
    assert infos[1:-1] == [e.infos[j] for e, j in zip(net.edges(), choices, strict=True)]


def test_params_and_flops_constraints_match_the_built_subnetwork():
    net = tiny_net()
    rng = random.Random(2)
    for _ in range(3):
        choices = [rng.randrange(len(e)) for e in net.edges()]
        backbone = build_searched(derive_arch(net, choices))
        params = sum(p.numel() for p in backbone.parameters()) / 1e6
        flops = _count_flops(backbone, torch.zeros(1, 1, 32, 64)) / 1e6
        assert math.isclose(CostModel(net, "params").of_choices(choices), params, rel_tol=1e-9)
        assert math.isclose(CostModel(net, "flops").of_choices(choices), flops, rel_tol=1e-9)
        with FlopCounterMode(display=False) as counter:  # the convention of tools/eval.py
            backbone.eval()(torch.zeros(1, 1, 32, 64))
        assert math.isclose(counter.get_total_flops() / 1e6, flops, rel_tol=1e-9)
    cm = CostModel(net, "params")
    lo, hi = cm.bounds()
    assert lo < float(cm.expected().detach()) < hi
    cm.expected().backward()
    assert net.edges()[0].alpha.grad is not None


def value(t: torch.Tensor) -> float:
    return float(t.detach())


def test_cost_losses():
    task = torch.tensor(2.0)
    cost = torch.tensor(12.0, requires_grad=True)
    assert value(cost_loss(task, cost, 10.0, "linear", lam=0.5)) == pytest.approx(2.0 + 0.5 * 0.2)
    assert value(cost_loss(task, cost.detach() - 4, 10.0, "hinge", lam=0.5)) == pytest.approx(2.0)
    assert value(cost_loss(task, cost, 10.0, "hinge", lam=0.5)) == pytest.approx(2.1)
    mul = cost_loss(task, cost, 10.0, "mul_log", beta=0.6)
    assert value(mul) == pytest.approx(2.0 * (math.log(12) / math.log(10)) ** 0.6)
    mul.backward()
    assert cost.grad > 0  # more latency, more loss
    with pytest.raises(ValueError, match="target > 1"):
        cost_loss(task, cost, 0.5, "mul_log")
    with pytest.raises(KeyError, match="linear"):
        cost_loss(task, cost, 10.0, "quadratic")


def test_validate_lut_reports_a_mean_absolute_error():
    cfg = load_config(TINY)
    model = build_model(ModelConfig(**{**vars(cfg.model)}), 32, 64, 1)
    lut = measure_lut(model, threads=1, repeats=2, warmup=1, include_rest=False)
    result = validate_lut(model, lut, n=3, repeats=2, warmup=1)
    assert len(result.measured_ms) == 3 and all(m > 0 for m in result.measured_ms)
    assert result.mae_pct == pytest.approx(
        sum(abs(p - m) / m for p, m in zip(result.predicted_ms, result.measured_ms, strict=True)) / 3 * 100)
    assert result.to_dict()["n"] == 3 and len(result.ops[0]) == len(model.backbone.edges())


def test_calibration_scales_every_lookup_and_round_trips(tmp_path):
    net = tiny_net()
    lut = synthetic_lut(net)
    info = next(i for i in net.edges()[1].infos if i["op"] != "skip")
    raw = lut.lookup(info)
    lut.scale = 1.25
    assert lut.lookup(info) == pytest.approx(1.25 * raw)
    again = load_lut(lut.save(tmp_path / "lut.json"))
    assert again.scale == 1.25 and again.lookup(info) == pytest.approx(1.25 * raw)
    data = json.loads((tmp_path / "lut.json").read_text())
    data["scale"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="calibration scale"):
        load_lut(tmp_path / "bad.json")
    data.pop("scale")  # a table written before calibration existed reads as unscaled
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_lut(tmp_path / "old.json").scale == 1.0


def test_calibrate_lut_fits_the_whole_network_factor_on_other_networks():
    cfg = load_config(TINY)
    model = build_model(ModelConfig(**{**vars(cfg.model)}), 32, 64, 1)
    lut = measure_lut(model, threads=1, repeats=2, warmup=1, include_rest=False)
    assert calibrate_lut(model, lut, 0).scale == 1.0 and "calibration" not in lut.meta
    calibrate_lut(model, lut, 3, threads=1, repeats=2, warmup=1, seed=5)
    cal = lut.meta["calibration"]
    pred, meas = cal["predicted_ms"], cal["measured_ms"]
    assert len(pred) == 3 and all(m > 0 for m in meas)
    assert lut.scale == pytest.approx(sum(p * m for p, m in zip(pred, meas, strict=True)) / sum(p * p for p in pred))
    # the calibration networks are not the validation networks of the same seed
    assert cal["seed"] == 5 + CALIBRATION_SEED_OFFSET
    assert random_archs(model, 3, 5 + CALIBRATION_SEED_OFFSET) != random_archs(model, 3, 5)
    arch = random_archs(model, 1, 0)[0]
    unscaled = sum(lut.entries[entry_key(i)][1] for i in arch_infos(arch) if i["op"] != "skip")
    assert predict_arch_latency(arch, lut) == pytest.approx(lut.scale * unscaled)
