"""tools/jobs/carry.py: the long jobs' state carried through the repository from one machine to the next."""

from __future__ import annotations

import importlib.util
import json
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
        "search_pays/searched/eval/results.csv", "search_pays/searched.done",
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
