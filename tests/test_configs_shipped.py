"""Every YAML file shipped under configs/ loads, and every recogniser config trains one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import strkit.nas.search_space  # noqa: F401  (registers the 'supernet' backbone)
from strkit.config import load_config
from strkit.engine.finetune import adopt_init_config
from strkit.models.recognizer import build_model

REPO = Path(__file__).resolve().parents[1]
# (search spaces of configs/tune/ are checked by tests/test_tune.py)
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name not in {"synth", "tune"})
# recogniser configs that build as they are (nas_table.yaml needs model.backbone.arch=PATH)
MODELS = sorted(p for p in CONFIGS if p.parent.name in {"models", "ablation"} and p.name != "base.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_loads(path: Path) -> None:
    cfg = adopt_init_config(load_config(path))  # a fine-tuning config takes its model from train.init_from
    assert cfg.model.charset and cfg.data.img_h > 0


def test_the_list_is_not_empty() -> None:
    assert len(CONFIGS) > 20 and len(MODELS) >= 12


@pytest.mark.parametrize("path", MODELS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_recogniser_config_trains_one_step(path: Path) -> None:
    cfg = load_config(path)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels).train()
    images = torch.rand(2, cfg.data.channels, cfg.data.img_h, cfg.data.img_w) * 2 - 1
    out = model(images, model.encode(["word", "text"]))
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
