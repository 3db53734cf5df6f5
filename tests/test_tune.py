"""Protocol search (strkit.engine.tuning, tools/tune.py): search spaces, the benchmark guard, a tiny study end to
end (pruning, resume from SQLite, report, fidelity), the trainer's validation observer and train --protocol."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import logging
import sys
from pathlib import Path

import pytest
import yaml

from strkit.config import load_config
from strkit.data.benchmarks import BenchmarkLeakError
from strkit.engine.tuning import protocol_space, study_report, trials

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tune" / "tiny.yaml"
MODEL = REPO / "configs" / "models" / "mbv2-ctc.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")
#: studies need Optuna (installed with the test extra: pip install -e '.[test]'); search-space checks do not
needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna is not installed")


def data_override(folder: Path) -> str:
    return f"data.train=[{{path: {folder}, kind: folder, name: words}}]"


def write_space(tmp_path: Path, space: dict, overrides: list[str], name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": str(MODEL), "overrides": overrides, "space": space}))
    return path


# -- search space -----------------------------------------------------------------------------------
def test_shipped_spaces_load(word_folder):
    space = protocol_space.load_space(REPO / "configs" / "tune" / "default_model.yaml")
    assert {"train.optimizer.lr", "data.augment", "curriculum_step"} <= {p.name for p in space.params}
    proto = space.protocol({"curriculum_step": 300, "data.train.IC15_train.ratio_schedule.0.1": 0.2})
    ic15 = next(s for s in proto["data"]["train"] if s["name"] == "IC15_train")
    assert ic15["ratio_schedule"] == [[300, 0.2]]  # a key inside a list: the protocol sets the whole list
    assert all(s["ratio_schedule"][0][0] == 300 for s in proto["data"]["train"])  # tied keys
    warm = protocol_space.load_space(REPO / "configs" / "tune" / "default_model_warm.yaml")
    assert "train.ema" in {p.name for p in warm.params} and "curriculum_step" not in {p.name for p in warm.params}
    # the proxy trials start from the warm checkpoint with the mix from the first step; a protocol does not
    assert "train.init_from=runs/tune/warm/last.pt" in warm.proxy
    proto = warm.protocol({"train.ema": 0.999})
    assert proto["train"]["ema"] == 0.999 and "init_from" not in proto["train"]
    tiny = protocol_space.load_space(TINY, [data_override(word_folder)])
    assert [p.name for p in tiny.params][-1] == "data.augment_options.m"


@pytest.mark.parametrize("spec, message", [
    ({"train.optimiser.lr": {"type": "float", "low": 0.1, "high": 1}}, "unknown config key 'train.optimiser.lr'"),
    ({"train.optimizer.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "bad range"),
    ({"train.optimizer.lr": {"type": "logfloat", "low": 0.0, "high": 0.01}}, "bad range"),
    ({"train.optimizer.lr": {"type": "normal", "low": 0.0, "high": 0.01}}, "bad type 'normal'"),
    ({"train.batch_size": {"type": "int", "low": 1.5, "high": 8}}, "'low' must be an integer"),
    ({"train.batch_size": {"type": "categorical", "choices": []}}, "non-empty list 'choices'"),
    ({"train.batch_size": {"type": "int", "low": 0, "high": 8}}, "train.batch_size"),  # the config's range check
    ({"train.steps": {"type": "int", "low": 1, "high": 8}}, "cannot be searched"),
    ({"data.train.nosuch.ratio": {"type": "float", "low": 0.1, "high": 1}}, "no list element named 'nosuch'"),
    ({"data.img_h.x": {"type": "float", "low": 0.1, "high": 1}}, "single value"),
    ({"train.seed": {"type": "int", "low": 0, "high": 3, "when": {"later": 1}}}, "not a parameter listed before"),
])
def test_space_errors(tmp_path, word_folder, spec, message):
    path = write_space(tmp_path, spec, [data_override(word_folder), "data.val_fraction=0.25"])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        protocol_space.load_space(path)
    assert "\n" not in str(info.value)


def test_space_error_is_one_line_from_the_cli(tmp_path, word_folder, capsys):
    from strkit.cli.tune import main

    path = write_space(tmp_path, {"train.optimiser.lr": {"type": "float", "low": 0.1, "high": 1}},
                       [data_override(word_folder), "data.val_fraction=0.25"])
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.optimiser.lr" in err[0]
    assert not (tmp_path / "out" / "study.db").exists()


# -- benchmark guard ---------------------------------------------------------------------------------
def test_benchmark_as_validation_is_refused_before_any_trial(tmp_path, word_folder, capsys):
    from strkit.cli.tune import main

    path = write_space(tmp_path, {"train.optimizer.lr": {"type": "logfloat", "low": 1e-4, "high": 1e-2}},
                       [data_override(word_folder), "data.val=[{path: IIIT5K_3000, kind: benchmark}]"])
    with pytest.raises(BenchmarkLeakError, match="validation source 'IIIT5K_3000'"):
        protocol_space.load_space(path)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--steps", "2", "--trials", "1"]) == 2
    assert "benchmark" in capsys.readouterr().err
    assert not (out / "study.db").exists() and not (out / "trials").exists()


def test_a_space_choice_that_points_at_a_benchmark_is_refused(tmp_path, word_folder):
    leak = tmp_path / "SVT_647"  # a folder named like a benchmark test set
    leak.mkdir()
    (leak / "labels.tsv").write_text("")
    choices = [[{"path": str(word_folder), "kind": "folder"}], [{"path": str(leak), "kind": "folder"}]]
    path = write_space(tmp_path, {"data.train": {"type": "categorical", "choices": choices}},
                       [data_override(word_folder), "data.val_fraction=0.25"])
    with pytest.raises(BenchmarkLeakError, match="space.data.train"):
        protocol_space.load_space(path)


def test_no_validation_data_is_refused(tmp_path, word_folder):
    path = write_space(tmp_path, {"train.optimizer.lr": {"type": "logfloat", "low": 1e-4, "high": 1e-2}},
                       [data_override(word_folder)])
    with pytest.raises(protocol_space.TuneError, match="needs validation data"):
        protocol_space.load_space(path)


# -- the trainer's observer --------------------------------------------------------------------------
def test_on_validation_observer_can_stop_training(tmp_path, word_folder):
    from strkit.engine.loop import StopTraining
    from strkit.engine.trainer import Trainer

    seen = []

    def observer(step, metrics):
        seen.append((step, metrics["val_accuracy"]))
        if step == 2:
            raise StopTraining("enough")

    cfg = protocol_space.build_config(MODEL, {}, [data_override(word_folder), "data.val_fraction=0.25",
                                                  "data.workers=0", "train.steps=6", "train.val_every=1",
                                                  "train.batch_size=4", "train.progress=false",
                                                  "train.tensorboard=false", f"train.out_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg, on_validation=observer)
    metrics = trainer.fit()
    assert [s for s, _ in seen] == [1, 2] and trainer.step == 2 and "val_accuracy" in metrics
    assert (tmp_path / "run" / "last.pt").is_file()


# -- a tiny study end to end ---------------------------------------------------------------------------
def _states(out: Path) -> list[str]:
    with (out / "trials.csv").open() as fh:
        return [r["state"] for r in csv.DictReader(fh)]


@needs_optuna
def test_tiny_study_resume_report_protocol_and_fidelity(tmp_path, word_folder, capsys, caplog):
    from strkit.cli.train import main as train_main
    from strkit.cli.tune import main

    out = tmp_path / "study"
    # data.workers=1: the fidelity runs of --jobs 2 below start DataLoader workers inside worker processes
    args = ["run", str(TINY), data_override(word_folder), "data.workers=1", "--out", str(out), "--steps", "3",
            "--pruner", "none", "--threads", "1"]
    assert main([*args, "--trials", "2"]) == 0
    assert _states(out) == ["COMPLETE", "COMPLETE"]
    # rerun asking for 3: the study continues from the SQLite file, one more trial
    assert main([*args, "--trials", "3"]) == 0
    assert _states(out) == ["COMPLETE"] * 3
    assert main([*args, "--trials", "3"]) == 0  # nothing left to do
    assert len(_states(out)) == 3
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0", "1", "2"]
    study = trials.load_study(trials.default_storage(out))
    assert study.trials[2].params != study.trials[0].params  # the continued sampler does not repeat trial 0
    for name in ("best.yaml", "trials.csv", "report.md", "history.png"):
        assert (out / name).is_file(), name
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Parameter importances" in (out / "report.md").read_text()

    # best.yaml round-trips through tools/train.py --protocol: the best trial's config minus the proxy/run settings
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    capsys.readouterr()
    assert train_main([str(MODEL), data_override(word_folder), "--protocol", str(out / "best.yaml"),
                       "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    trained = load_config(out / "trials" / str(best.number) / "config.yaml").to_dict()
    # equal but for the proxy settings (tiny.yaml's 'proxy') and those of the run (budget, folder, bar)
    for key in ("steps", "max_minutes", "out_dir", "progress", "val_every", "log_every", "save_every", "tensorboard"):
        trained["train"][key] = printed["train"][key]
    assert printed == trained
    assert printed["train"]["steps"] == load_config(MODEL).train.steps  # the proxy budget is not part of it
    assert printed["train"]["optimizer"]["lr"] == best.params["train.optimizer.lr"]
    # ... and runs as a config of its own through its _base_
    assert train_main([str(out / "best.yaml"), data_override(word_folder), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed

    # proxy fidelity: the chosen protocols retrained at twice the budget
    assert main(["fidelity", str(out), "--factor", "2", "--top", "2", "--random", "1"]) == 0
    table = capsys.readouterr().out
    assert "Spearman rank correlation" in table
    with (out / "fidelity.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["chosen"] for r in rows] == ["top", "top", "random"]
    assert load_config(out / "fidelity" / "x2" / rows[0]["trial"] / "config.yaml").train.steps == 6
    # the protocol that won at the longer budget, ready to run like best.yaml
    winner = max(rows, key=lambda r: float(r["long"]))["trial"]
    picked = (out / "fidelity_best.yaml").read_text()
    assert f"trial {winner} of study" in picked and "at 2x the proxy budget" in picked
    assert train_main([str(out / "fidelity_best.yaml"), data_override(word_folder), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["optimizer"]["lr"] == \
        study.trials[int(winner)].params["train.optimizer.lr"]

    # a run cut before it recorded its score continues from its last.pt (nothing retrained from scratch), and
    # --jobs 2 trains the runs of another budget in two worker processes
    run0 = out / "fidelity" / "x2" / rows[0]["trial"]
    (run0 / "fidelity.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="strkit"):
        assert main(["fidelity", str(out), "--factor", "2", "--top", "2", "--random", "1"]) == 0
    assert f"continuing {run0 / 'last.pt'}" in caplog.text
    with (out / "fidelity.csv").open() as fh:
        assert list(csv.DictReader(fh)) == rows
    assert (run0 / "fidelity.json").is_file()
    assert load_config(run0 / "config.yaml").train.steps == 6
    assert main(["fidelity", str(out), "--factor", "3", "--top", "2", "--random", "0", "--jobs", "2",
                 "--threads", "1"]) == 0
    assert sorted(p.name for p in (out / "fidelity" / "x3").iterdir()) == sorted(r["trial"] for r in rows[:2])
    assert all((out / "fidelity" / "x3" / r["trial"] / "fidelity.json").is_file() for r in rows[:2])


def test_pruned_trials_stop_early(tmp_path, word_folder):
    optuna = pytest.importorskip("optuna")
    job = trials.StudyJob(space=str(TINY), extra_overrides=(data_override(word_folder),), out=str(tmp_path),
                          storage=trials.default_storage(tmp_path), study_name="tiny", budget=trials.Budget(steps=5),
                          trials=2, threads=1)
    # accuracy is in percent: a threshold above 100 prunes every trial at its first validation (step 1)
    trials.run_worker(job, pruner=optuna.pruners.ThresholdPruner(lower=101.0))
    study = trials.load_study(job.storage, "tiny")
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert [t.user_attrs["steps"] for t in study.trials] == [1, 1]
    assert all(list(t.intermediate_values) == [1] for t in study.trials)
    files = study_report.write_report(study, tmp_path)
    assert "best.yaml" not in files and _states(tmp_path) == ["PRUNED", "PRUNED"]


@needs_optuna
def test_study_of_another_space_is_refused(tmp_path, word_folder):
    job = trials.StudyJob(space=str(TINY), extra_overrides=(data_override(word_folder),), out=str(tmp_path),
                          storage=trials.default_storage(tmp_path), study_name="s", budget=trials.Budget(steps=1),
                          trials=1)
    trials.create_study(job, protocol_space.load_space(TINY, job.extra_overrides))
    other = protocol_space.load_space(TINY, [*job.extra_overrides, "train.seed=3"])
    with pytest.raises(protocol_space.TuneError, match="another search space"):
        trials.create_study(job, other)
    with pytest.raises(protocol_space.TuneError, match="runs trials of 1 steps on subset 1, not 0.5 min"):
        trials.create_study(dataclasses.replace(job, budget=trials.Budget(minutes=0.5)),
                            protocol_space.load_space(TINY, job.extra_overrides))


# -- small parts ---------------------------------------------------------------------------------------------
def test_protocol_option_merges_over_the_config_and_under_overrides(tmp_path):
    protocol = tmp_path / "p.yaml"
    protocol.write_text("_base_: does/not/matter.yaml\ntrain: {optimizer: {lr: 0.005}, batch_size: 17}\n"
                        "data: {augment: strong}\n")
    cfg = load_config(MODEL, ["train.batch_size=5"], protocol=protocol)
    assert cfg.train.optimizer.lr == 0.005 and cfg.data.augment == "strong"
    assert cfg.train.batch_size == 5  # command-line overrides come last
    assert cfg.train.optimizer.weight_decay == load_config(MODEL).train.optimizer.weight_decay
    protocol.write_text("train: {optimiser: {lr: 0.005}}\n")
    with pytest.raises(ValueError, match=f"unknown config key 'train.optimiser' \\(set in {protocol}"):
        load_config(MODEL, protocol=protocol)


def test_failing_trials_stop_the_study():
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(direction="maximize")
    streak = trials.FailureStreak(limit=2)
    calls = []

    def objective(trial):
        calls.append(trial.number)
        if trial.number == 0:
            return 1.0
        raise RuntimeError("broken setup")

    study.optimize(objective, callbacks=[streak], catch=(RuntimeError,))  # no n_trials: only the streak stops it
    assert calls == [0, 1, 2] and streak.count == 2


def test_spearman():
    assert study_report.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert study_report.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert study_report.spearman([1, 2, 3, 4], [1, 1, 2, 2]) == pytest.approx(0.894427, abs=1e-6)  # ties: average ranks
    assert study_report.spearman([1.0], [2.0]) != study_report.spearman([1.0], [2.0])  # NaN


def test_train_subset_keeps_a_seeded_fraction():
    from strkit.engine.run_data import take_subset

    data = list(range(100))
    sub = take_subset(data, 0.3, seed=1)
    assert len(sub) == 30 and list(sub) == sorted(sub) and list(sub) == list(take_subset(data, 0.3, seed=1))


def test_missing_optuna_is_one_line(monkeypatch, tmp_path, capsys, word_folder):
    from strkit.cli.tune import main

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(protocol_space.TuneError, match=r"pip install 'strkit\[tune\]'"):
        protocol_space.import_optuna()
    assert main(["report", str(tmp_path)]) == 2
    assert main(["run", str(TINY), data_override(word_folder), "--out", str(tmp_path), "--steps", "1"]) == 2
    assert "pip install 'strkit[tune]'" in capsys.readouterr().err


def test_train_options_may_stand_between_the_overrides(tmp_path, capsys):
    """``tools/train.py CONFIG --protocol FILE key=value`` (the protocol comparison's command line): the
    overrides after an option are still overrides, and they win over the protocol."""
    from strkit.cli.train import main as train_main

    protocol = tmp_path / "protocol.yaml"
    protocol.write_text("train:\n  batch_size: 48\n  steps: 5\n", encoding="utf-8")
    for argv in ([str(MODEL), "--protocol", str(protocol), "train.steps=7", "--print-config"],
                 [str(MODEL), "train.steps=7", "--protocol", str(protocol), "--print-config"]):
        assert train_main(argv) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert (printed["train"]["batch_size"], printed["train"]["steps"]) == (48, 7)


def test_a_moved_study_finds_its_base_config_below_the_working_directory(monkeypatch):
    """A study file copied to another checkout or machine records a base config path that is gone there: the
    report and the fidelity check take the longest tail of it that exists below the working directory."""
    from types import SimpleNamespace

    from strkit.engine.tuning.protocol_space import TuneError

    monkeypatch.chdir(REPO)
    moved = SimpleNamespace(study_name="s", user_attrs={"base": "/gone/tree-0123/configs/models/mbv2-ctc.yaml"})
    assert study_report.study_base(moved) == REPO / "configs" / "models" / "mbv2-ctc.yaml"
    here = SimpleNamespace(study_name="s", user_attrs={"base": str(MODEL)})
    assert study_report.study_base(here) == MODEL
    lost = SimpleNamespace(study_name="s", user_attrs={"base": "/gone/configs/models/no-such-model.yaml"})
    with pytest.raises(TuneError, match="no-such-model.yaml does not exist"):
        study_report.study_base(lost)
