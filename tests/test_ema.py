"""The weight average (train.ema): its arithmetic, the swap, and a training run that uses and resumes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from strkit.checkpoint import load_checkpoint
from strkit.config import ConfigError, load_config
from strkit.engine.ema import WeightAverage

REPO = Path(__file__).resolve().parents[1]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_update_follows_the_warm_up_then_the_decay():
    net = _net()
    avg = WeightAverage(net, decay=0.9)
    w0 = net[0].weight.detach().clone()
    assert avg.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): the first update mostly copies
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked += 5
    avg.update(net)
    assert torch.allclose(avg.state["0.weight"], 0.1 * w0 + 0.9 * (w0 + 1.0))
    assert int(avg.state["1.num_batches_tracked"]) == 5  # integer buffers are copied
    avg.updates = 10_000
    assert avg.current_decay() == 0.9
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        WeightAverage(net, decay=1.0)


def test_applied_swaps_in_the_average_and_restores_bit_for_bit():
    net = _net()
    avg = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net[0].bias.add_(3.0)
    own = {k: v.clone() for k, v in net.state_dict().items()}
    with avg.applied(net):
        assert torch.equal(net[0].bias, avg.state["0.bias"]) and not torch.equal(net[0].bias, own["0.bias"])
    assert all(torch.equal(v, own[k]) for k, v in net.state_dict().items())
    with pytest.raises(RuntimeError), avg.applied(net):
        raise RuntimeError("validation failed")
    assert torch.equal(net[0].bias, own["0.bias"])
    clone = WeightAverage(_net(), decay=0.5)
    clone.load_state_dict(avg.state_dict())
    assert clone.updates == avg.updates and all(torch.equal(clone.state[k], v) for k, v in avg.state.items())
    with pytest.raises(KeyError, match="does not match"):
        WeightAverage(nn.Linear(3, 4), 0.5).load_state_dict(avg.state_dict())


def _overrides(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [f"data.train=[{{path: {data}, kind: folder, name: words}}]", "data.val_fraction=0.25",
            "data.workers=0", "data.augment=none", f"train.steps={steps}", "train.batch_size=8",
            "train.val_every=4", "train.save_every=4", "train.log_every=4", "train.progress=false",
            "train.tensorboard=false", "train.threads=1", f"train.out_dir={out}", "train.optimizer.lr=0.002",
            "train.snapshot_every=4", *extra]


@pytest.mark.slow
def test_training_validates_saves_and_resumes_the_average(word_folder, tmp_path):
    from strkit.engine.trainer import Trainer

    cfg_path = REPO / "configs" / "models" / "mbv2-ctc.yaml"
    straight = tmp_path / "straight"
    metrics = Trainer(load_config(cfg_path, _overrides(word_folder, straight, 8, "train.ema=0.9"))).fit()
    assert {"val_accuracy", "val_raw_accuracy", "val_raw_ned"} <= set(metrics)
    last, snap = load_checkpoint(straight / "last.pt"), load_checkpoint(straight / "snapshots/step_0000008.pt")
    avg = last["train_state"]["ema"]
    assert avg["updates"] == 8
    for k, v in snap["state_dict"].items():  # snapshots (and best.pt) hold the average, last.pt the raw weights
        assert torch.allclose(v.float(), avg["state"][k].float()), k
    assert any(not torch.equal(v, last["state_dict"][k]) for k, v in snap["state_dict"].items())
    # cut at step 4 and resumed: the same raw weights and the same average as the straight run
    from strkit.engine.loop import StopTraining

    def stop_at_4(step, metrics):
        if step == 4:
            raise StopTraining("cut")

    cut = tmp_path / "cut"
    Trainer(load_config(cfg_path, _overrides(word_folder, cut, 8, "train.ema=0.9")), on_validation=stop_at_4).fit()
    assert load_checkpoint(cut / "last.pt")["step"] == 4
    Trainer(load_config(cfg_path, _overrides(word_folder, cut, 8, "train.ema=0.9")), resume=cut / "last.pt").fit()
    resumed = load_checkpoint(cut / "last.pt")
    for k, v in last["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
        assert torch.equal(avg["state"][k], resumed["train_state"]["ema"]["state"][k]), k
    with pytest.raises(ConfigError, match=r"train.ema must lie in \[0, 1\)"):
        Trainer(load_config(cfg_path, _overrides(word_folder, tmp_path / "bad", 2, "train.ema=1.5")))
