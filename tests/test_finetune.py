"""Fine-tuning: zoo names and run folders as init_from, the init model's config, charset changes, replay."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from test_train_e2e import small_model_config, tiny_overrides

from strkit.charset import Charset
from strkit.checkpoint import load_checkpoint
from strkit.cli.train import packaged_config
from strkit.config import ConfigError, SourceConfig, load_config
from strkit.engine.finetune import adopt_init_config, init_with_charset_change, resolve_init_source
from strkit.engine.run_data import with_replay
from strkit.models.recognizer import build_model
from strkit.models.zoo import get_zoo_model

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_run(word_folder, tmp_path_factory) -> Path:
    """A 36-class CTC run of 4 steps (its best.pt is the init checkpoint of the charset tests)."""
    from strkit.engine.trainer import Trainer

    out = tmp_path_factory.mktemp("small") / "run"
    Trainer(load_config(small_model_config(), tiny_overrides(word_folder, out, steps=4))).fit()
    return out


def test_init_sources(small_run):
    assert resolve_init_source("default") == get_zoo_model("default").checkpoint
    assert resolve_init_source(str(small_run)) == small_run / "best.pt"
    assert resolve_init_source(str(small_run / "last.pt")) == small_run / "last.pt"
    with pytest.raises(ConfigError, match="bundled model"):
        resolve_init_source("no_such_model")


def test_charset_growth_keeps_shared_rows_bit_identical(small_run):
    payload = load_checkpoint(small_run / "best.pt")
    cfg = load_config(small_model_config(), ["model.charset=94_full"])
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    init_with_charset_change(model, small_run / "best.pt", [""])
    old_cs, new_cs = Charset.from_dict(payload["charset"]), model.charset
    old, new = payload["state_dict"], model.state_dict()
    grown = [k for k in new if new[k].shape != old[k].shape]
    assert grown and all(new[k].shape[0] == len(new_cs) + 1 and old[k].shape[0] == len(old_cs) + 1 for k in grown)
    for k in new:
        if k in grown:
            assert torch.equal(new[k][0], old[k][0])  # blank
            for ch in "az09":
                assert torch.equal(new[k][new_cs.index(ch) + 1], old[k][old_cs.index(ch) + 1]), (k, ch)
            for ch in "AZ!?":  # new characters keep their fresh initialisation
                assert torch.equal(new[k][new_cs.index(ch) + 1], fresh[k][new_cs.index(ch) + 1]), (k, ch)
        else:
            assert torch.equal(new[k], old[k]), k


def test_charset_change_refuses_other_shape_changes(small_run):
    cfg = load_config(small_model_config(), ["model.charset=94_full", "model.sequence.hidden_size=32"])
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels)
    with pytest.raises(ValueError, match="only the class rows may differ"):
        init_with_charset_change(model, small_run / "best.pt", [""])


def test_finetune_config_takes_the_bundled_model_and_ships_with_the_package():
    shipped = packaged_config("finetune")
    assert Path(shipped).is_file() and Path(shipped).parent.name == "configs"
    assert (REPO / "configs/train/finetune.yaml").read_text() == Path(shipped).read_text()
    assert packaged_config("/nowhere/configs/train/finetune.yaml") == shipped
    cfg = adopt_init_config(load_config(shipped, []))
    default = load_checkpoint(get_zoo_model("default").checkpoint)["config"]
    # the bundled default model (v2) reads the 94-character set; "" in the config takes the init model's
    assert cfg.model.backbone == default["model"]["backbone"] and cfg.model.charset == default["model"]["charset"]
    assert cfg.model.charset == "94_full"
    assert (cfg.data.img_h, cfg.data.img_w, cfg.data.channels) == (32, 128, 1)
    assert adopt_init_config(load_config(shipped, ["model.charset=36_lowercase"])).model.charset == "36_lowercase"


def test_replay_takes_its_share_of_every_batch():
    user = [SourceConfig(path="a", ratio=3.0, ratio_schedule=[[100, 1.0]]), SourceConfig(path="b", ratio=1.0)]
    mixed = with_replay(user, "mjsynth", 0.3)
    assert [s.ratio for s in mixed] == pytest.approx([0.525, 0.175, 0.3])
    assert mixed[0].ratio_schedule == [[100, pytest.approx(0.175)]]
    assert mixed[-1].kind == "synth" and mixed[-1].name == "replay" and mixed[-1].val_fraction == 0
    assert with_replay(user, "mjsynth", 0.0) == user
    with pytest.raises(ConfigError, match="below 1"):
        with_replay(user, "mjsynth", 1.0)


def test_finetune_from_the_bundled_model_end_to_end(word_folder, tmp_path, capsys):
    from strkit.engine.trainer import Trainer

    out = tmp_path / "ft"
    cfg = load_config(packaged_config("finetune"), [
        f"data.train=[{{path: {word_folder}, kind: folder, name: mine}}]", "data.val_fraction=0.25",
        "data.workers=0", "data.replay.ratio=0.25", "data.replay.val_samples=16", "train.steps=4",
        "train.max_minutes=0", "train.val_every=2", "train.batch_size=8", "train.log_every=2",
        "train.progress=false", "train.tensorboard=false", f"train.out_dir={out}"])
    trainer = Trainer(cfg)
    metrics = trainer.fit()
    # the bundled model already reads these rendered words: fine-tuning starts from it, not from scratch
    assert metrics["val_accuracy"] > 80 and "val_replay_accuracy" in metrics
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("best: step")]
    assert len(line) == 1 and "val_replay_accuracy" in line[0] and str(out / "best.pt") in line[0]
    with (out / "metrics.csv").open() as fh:
        keys = {r["key"] for r in csv.DictReader(fh)}
    assert {"val_accuracy", "val_replay_accuracy"} <= keys
    saved = load_checkpoint(out / "best.pt")
    assert saved["config"]["model"]["charset"] == "94_full" and saved["config"]["train"]["init_config"]


def test_empty_charset_needs_init_config(word_folder, tmp_path):
    from strkit.engine.trainer import Trainer

    with pytest.raises(ConfigError, match="init_config"):
        Trainer(load_config(small_model_config(), tiny_overrides(word_folder, tmp_path / "r") + ["model.charset="]))


def test_finetune_config_from_the_command_line(word_folder, capsys):
    from strkit.cli.train import main

    rc = main(["finetune", f"data.train=[{{path: {word_folder}, kind: folder}}]", "--print-config"])
    out = capsys.readouterr().out
    assert rc == 0 and "charset: 94_full" in out and "name: searched" in out
