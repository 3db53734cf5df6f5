"""End-to-end: train a few steps on generated data, checkpoint, resume exactly, evaluate, recognise."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from strkit.checkpoint import load_checkpoint
from strkit.config import load_config

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def tiny_overrides(data_dir: Path, out_dir: Path, steps: int = 12) -> list[str]:
    return [
        f"data.train=[{{path: {data_dir}, kind: folder, name: words}}]",
        "data.val_fraction=0.25", "data.workers=0", "data.augment=none",
        f"train.steps={steps}", "train.batch_size=8", "train.val_every=6", "train.save_every=3",
        "train.log_every=3", "train.progress=false", "train.tensorboard=false", "train.threads=1",
        f"train.out_dir={out_dir}", "train.optimizer.lr=0.002",
    ]


def small_model_config() -> Path:
    return REPO / "configs" / "models" / "mbv2-ctc.yaml"


def read_losses(out_dir: Path) -> list[float]:
    with (out_dir / "metrics.csv").open() as fh:
        return [float(r["value"]) for r in csv.DictReader(fh) if r["key"] == "loss"]


def test_train_checkpoint_and_recognise(word_folder, tmp_path):
    from strkit.api import Recognizer
    from strkit.engine.trainer import Trainer

    out = tmp_path / "run"
    cfg = load_config(small_model_config(), tiny_overrides(word_folder, out, steps=30))
    metrics = Trainer(cfg).fit()
    assert {"val_accuracy", "val_ned", "val_confidence"} <= set(metrics)
    assert metrics["val_count"] == 24
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.csv"):
        assert (out / name).is_file(), name
    losses = read_losses(out)
    assert losses[-1] < losses[0], losses  # it learns something
    payload = load_checkpoint(out / "last.pt")
    assert payload["step"] == 30 and payload["train_state"] is not None
    assert load_checkpoint(out / "best.pt")["train_state"] is None
    # the saved config round-trips
    assert load_config(out / "config.yaml") == cfg

    rec = Recognizer.from_checkpoint(out / "best.pt")
    images = sorted((word_folder / "images").glob("*.png"))[:3]
    results = rec.recognize([str(p) for p in images])
    assert len(results) == 3
    for r in results:
        assert r.ok and 0.0 <= r.confidence <= 1.0 and len(r.char_probs) == len(r.text)


# tools/train.py in a fresh process that, when it is about to run step PAUSE_AT, writes MARKER and waits
# (for stdin, which the test never closes): the test kills it at a known point, between checkpoints.
_PAUSING_TRAIN = """
import sys
from pathlib import Path

from strkit.cli.train import main
from strkit.engine.trainer import Trainer

pause_at, marker = int(sys.argv[1]), Path(sys.argv[2])
train_step = Trainer.train_step


def pausing_train_step(self, *args, **kwargs):
    if self.step == pause_at:
        marker.write_text(str(self.step))
        sys.stdin.read()
    return train_step(self, *args, **kwargs)


Trainer.train_step = pausing_train_step
raise SystemExit(main(sys.argv[3:]))
"""


def _run_paused_in_subprocess(pause_at: int, marker: Path, args: list[str],
                              new_group: bool = False) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", _PAUSING_TRAIN, str(pause_at), str(marker), *args], cwd=REPO,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=new_group)


def _wait_for_pause(proc: subprocess.Popen, marker: Path) -> None:
    """Until the subprocess of :func:`_run_paused_in_subprocess` pauses (its marker exists)."""
    deadline = time.monotonic() + 300  # a hang guard only: the test waits for the marker, not for time
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"training subprocess ended early:\n{proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the training subprocess did not pause within 300 s ({marker})")
        time.sleep(0.05)


def test_resume_after_sigkill_matches_uninterrupted_run(word_folder, tmp_path):
    """A run killed with SIGKILL between two checkpoints and resumed from last.pt ends with the same weights."""
    from strkit.engine.trainer import Trainer

    total, stop_at = 1000, 12  # schedule length; both runs stop their loop at `stop_at`
    pause_at = 7  # last.pt is written every 3 steps: the kill loses step 6's successor, resume starts at 6
    killed_dir, ref_dir, marker = tmp_path / "killed", tmp_path / "ref", tmp_path / "paused"
    args = [*tiny_overrides(word_folder, killed_dir), f"train.steps={total}"]
    proc = _run_paused_in_subprocess(pause_at, marker, [str(small_model_config()), *args])
    try:
        _wait_for_pause(proc, marker)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(killed_dir / "last.pt")["step"] == 6

    resumed = Trainer(load_config(small_model_config(), args), resume=killed_dir / "last.pt")
    assert resumed.step == 6
    resumed.cfg.train.steps = stop_at  # stop the loop early; the LR schedule keeps its 1000-step shape
    resumed.fit()

    ref = Trainer(load_config(small_model_config(),
                              [*tiny_overrides(word_folder, ref_dir), f"train.steps={total}"]))
    ref.cfg.train.steps = stop_at
    ref.fit()
    ref_state, res_state = ref.model.state_dict(), resumed.model.state_dict()
    for k, v in ref_state.items():
        assert torch.equal(v, res_state[k]), f"{k} differs after resume"


def test_sigterm_saves_the_step_and_exits_143_then_resume_is_exact(word_folder, tmp_path):
    """SIGTERM during a step: the run finishes that step, saves last.pt at it (between two save_every
    checkpoints: nothing lost), says how to continue on stderr and exits 128 + 15; resumed from there it
    ends with the weights of the run that was never stopped."""
    from strkit.engine.trainer import Trainer

    total, stop_at, pause_at = 1000, 12, 7
    stopped_dir, ref_dir, marker = tmp_path / "stopped", tmp_path / "ref", tmp_path / "paused"
    args = [*tiny_overrides(word_folder, stopped_dir), f"train.steps={total}"]
    proc = _run_paused_in_subprocess(pause_at, marker, [str(small_model_config()), *args])
    try:
        _wait_for_pause(proc, marker)
        proc.send_signal(signal.SIGTERM)  # while step 7 runs (paused inside it) ...
        time.sleep(0.5)
        out, _ = proc.communicate(timeout=300)  # ... which then ends (stdin closed)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode()
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "stopped: stopped by SIGTERM at step 8" in text and "--resume" in text
    assert load_checkpoint(stopped_dir / "last.pt")["step"] == 8  # not the step-6 checkpoint
    assert not (stopped_dir / "best.pt").exists() or load_checkpoint(stopped_dir / "best.pt")["step"] == 6

    resumed = Trainer(load_config(small_model_config(), args), resume=stopped_dir / "last.pt")
    assert resumed.step == 8
    resumed.cfg.train.steps = stop_at
    resumed.fit()
    ref = Trainer(load_config(small_model_config(), [*tiny_overrides(word_folder, ref_dir), f"train.steps={total}"]))
    ref.cfg.train.steps = stop_at
    ref.fit()
    res_state = resumed.model.state_dict()
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res_state[k]), f"{k} differs after the stop and resume"


def test_sigterm_to_the_process_group_with_loader_workers_still_saves_the_step(word_folder, tmp_path):
    """``timeout``, batch schedulers and Ctrl-C signal the whole process group, loader workers included: the
    workers ignore it, the main process finishes its step, saves last.pt at it and exits 128 + 15 (a worker
    that died first used to make the step fail before anything was saved)."""
    pause_at, out, marker = 7, tmp_path / "run", tmp_path / "paused"
    args = [*tiny_overrides(word_folder, out), "train.steps=1000", "data.workers=2"]
    proc = _run_paused_in_subprocess(pause_at, marker, [str(small_model_config()), *args], new_group=True)
    try:
        _wait_for_pause(proc, marker)
        os.killpg(proc.pid, signal.SIGTERM)  # the main process and both workers
        time.sleep(0.5)
        text = proc.communicate(timeout=300)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "stopped by SIGTERM at step 8" in text
    assert load_checkpoint(out / "last.pt")["step"] == 8


def test_resume_with_workers_and_augmentation_matches_uninterrupted_run(word_folder, tmp_path, monkeypatch):
    """Resume is exact with loader workers and random augmentation on (the shipped data configs' setting):
    a run resumed from the checkpoint it wrote at step 4 ends with the same weights at step 8 as the run
    that went straight through (each sample's augmentation is seeded from (seed, rank, step, position)),
    also when the resumed piece has another number of workers (1 instead of 2)."""
    import shutil

    from strkit.engine.trainer import Trainer

    total, cut, stop_at = 1000, 4, 8
    keep = tmp_path / "step4.pt"
    save = Trainer.save

    def save_and_keep_step4(self, name, metrics, full_state):
        path = save(self, name, metrics, full_state)
        if name == "last.pt" and self.step == cut:
            shutil.copy(path, keep)
        return path

    monkeypatch.setattr(Trainer, "save", save_and_keep_step4)

    def trainer(out: Path, resume: Path | None = None, workers: int = 2) -> Trainer:
        over = [*tiny_overrides(word_folder, out), f"train.steps={total}", f"data.workers={workers}",
                "data.augment=strong", "train.save_every=2", "train.val_every=1000", "data.val_fraction=0",
                "model.backbone.width_mult=0.25", "model.sequence.hidden_size=16"]
        t = Trainer(load_config(small_model_config(), over), resume=resume)
        t.cfg.train.steps = stop_at  # stop the loop early; the LR schedule keeps its 1000-step shape
        return t

    ref = trainer(tmp_path / "ref")
    ref.fit()
    # the resumed piece runs on "another machine": one loader worker instead of two (data.workers may change)
    resumed = trainer(tmp_path / "resumed", resume=keep, workers=1)
    assert resumed.step == cut
    resumed.fit()
    ref_state, res_state = ref.model.state_dict(), resumed.model.state_dict()
    for k, v in ref_state.items():
        assert torch.equal(v, res_state[k]), f"{k} differs after resume"
