"""train.fp32_stages: named stages stay in fp32 under bf16 autocast; the weights and their names do not change."""

from __future__ import annotations

import copy

import pytest
import torch

from strkit.config import ConfigError, load_config
from strkit.engine.runtime import keep_stages_in_fp32
from strkit.models.recognizer import build_model
from tests.test_train_e2e import small_model_config, tiny_overrides


def _model(sequence_autocast: bool):
    cfg = load_config(small_model_config(), [f"model.sequence.autocast={str(sequence_autocast).lower()}"])
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels)


def _stage_dtypes(model) -> dict[str, torch.dtype]:
    seen: dict[str, torch.dtype] = {}
    for name in ("backbone", "sequence"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
    x = torch.rand(2, 1, 32, 100) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    return seen


def test_backbone_in_fp32_beside_a_bf16_lstm():
    plain = _stage_dtypes(_model(sequence_autocast=True))
    assert plain == {"backbone": torch.bfloat16, "sequence": torch.bfloat16}
    model = _model(sequence_autocast=True)
    keys = list(model.state_dict())
    keep_stages_in_fp32(model, ["backbone"])
    assert _stage_dtypes(model) == {"backbone": torch.float32, "sequence": torch.bfloat16}
    assert list(model.state_dict()) == keys
    x = torch.rand(2, 1, 32, 100)
    reference = _model(sequence_autocast=True)
    assert torch.equal(model(x).logits, reference(x).logits)  # outside autocast: unchanged
    copied = copy.deepcopy(model)  # a copy keeps the behaviour on its own weights
    assert _stage_dtypes(copied) == {"backbone": torch.float32, "sequence": torch.bfloat16}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            model.backbone(torch.rand(2, 3, 32, 100))  # wrong channel count: the stage raises inside
        assert torch.is_autocast_enabled("cpu")  # its autocast-off context was left on the way out
    assert not model.backbone._fp32_contexts


def test_unknown_stage_is_a_config_error():
    with pytest.raises(ConfigError, match="train.fp32_stages: unknown stage 'lstm'"):
        keep_stages_in_fp32(_model(False), ["lstm"])


def test_trainer_steps_with_a_fp32_backbone_under_bf16(word_folder, tmp_path):
    from strkit.engine.trainer import Trainer

    cfg = load_config(small_model_config(), [*tiny_overrides(word_folder, tmp_path / "run", steps=2),
                                             "train.precision=bf16", "train.fp32_stages=[backbone]",
                                             "model.sequence.autocast=true"])
    trainer = Trainer(cfg, overwrite=True)
    images = torch.rand(4, 1, cfg.data.img_h, cfg.data.img_w) * 2 - 1
    loss = trainer.train_step(images, ["abc", "word", "text", "cpu"])
    assert loss is not None and loss == loss
