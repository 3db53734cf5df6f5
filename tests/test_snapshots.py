"""train.snapshot_every keeps inference-only weights along a run; metrics.csv logs the run's elapsed time."""

from __future__ import annotations

import csv

import pytest

from strkit.checkpoint import load_checkpoint
from strkit.config import load_config
from tests.test_train_e2e import small_model_config, tiny_overrides

pytestmark = pytest.mark.slow


def test_snapshots_and_elapsed_time(word_folder, tmp_path):
    from strkit.engine.trainer import Trainer

    out = tmp_path / "run"
    cfg = load_config(small_model_config(), [*tiny_overrides(word_folder, out, steps=6), "train.snapshot_every=3"])
    Trainer(cfg).fit()
    snaps = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snaps == ["step_0000003.pt", "step_0000006.pt"]
    snap = load_checkpoint(out / "snapshots" / "step_0000003.pt")
    assert snap["step"] == 3 and snap["train_state"] is None  # weights only: small, not resumable
    with (out / "metrics.csv").open() as fh:
        elapsed = [float(r["value"]) for r in csv.DictReader(fh) if r["key"] == "elapsed_s"]
    assert len(elapsed) == 2 and 0 < elapsed[0] < elapsed[1]
