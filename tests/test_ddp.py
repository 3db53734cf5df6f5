"""The DistributedDataParallel path, on CPU with the gloo backend and two processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import join_process_group, spawn_ranks

from strkit.config import load_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _worker(rank: int, world: int, store: str, data_dir: str, out_dir: str, result_dir: str) -> None:
    join_process_group(rank, world, store)
    torch.set_num_threads(1)
    from strkit.engine.trainer import Trainer

    cfg = load_config(REPO / "configs" / "models" / "mbv2-ctc.yaml", [
        f"data.train=[{{path: {data_dir}, kind: folder}}]", "data.val_fraction=0.25", "data.workers=0",
        "train.steps=4", "train.batch_size=4", "train.val_every=4", "train.save_every=4",
        "train.progress=false", "train.tensorboard=false", f"train.out_dir={out_dir}", "train.log_every=2",
    ])
    trainer = Trainer(cfg)
    trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    torch.save(flat, Path(result_dir) / f"rank{rank}.pt")


def test_two_process_gloo_training_keeps_ranks_in_sync(word_folder, tmp_path):
    world = 2
    spawn_ranks(_worker, world, (str(word_folder), str(tmp_path / "run"), str(tmp_path)), tmp_path / "store")
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(world))
    assert torch.equal(w0, w1)  # gradients were all-reduced: identical weights on every rank
    assert (tmp_path / "run" / "last.pt").is_file()  # rank 0 saved
