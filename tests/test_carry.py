"""tools/jobs/carry.py: the long jobs' state carried through the repository from one machine to the next."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "jobs" / "carry.py"


@pytest.fixture(scope="module")
def carry():
    spec = importlib.util.spec_from_file_location("carry", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_runs(root: Path) -> Path:
    """A STATE/runs with a running campaign (one scored, one unscored snapshot, a temporary) and a
    finished row."""
    train = root / "campaign_v2" / "train"
    (train / "snapshots").mkdir(parents=True)
    (train / "last.pt").write_bytes(b"L" * 100)
    (train / "best.pt").write_bytes(b"B" * 50)
    (train / "metrics.csv").write_text("step,key,value\n100,loss,2.0\n2000,val_accuracy,30.0\n")
    (train / "snapshots" / "step_10000.pt").write_bytes(b"S1")
    (train / "snapshots" / "step_20000.pt").write_bytes(b"S2")
    (train / "curve.json").write_text(json.dumps({"step_10000.pt@36:IIIT5K_3000": {"step": 10000.0}}))
    (train / ".last.pt.tmp123").write_bytes(b"half")
    row = root / "search_pays" / "searched"
    (row / "eval").mkdir(parents=True)
    (row / "last.pt").write_bytes(b"R" * 100)
    (row / "best.pt").write_bytes(b"b")
    (row / "metrics.csv").write_text("step,key,value\n16000,val_accuracy,40.0\n")
    (row / "eval" / "results.csv").write_text("x")
    (root / "search_pays" / "searched.done").touch()
    bundle = root / "campaign_v2" / "bundle_50k"
    (bundle / "export_default").mkdir(parents=True)
    (bundle / "export_default" / "model.onnx").write_bytes(b"O" * 100)  # exports are not carried ...
    (bundle / "speed.json").write_text("{}")  # ... their measurements are
    return root


def carried(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_save_selects_what_resumes_and_reports(carry, tmp_path):
    runs = make_runs(tmp_path / "runs")
    manifest = carry.save(runs, tmp_path / "carry")
    assert carried(tmp_path / "carry") == {
        "MANIFEST.json",
        "campaign_v2/train/last.pt", "campaign_v2/train/best.pt", "campaign_v2/train/metrics.csv",
        "campaign_v2/train/curve.json", "campaign_v2/train/snapshots/step_20000.pt",  # not scored yet
        "search_pays/searched/best.pt", "search_pays/searched/metrics.csv",  # finished: no last.pt
        "search_pays/searched/eval/results.csv", "search_pays/searched.done", "campaign_v2/bundle_50k/speed.json",
    }
    assert manifest["campaign_v2/train"]["step"] == 2000 and not manifest["campaign_v2/train"]["finished"]
    assert manifest["search_pays/searched"]["finished"]
    assert json.loads((tmp_path / "carry" / "MANIFEST.json").read_text()) == json.loads(json.dumps(manifest))


def test_save_mirrors_a_snapshot_scored_since(carry, tmp_path):
    runs = make_runs(tmp_path / "runs")
    carry.save(runs, tmp_path / "carry")
    cache = runs / "campaign_v2" / "train" / "curve.json"
    cache.write_text(json.dumps({"step_10000.pt@36:X": {}, "step_20000.pt@36:X": {}}))
    (runs / "campaign_v2" / "train" / "last.pt").write_bytes(b"M" * 100)  # same size, new content
    carry.save(runs, tmp_path / "carry")
    files = carried(tmp_path / "carry")
    assert "campaign_v2/train/snapshots/step_20000.pt" not in files
    assert not (tmp_path / "carry" / "campaign_v2" / "train" / "snapshots").exists()
    assert (tmp_path / "carry" / "campaign_v2" / "train" / "last.pt").read_bytes() == b"M" * 100


def test_save_keeps_and_restore_skips_the_job_list(carry, tmp_path):
    runs = make_runs(tmp_path / "runs")
    (tmp_path / "carry").mkdir()
    (tmp_path / "carry" / "jobs.txt").write_text("job 0 abc tools/jobs/campaign_v2.sh\n")
    carry.save(runs, tmp_path / "carry")
    carry.save(runs, tmp_path / "carry")
    assert (tmp_path / "carry" / "jobs.txt").read_text().startswith("job 0")
    carry.restore(tmp_path / "carry", tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "jobs.txt").exists() and not (tmp_path / "fresh" / "MANIFEST.json").exists()


def test_restore_fills_a_new_machine_and_never_overwrites(carry, tmp_path):
    runs = make_runs(tmp_path / "runs")
    carry.save(runs, tmp_path / "carry")
    fresh = tmp_path / "new_machine" / "runs"
    copied = carry.restore(tmp_path / "carry", fresh)
    assert {p.as_posix() for p in copied} == carried(tmp_path / "carry") - {"MANIFEST.json"}
    assert (fresh / "campaign_v2" / "train" / "last.pt").read_bytes() == b"L" * 100
    (fresh / "campaign_v2" / "train" / "last.pt").write_bytes(b"newer")
    assert carry.restore(tmp_path / "carry", fresh) == []
    assert (fresh / "campaign_v2" / "train" / "last.pt").read_bytes() == b"newer"


def test_cli_errors_are_one_line_and_exit_2(carry, tmp_path, capsys):
    assert carry.main(["save", str(tmp_path / "missing"), str(tmp_path / "carry")]) == 2
    assert carry.main(["restore", str(tmp_path / "missing"), str(tmp_path / "runs")]) == 2
    assert carry.main(["status", str(tmp_path / "missing")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)


def test_cli_save_then_status(carry, tmp_path, capsys):
    runs = make_runs(tmp_path / "runs")
    assert carry.main(["save", str(runs), str(tmp_path / "carry")]) == 0
    assert carry.main(["status", str(tmp_path / "carry")]) == 0
    out = capsys.readouterr().out
    assert "campaign_v2/train: step 2000," in out and "search_pays/searched: step 16000 (finished)" in out


RESTART = SCRIPT.with_name("restart.sh")


def restart(tmp_path: Path, jobs: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "STATE": str(tmp_path / "jobs" / "state"), "DRY_RUN": "1",
           "JOBS": str(tmp_path / "jobs.txt")}
    if jobs is not None:
        (tmp_path / "jobs.txt").write_text(jobs)
    return subprocess.run(["bash", str(RESTART)], capture_output=True, text=True, env=env)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None, reason="no bash or git")
def test_restart_renders_first_then_one_chain_per_core_in_order(tmp_path):
    result = restart(tmp_path, "# a comment\nrender clean 40 7 synth_clean_40k  # trailing comment\n"
                               "job 0 aaaaaaaaaaaa11 tools/jobs/campaign_v2.sh\n"
                               "job 1 bbbbbbbbbbbb22 tools/jobs/search_pays.sh\n"
                               "job 1 cccccccccccc33 ROWS=tps12k_s0 tools/jobs/lever_table.sh\n")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("would run:")]
    state = tmp_path / "jobs" / "state"
    assert lines[0] == "would render: clean 40 seed 7 -> synth_clean_40k"
    assert lines[1] == f"core 0: cd '{tmp_path}/jobs/tree-aaaaaaaaaa' && env STATE='{state}' CORE=0 " \
                       "tools/jobs/campaign_v2.sh; "
    assert lines[2] == (f"core 1: cd '{tmp_path}/jobs/tree-bbbbbbbbbb' && env STATE='{state}' CORE=1 "
                        f"tools/jobs/search_pays.sh; cd '{tmp_path}/jobs/tree-cccccccccc' && env STATE='{state}' "
                        "CORE=1 ROWS=tps12k_s0 tools/jobs/lever_table.sh; ")
    assert not state.exists()  # a dry run makes nothing


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("jobs", [None, "render clean 40 7 synth_clean_40k\n"], ids=["no file", "no job"])
def test_restart_without_jobs_is_one_line_and_exit_2(tmp_path, jobs):
    result = restart(tmp_path, jobs)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("restart: ")


def test_the_committed_job_list_names_real_scripts_and_commits():
    """A typo in carry/jobs.txt would only show when the next session restarts its jobs, and cost it."""
    repo = SCRIPT.parents[2]
    lines = [line.split("#")[0].split() for line in (repo / "carry" / "jobs.txt").read_text().splitlines()]
    jobs = [words for words in lines if words and words[0] == "job"]
    renders = [words for words in lines if words and words[0] == "render"]
    assert jobs and all(len(words) == 5 and words[3].isdigit() for words in renders)
    for _, core, commit, *rest in jobs:
        assert core.isdigit() and (repo / rest[-1]).is_file() and rest[-1].startswith("tools/jobs/")
        assert all("=" in word for word in rest[:-1])
        if shutil.which("git") and (repo / ".git").exists():
            found = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}:{rest[-1]}"],
                                   capture_output=True)
            assert found.returncode == 0, f"carry/jobs.txt: {rest[-1]} of commit {commit} is not in this repository"


def test_manifest_gives_the_step_a_resume_continues_from(carry, tmp_path):
    import torch

    runs = make_runs(tmp_path / "runs")
    torch.save({"step": 1500, "state_dict": {}}, runs / "campaign_v2" / "train" / "last.pt")
    manifest = carry.save(runs, tmp_path / "carry")
    assert manifest["campaign_v2/train"]["step"] == 1500  # metrics.csv logged up to 2000: past last.pt


def test_last_pt_travels_in_16_bits_and_comes_back_in_float32(carry, tmp_path):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).pow(2).mean().backward()
    optimizer.step()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    payload = {"step": 1500, "state_dict": weights,
               "train_state": {"optimizer": optimizer.state_dict(), "ema": {"w": weights["0.weight"] * 0.5}}}
    runs = make_runs(tmp_path / "runs")
    torch.save(payload, runs / "campaign_v2" / "train" / "last.pt")
    carry.save(runs, tmp_path / "carry")

    carried_payload = torch.load(tmp_path / "carry" / "campaign_v2" / "train" / "last.pt", weights_only=False)
    assert carried_payload["state_dict"]["0.weight"].dtype == torch.float16
    adam = carried_payload["train_state"]["optimizer"]["state"][0]
    assert adam["exp_avg_sq"].dtype == torch.bfloat16 and adam["step"].dtype == torch.float32  # scalar kept
    assert carried_payload["state_dict"]["1.num_batches_tracked"].dtype == torch.int64
    huge, _ = carry.narrow({"running_var": torch.full((3,), 1e6)})
    assert huge["running_var"].dtype == torch.bfloat16 and torch.isfinite(huge["running_var"].float()).all()

    carry.restore(tmp_path / "carry", tmp_path / "fresh")
    back = torch.load(tmp_path / "fresh" / "campaign_v2" / "train" / "last.pt", weights_only=False)
    assert carry.NARROWED not in back and back["step"] == 1500
    for key, value in weights.items():
        assert back["state_dict"][key].dtype == value.dtype
        torch.testing.assert_close(back["state_dict"][key], value, rtol=1e-3, atol=1e-4)
    original = optimizer.state_dict()["state"][0]
    torch.testing.assert_close(back["train_state"]["optimizer"]["state"][0]["exp_avg_sq"], original["exp_avg_sq"],
                               rtol=1e-2, atol=0)
    assert back["train_state"]["optimizer"]["state"][0]["step"] == original["step"]
    torch.testing.assert_close(back["train_state"]["ema"]["w"], payload["train_state"]["ema"]["w"],
                               rtol=1e-3, atol=1e-4)
