"""Corrupt records skipped by the loader workers are counted and reported (issue 20, item 8)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch.utils.data
from conftest import WORDS, render_word

from strkit.checkpoint import load_checkpoint
from strkit.config import load_config
from strkit.data.lmdb.reader import LmdbDataset
from strkit.data.lmdb.writer import LmdbWriter

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def lmdb_with_corrupt(path: Path, n: int, bad: set[int]) -> Path:
    """``n`` rendered words; the records at (0-based) positions ``bad`` hold bytes that are no image."""
    rng = np.random.default_rng(0)
    with LmdbWriter(path) as w:
        for i in range(n):
            data = b"\x89PNG broken" if i in bad else cv2.imencode(".png", render_word(WORDS[i % len(WORDS)], rng))[1]
            w.put(bytes(data), WORDS[i % len(WORDS)])
    return path


def test_counts_survive_loader_workers(tmp_path):
    ds = LmdbDataset(lmdb_with_corrupt(tmp_path / "db", 24, {2, 7, 8, 20}))
    ds.share_corrupt_counts()
    loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=2, collate_fn=list)
    for _ in range(2):  # two passes: each worker meets records the other already counted
        assert sum(len(batch) for batch in loader) == 24
    assert ds.num_corrupt == 4  # each corrupt record once, although only the workers read them


def test_training_summary_and_checkpoint_report_skipped_records(tmp_path, word_folder, caplog):
    from strkit.engine.trainer import Trainer

    bad = lmdb_with_corrupt(tmp_path / "bad", 16, {0, 5, 6, 11, 15})
    out = tmp_path / "run"
    cfg = load_config(REPO / "configs" / "models" / "mbv2-ctc.yaml", [
        f"data.train=[{{path: {bad}, kind: lmdb, name: damaged}}, {{path: {word_folder}, kind: folder, "
        f"name: clean}}]", "data.val_fraction=0", "data.workers=2", "data.augment=none", "train.steps=2",
        "train.batch_size=16", "train.val_every=1000", "train.save_every=2", "train.log_every=2",
        "train.progress=false", "train.tensorboard=false", "train.threads=1", f"train.out_dir={out}"])
    with caplog.at_level(logging.INFO, logger="strkit"):
        Trainer(cfg).fit()
    assert "corrupt records skipped: damaged 5, clean 0" in caplog.text
    metrics = load_checkpoint(out / "last.pt")["metrics"]
    assert metrics["corrupt_skipped/damaged"] == 5 and metrics["corrupt_skipped/clean"] == 0
    assert metrics["corrupt_skipped"] == 5
