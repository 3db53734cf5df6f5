"""End-to-end architecture search on generated words: outputs, retraining, resume, torchrun, CLI."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import join_process_group, spawn_ranks

from strkit.checkpoint import load_checkpoint
from strkit.cli.search import main
from strkit.config import ConfigError, load_config
from strkit.nas.arch import arch_ops, load_arch
from strkit.nas.config import search_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "search" / "tiny.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread_and_own_log_handlers():
    """One intra-op thread (tiny tensors, shared machine); drop the log handlers ``main`` attaches to
    pytest's captured stderr once the test is over."""
    old = torch.get_num_threads()
    handlers = list(logging.getLogger("strkit").handlers)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
    logger = logging.getLogger("strkit")
    for h in list(logger.handlers):
        if h not in handlers:
            logger.removeHandler(h)


def overrides(data_dir: Path, out_dir: Path, steps: int = 6, *extra: str) -> list[str]:
    return [f"data.train=[{{path: {data_dir}, kind: folder, name: words}}]", f"train.out_dir={out_dir}",
            f"train.steps={steps}", *extra]


def test_tiny_search_end_to_end_and_retrain(word_folder, tmp_path, capsys):
    from strkit.engine.trainer import Trainer
    from strkit.models.recognizer import build_model

    out = tmp_path / "search"
    assert main(["run", str(TINY), *overrides(word_folder, out, 6, "search.cost_train_steps=2")]) == 0
    assert "architecture:" in capsys.readouterr().out
    for name in ("arch.json", "report.md", "report.json", "probabilities.png", "lut.json", "last.pt",
                 "config.yaml", "metrics.csv", "retrain.yaml"):
        assert (out / name).is_file(), name
    arch = load_arch(out / "arch.json")
    payload = load_checkpoint(out / "last.pt")
    state = payload["extra"]["search_state"]
    assert payload["step"] == 6 and state["arch"]["cells"] == arch["cells"]
    assert payload["arch"] is None  # 'arch' is for searched backbones; this model is the supernet
    assert state["arch_steps"] == 4  # 2 warm-up steps, then one α step per weight step
    assert state["history"]["steps"] == list(range(7))
    # α moved away from uniform after the warm-up, and only then
    probs = state["history"]["probs"]
    assert probs[2] == probs[0] and probs[-1] != probs[0]
    report = (out / "report.md").read_text()
    assert "Probabilities at the start (step 0)" in report and "Latency table accuracy" in report
    assert " ".join(arch_ops(arch)) in report
    figures = json.loads((out / "report.json").read_text())["figures"]
    assert figures["measured backbone latency (ms)"] > 0 and figures["predicted backbone latency (ms)"] > 0
    # search cost: wall time, memory, and one search step against one training step of the derived network
    assert figures["search wall time (min)"] > 0 and figures["peak RSS of the search process (GiB)"] > 0
    assert figures["weight step, mean (s)"] > 0 and figures["α step, mean (s)"] > 0
    assert figures["training step of the derived network (s)"] > 0
    assert figures["search step / training step (time)"] > 0 and figures["search / training peak RSS (memory)"] > 0
    assert state["timing"]["weight_n"] == 6 and state["timing"]["arch_n"] == 4
    # retrain the derived architecture with the trainer, from the written config
    cfg = load_config(out / "retrain.yaml", ["train.steps=2", f"train.out_dir={tmp_path / 'retrain'}"])
    assert cfg.model.backbone["name"] == "searched" and cfg.search == {}
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels)
    assert model.backbone.op_names() == arch_ops(arch)
    Trainer(cfg).fit()
    assert (tmp_path / "retrain" / "last.pt").is_file()


def _flat(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_resume_matches_an_uninterrupted_search(word_folder, tmp_path):
    from strkit.engine.searcher import Searcher

    # one latency table for both runs (a re-measured one would differ, and so would the α updates)
    lut = tmp_path / "lut.json"
    assert main(["lut", str(TINY), "--out", str(lut)]) == 0
    extra = ("search.validate_samples=0", f"search.lut={lut}")
    full = tmp_path / "full"
    Searcher(load_config(TINY, overrides(word_folder, full, 6, *extra))).fit()
    part = tmp_path / "part"
    Searcher(load_config(TINY, overrides(word_folder, part, 3, *extra))).fit()
    spent = load_checkpoint(part / "last.pt")["train_state"]["elapsed_s"]
    resumed = Searcher(load_config(TINY, overrides(word_folder, part, 6, *extra)), resume=part / "last.pt")
    assert resumed.step == 3 and resumed.arch_steps == 1
    assert spent > 0 and resumed.elapsed_before == spent  # the budget counts the first part's time
    resumed.fit()
    a, b = _flat(full / "last.pt"), _flat(part / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # weights, α and BN statistics all identical
    sa = load_checkpoint(full / "last.pt")["extra"]["search_state"]
    sb = load_checkpoint(part / "last.pt")["extra"]["search_state"]
    assert sa["history"] == sb["history"] and sa["arch_batches"] == sb["arch_batches"]


def test_resume_refuses_a_different_search_config(word_folder, tmp_path):
    from strkit.engine.searcher import Searcher

    out = tmp_path / "run"
    Searcher(load_config(TINY, overrides(word_folder, out, 2, "search.validate_samples=0"))).fit()
    changed = load_config(TINY, overrides(word_folder, out, 4, "search.reg_lambda=0.9"))
    with pytest.raises(ValueError, match="'search' config differs"):
        Searcher(changed, resume=out / "last.pt")


@pytest.mark.parametrize("extra", [
    ["search.method=full", "search.constraint=params", "search.target_mparams=0.004"],
    ["search.paths=2", "search.constraint=flops", "search.target_mflops=2", "search.loss=mul_log"],
    ["search.constraint=none", "train.precision=bf16"],
])
def test_search_variants(word_folder, tmp_path, extra):
    from strkit.engine.searcher import Searcher

    out = tmp_path / "run"
    result = Searcher(load_config(TINY, overrides(word_folder, out, 3, *extra))).fit()
    assert (out / "arch.json").is_file() and "figures" in result
    assert not (out / "lut.json").exists()  # no latency constraint: nothing to measure


def test_search_needs_a_held_out_split(word_folder, tmp_path):
    from strkit.engine.searcher import Searcher

    cfg = load_config(TINY, overrides(word_folder, tmp_path, 2, "data.val_fraction=0", "search.constraint=none"))
    with pytest.raises(ValueError, match="held-out split"):
        Searcher(cfg).fit()


def test_search_refuses_the_geometry_loss(word_folder, tmp_path):
    from strkit.engine.searcher import Searcher

    cfg = load_config(TINY, overrides(word_folder, tmp_path, 2, "model.geometry_loss=1.0"))
    with pytest.raises(ValueError, match="geometry_loss"):
        Searcher(cfg)


def test_fixed_baseline_subcommand(tmp_path, capsys):
    from strkit.models.recognizer import build_model

    out = tmp_path / "fixed"
    space = load_config(TINY)
    op = space.model.backbone["normal_ops"][-1]
    assert main(["fixed", str(TINY), "--op", op, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train it: python tools/train.py" in printed
    # the costs of the baseline, to match it against a searched network (no latency without search.lut)
    costs = re.search(r"searched parts: ([0-9.]+) M parameters, ([0-9.]+) MFLOPs per image\n", printed)
    assert costs and float(costs[1]) > 0 and float(costs[2]) > 0 and "latency table" not in printed
    ops = arch_ops(load_arch(out / "arch.json"))
    kernel = op.split("_")[0]
    assert ops[1:] == [op] * (len(ops) - 1) and ops[0].startswith(kernel)  # first cell: same kernel
    cfg = load_config(out / "train.yaml")
    assert build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels).backbone.op_names() == ops
    assert cfg.search == {} and cfg.train.out_dir == str(out / "run")
    assert main(["fixed", str(TINY), "--op", "k9_e9", "--out", str(out)]) == 2
    assert "k9_e9" in capsys.readouterr().err


def test_search_needs_a_supernet(tmp_path):
    from strkit.engine.searcher import Searcher

    cfg = load_config(REPO / "configs" / "models" / "mbv2-ctc.yaml", ["search.target_ms=1"])
    with pytest.raises(ValueError, match="supernet"):
        Searcher(cfg)


def test_search_config_errors_are_named(capsys):
    with pytest.raises(ConfigError, match=r"search\.reg_lamda.*Did you mean 'reg_lambda'"):
        search_config({"reg_lamda": 0.1})
    with pytest.raises(ConfigError, match="target_ms"):
        search_config({"constraint": "latency"})
    with pytest.raises(ConfigError, match="search.method"):
        search_config({"method": "darts", "constraint": "none"})
    assert main(["run", str(TINY), "search.paths=3"]) == 2
    assert "search.paths" in capsys.readouterr().err


def test_lut_and_validate_lut_commands(tmp_path, capsys):
    lut = tmp_path / "lut.json"
    assert main(["lut", str(TINY), "--out", str(lut)]) == 0
    assert "sub-network latency" in capsys.readouterr().out
    data = json.loads(lut.read_text())
    assert data["format"] == "strkit-latency-lut" and data["threads"] == 1
    res = tmp_path / "val.json"
    assert main(["validate-lut", str(TINY), "--lut", str(lut), "-n", "2", "--json", str(res)]) == 0
    assert "MAE" in capsys.readouterr().out
    assert json.loads(res.read_text())["n"] == 2
    assert main(["validate-lut", str(TINY), "--lut", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def _ddp_worker(rank: int, world: int, store: str, data_dir: str, out_dir: str, result_dir: str) -> None:
    join_process_group(rank, world, store)
    torch.set_num_threads(1)
    from strkit.engine.searcher import Searcher

    cfg = load_config(TINY, overrides(Path(data_dir), Path(out_dir), 4, "search.validate_samples=0"))
    searcher = Searcher(cfg)
    searcher.fit()
    torch.save({"alpha": torch.cat([a.detach().flatten() for a in searcher.alphas]),
                "weights": torch.cat([p.detach().flatten() for p in searcher.weights])},
               Path(result_dir) / f"rank{rank}.pt")


def test_two_process_search_keeps_alpha_identical(word_folder, tmp_path):
    world = 2
    spawn_ranks(_ddp_worker, world, (str(word_folder), str(tmp_path / "run"), str(tmp_path)), tmp_path / "store")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(world))
    assert torch.equal(r0["alpha"], r1["alpha"]) and torch.equal(r0["weights"], r1["weights"])
    assert not torch.equal(r0["alpha"], torch.zeros_like(r0["alpha"]))  # α did move
    assert (tmp_path / "run" / "arch.json").is_file()
    shutil.rmtree(tmp_path / "run")
