"""Trainer pieces: optimisers, schedules, AMP guard, non-finite loss guard, resume checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from strkit.config import OptimizerConfig, SchedulerConfig, load_config
from strkit.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from strkit.engine.runtime import autocast_context, rng_state, set_rng_state
from strkit.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["adamw", "adam", "adadelta", "sgd"])
def test_every_optimizer_steps(name):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, OptimizerConfig(name=name, lr=0.1))
    before = [p.clone() for p in model.parameters()]
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert set(OPTIMIZERS.names()) == {"adamw", "adam", "adadelta", "sgd"}


@pytest.mark.parametrize("name", ["adamw", "sgd", "adam"])
def test_lr_scale_gives_a_prefix_its_own_rate_through_the_schedule(name):
    from strkit.config import ConfigError

    model = torch.nn.ModuleDict({"rectifier": torch.nn.Linear(3, 4), "backbone": torch.nn.Linear(4, 2)})
    opt = build_optimizer(model, OptimizerConfig(name=name, lr=0.1, weight_decay=0.01), {"rectifier.": 0.25})
    sched = build_scheduler(opt, SchedulerConfig(name="onecycle", warmup_fraction=0.2), 10)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    rect, back = model["rectifier"], model["backbone"]
    for _ in range(4):
        opt.step()
        sched.step()
        assert by_param[id(rect.weight)]["lr"] == pytest.approx(0.25 * by_param[id(back.weight)]["lr"])
    assert by_param[id(rect.bias)]["lr"] == pytest.approx(by_param[id(rect.weight)]["lr"])
    if name in ("adamw", "sgd"):  # biases keep no weight decay in a scaled group too
        assert by_param[id(rect.bias)]["weight_decay"] == 0.0 and by_param[id(rect.weight)]["weight_decay"] == 0.01
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    with pytest.raises(ConfigError, match="train.lr_scale: no parameter name starts with 'rectifer.'"):
        build_optimizer(model, OptimizerConfig(name=name), {"rectifer.": 0.1})
    with pytest.raises(ConfigError, match=r"train.lr_scale.rectifier.: the factor must be a number >= 0"):
        build_optimizer(model, OptimizerConfig(name=name), {"rectifier.": -1})


@pytest.mark.parametrize("name", ["onecycle", "cosine", "constant"])
def test_schedules_warm_up_and_stay_positive(name):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, SchedulerConfig(name=name, warmup_fraction=0.1, min_lr_ratio=0.01), 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert all(0 < lr <= 1.0 + 1e-9 for lr in lrs)
    assert max(lrs) == pytest.approx(1.0, abs=0.05)
    if name != "constant":
        assert lrs[-1] < 0.05  # annealed
        assert lrs[0] < lrs[10]  # warm-up
    assert "onecycle" in SCHEDULES.names()


def test_autocast_guard():
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        autocast_context(torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match="use one of"):
        autocast_context(torch.device("cpu"), "int4")
    with autocast_context(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    set_rng_state(state)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def _tiny_cfg(data_dir: Path, out: Path, *extra: str):
    return load_config(REPO / "configs" / "models" / "mbv2-ctc.yaml", [
        f"data.train=[{{path: {data_dir}, kind: folder}}]", "data.workers=0", "train.steps=3",
        "train.batch_size=4", "train.progress=false", "train.tensorboard=false", f"train.out_dir={out}",
        "train.val_every=100", "train.save_every=100", *extra])


def test_non_finite_loss_skips_the_step(word_folder, tmp_path):
    trainer = Trainer(_tiny_cfg(word_folder, tmp_path / "run"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    images = torch.full((2, 1, 32, 100), float("nan"))
    assert trainer.train_step(images, ["cat", "dog"]) is None
    assert trainer.skipped_steps == 1
    for k, v in trainer.model.state_dict().items():
        if v.dtype.is_floating_point and "running" not in k:
            assert torch.equal(v, before[k]), k
    assert trainer.train_step(torch.zeros(2, 1, 32, 100), ["cat", "dog"]) is not None


def test_resume_refuses_a_different_model_or_a_best_checkpoint(word_folder, tmp_path):
    out = tmp_path / "run"
    Trainer(_tiny_cfg(word_folder, out, "data.val_fraction=0.2", "train.val_every=3")).fit()
    with pytest.raises(ValueError, match="'model' config differs"):
        Trainer(_tiny_cfg(word_folder, out, "data.val_fraction=0.2", "model.max_length=10"),
                resume=out / "last.pt")
    with pytest.raises(ValueError, match="'data' config differs"):
        Trainer(_tiny_cfg(word_folder, out, "data.val_fraction=0.3", "train.val_every=3"),
                resume=out / "last.pt")
    # data.workers does not change what the run computes: a piece may set it for its machine
    assert Trainer(_tiny_cfg(word_folder, out, "data.val_fraction=0.2", "train.val_every=3", "data.workers=3"),
                   resume=out / "last.pt").step > 0
    with pytest.raises(ValueError, match="no training state"):
        Trainer(_tiny_cfg(word_folder, out, "data.val_fraction=0.2", "train.val_every=3"),
                resume=out / "best.pt")


def test_best_checkpoint_is_the_most_accurate_with_1_ned_breaking_ties(word_folder, tmp_path, monkeypatch):
    """best.pt holds the validation with the highest word accuracy; among equal accuracies the highest 1-NED;
    an exact tie keeps the earlier one; and the best so far survives a resume."""
    from strkit.checkpoint import load_checkpoint

    out = tmp_path / "run"
    tiny = ["data.val_fraction=0.25", "train.val_every=1", "model.backbone.width_mult=0.25",
            "model.sequence.hidden_size=16"]
    # step:                1         2         3         4         5         6
    scripted = iter([(50, 90), (60, 70), (60, 80), (60, 75), (55, 99), (60, 80),
                     (59, 100), (60, 79)])  # 7, 8: after the resume, neither beats step 3

    def validate():
        acc, ned = next(scripted)
        return {"val_accuracy": float(acc), "val_ned": float(ned), "val_confidence": 0.5, "val_count": 24.0}

    trainer = Trainer(_tiny_cfg(word_folder, out, "train.steps=6", *tiny))
    monkeypatch.setattr(trainer, "validate", validate)
    trainer.fit()
    best = load_checkpoint(out / "best.pt")
    assert best["step"] == 3 and (best["metrics"]["val_accuracy"], best["metrics"]["val_ned"]) == (60, 80)
    assert trainer.best["step"] == 3
    resumed = Trainer(_tiny_cfg(word_folder, out, "train.steps=8", *tiny), resume=out / "last.pt")
    monkeypatch.setattr(resumed, "validate", validate)
    resumed.fit()
    assert load_checkpoint(out / "best.pt")["step"] == 3 and resumed.best["step"] == 3


def test_benchmark_as_training_source_is_refused(tmp_path, shared_benchmarks):
    from strkit.data.benchmarks import BenchmarkLeakError

    cfg = _tiny_cfg(shared_benchmarks / "SVT_647", tmp_path / "run")
    with pytest.raises(BenchmarkLeakError):
        Trainer(cfg).fit()


def test_generated_benchmark_as_training_source_is_refused(tmp_path, tiny_benchmarks):
    """The leak guard without ../shared/benchmarks: a set under the benchmark root, by name and by place."""
    from conftest import TINY_BENCHMARK

    from strkit.data.benchmarks import BenchmarkLeakError

    cfg = _tiny_cfg(tiny_benchmarks / TINY_BENCHMARK, tmp_path / "run", f"data.benchmark_root={tiny_benchmarks}")
    with pytest.raises(BenchmarkLeakError, match=TINY_BENCHMARK):
        Trainer(cfg).fit()


def test_time_budget_stops_and_counts_across_resume(word_folder, tmp_path):
    out = tmp_path / "run"
    cfg = _tiny_cfg(word_folder, out, "train.steps=50", "train.max_minutes=0.0000001")
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.step == 1  # the budget was spent after the first step
    from strkit.checkpoint import load_checkpoint

    spent = load_checkpoint(out / "last.pt")["train_state"]["elapsed_s"]
    assert spent > 0
    resumed = Trainer(cfg, resume=out / "last.pt")
    assert resumed.elapsed_before == spent
    resumed.fit()
    assert resumed.step == 2  # already over budget: one more step, then stop


def test_init_from_copies_selected_weights(word_folder, tmp_path):
    first = Trainer(_tiny_cfg(word_folder, tmp_path / "a"))
    first.fit()
    src = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = Trainer(_tiny_cfg(word_folder, tmp_path / "b", f"train.init_from={tmp_path / 'a' / 'last.pt'}",
                               "train.init_prefixes=[decoder.]", "train.seed=5"))
    got = second.model.state_dict()
    assert all(torch.equal(got[k], src[k]) for k in src if k.startswith("decoder."))
    assert any(not torch.equal(got[k], src[k]) for k in src if k.startswith("backbone.") and "weight" in k)
    with pytest.raises(ValueError, match="no weight starts with"):
        Trainer(_tiny_cfg(word_folder, tmp_path / "c", f"train.init_from={tmp_path / 'a' / 'last.pt'}",
                          "train.init_prefixes=[nothing.]"))


def test_set_schedule_length_retargets_the_annealing():
    from strkit.engine.optim import set_schedule_length

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = SchedulerConfig(name="onecycle", warmup_fraction=0.1, min_lr_ratio=0.01)
    sched = build_scheduler(opt, cfg, 1000)
    for _ in range(40):
        opt.step()
        sched.step()
    set_schedule_length(sched, cfg, 100)  # the budget allows 100 steps, not 1000
    assert sched.get_last_lr()[0] == pytest.approx(SCHEDULES.get("onecycle")(100, cfg)(40))
    for _ in range(60):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.01)  # fully annealed at the new end


def test_schedule_is_fitted_to_the_time_budget(word_folder, tmp_path):
    cfg = _tiny_cfg(word_folder, tmp_path / "run", "train.steps=1000", "train.max_minutes=1",
                    "train.log_every=1")
    trainer = Trainer(cfg)
    trainer.step = 10
    trainer._fit_schedule_to_budget(steps_done=10, seconds=6.0)  # 1.67 steps/s, ~60 s left -> ~108 steps
    assert 95 < trainer.schedule_steps < 110
    expected = SCHEDULES.get("onecycle")(trainer.schedule_steps, cfg.train.scheduler)(trainer.scheduler.last_epoch)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(cfg.train.optimizer.lr * expected)
    trainer._fit_schedule_to_budget(steps_done=10, seconds=1e-6)  # very fast: capped at train.steps
    assert trainer.schedule_steps == 1000
    # a run stops when the fitted schedule ends, and its length survives a resume
    out = tmp_path / "run2"
    cfg2 = _tiny_cfg(word_folder, out, "train.steps=50", "train.max_minutes=60", "train.log_every=100")
    trainer = Trainer(cfg2)
    trainer.schedule_steps = 3
    trainer.fit()
    assert trainer.step == 3
    from strkit.checkpoint import load_checkpoint

    assert load_checkpoint(out / "last.pt")["train_state"]["schedule_steps"] == 3
    assert Trainer(cfg2, resume=out / "last.pt").schedule_steps == 3


def test_ratio_schedule_switches_sources_at_the_step(tmp_path):
    """``data.train[i].ratio_schedule`` is a curriculum: only 'easy' words until step 2, then both."""
    from conftest import write_folder_dataset

    from strkit.charset import Charset
    from strkit.config import ConfigError
    from strkit.engine.distributed import DistInfo
    from strkit.engine.run_data import build_run_data

    easy = write_folder_dataset(tmp_path / "easy", 8, words=["easy"])
    hard = write_folder_dataset(tmp_path / "hard", 8, words=["hard"])
    sources = (f"data.train=[{{path: {easy}, kind: folder, ratio: 1.0, ratio_schedule: [[2, 0.5]]}}, "
               f"{{path: {hard}, kind: folder, ratio: 0.0, ratio_schedule: [[2, 0.5]]}}]")
    cfg = load_config(REPO / "configs/models/crnn.yaml", [sources, "data.workers=0", "train.batch_size=4"])
    run = build_run_data(cfg, Charset.from_spec(cfg.model.charset), DistInfo())
    labels = [batch[1] for _, batch in zip(range(4), run.train, strict=False)]
    assert labels[:2] == [["easy"] * 4] * 2
    assert [sorted(b) for b in labels[2:]] == [["easy", "easy", "hard", "hard"]] * 2
    resumed = build_run_data(cfg, Charset.from_spec(cfg.model.charset), DistInfo(), start_step=3)
    assert sorted(next(iter(resumed.train))[1]) == ["easy", "easy", "hard", "hard"]
    bad = sources.replace("[[2, 0.5]]}, ", "[[2, 0.0]]}, ").replace("ratio: 0.0, ratio_schedule: [[2, 0.5]]",
                                                                  "ratio: 0.0")
    with pytest.raises(ConfigError, match=r"data.train ratios / ratio_schedule: .*from step 2: all ratios are zero"):
        build_run_data(load_config(REPO / "configs/models/crnn.yaml", [bad, "data.workers=0"]),
                       Charset.from_spec("36_lowercase"), DistInfo())


def test_freeze_keeps_a_stage_fixed_until_its_step(word_folder, tmp_path):
    from strkit.config import ConfigError

    trainer = Trainer(_tiny_cfg(word_folder, tmp_path / "run", "model.rectifier={name: tps, num_fiducial: 6}",
                                "train.freeze={rectifier.: 2}", "train.steps=4"))
    def snapshot(prefix):
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n.startswith(prefix)}

    images = torch.rand(2, 1, 32, 100) * 2 - 1
    rect0, back0 = snapshot("rectifier."), snapshot("backbone.")
    for step in range(2):
        trainer.step = step
        trainer.train_step(images, ["cat", "dog"])
    assert all(torch.equal(p, rect0[n]) for n, p in snapshot("rectifier.").items())  # no update, no decay
    assert any(not torch.equal(p, back0[n]) for n, p in snapshot("backbone.").items())
    trainer.step = 2
    trainer.train_step(images, ["cat", "dog"])
    assert any(not torch.equal(p, rect0[n]) for n, p in snapshot("rectifier.").items())
    with pytest.raises(ConfigError, match=r"train.freeze: no parameter name starts with 'rectifer.'.*'rectifier.'"):
        Trainer(_tiny_cfg(word_folder, tmp_path / "b", "model.rectifier={name: tps, num_fiducial: 6}",
                          "train.freeze={rectifer.: 2}"))
    with pytest.raises(ConfigError, match="train.freeze.backbone.: .*integer >= 0"):
        Trainer(_tiny_cfg(word_folder, tmp_path / "c", "train.freeze={backbone.: -1}"))
