"""tools/rectify.py and strkit.engine.rectification: before/after pictures of the rectifiers."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

from strkit.checkpoint import save_checkpoint
from strkit.cli.rectify import main
from strkit.config import load_config
from strkit.engine.rectification import boundary_polylines, movement_scores, rectify, to_uint8
from strkit.models.recognizer import build_model

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.backbone.width_mult=0.25", "model.sequence.hidden_size=16", "model.decoder.hidden_size=16"]
RECTIFIERS = {
    "none": "model.rectifier={name: none}",
    "tps": "model.rectifier={name: tps, num_fiducial: 6, loc_channels: [8, 16], loc_hidden: 16}",
    "scrn": "model.rectifier={name: scrn, num_points: 5, loc_channels: [8, 16], loc_hidden: 16}",
}


def tiny_model(rectifier: str, img_w: int = 100):
    cfg = load_config(REPO / "configs/models/scrn-mbv2-bilstm-attention.yaml",
                      [RECTIFIERS[rectifier], f"data.img_w={img_w}", *TINY])
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels), cfg


def bend(model) -> None:
    """Make the ScRN predict a curved centre line (dy = ±0.4 alternating) instead of the identity."""
    with torch.no_grad():
        bias = model.rectifier.localization.attributes.bias  # rows: dx, dy, log_scale, theta
        bias[1] = 0.4  # dy: every centre point moved down by 0.4 (normalised units)


def save(model, cfg, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, config=cfg.to_dict(), charset=model.charset.to_dict(), state_dict=model.state_dict())
    return path


def test_identity_rectifiers_do_not_move_and_a_bent_scrn_does():
    images = torch.rand(3, 1, 32, 100) * 2 - 1
    for name in ("none", "scrn"):
        model, _ = tiny_model(name)
        assert movement_scores(model, images).max() < 1e-4, name
    model, _ = tiny_model("scrn")
    bend(model)
    out, points = rectify(model, images)
    assert out.shape == images.shape and points is not None and points.shape == (3, 15, 2)
    assert (movement_scores(model, images) > 0.01).all()
    upper, lower, centre = boundary_polylines(points, 32, 100)[0]
    assert upper.shape == lower.shape == centre.shape == (5, 2)
    # the centre line moved from the middle row (15.5) to 0.4 · 15.5 px lower; the boundaries surround it
    assert abs(centre[:, 1].mean() - 15.5 * 1.4) < 1.0
    assert (upper[:, 1] < centre[:, 1]).all() and (lower[:, 1] > centre[:, 1]).all()
    assert tiny_model("tps")[0].rectifier is not None and rectify(tiny_model("none")[0], images)[1] is None
    u8 = to_uint8(torch.tensor([[[[-1.0, 0.0, 1.0]]]]))
    assert u8.shape == (1, 1, 3, 1) and u8.ravel().tolist() == [0, 128, 255]


@pytest.fixture(params=["generated", "shared"])
def bench(request) -> tuple[Path, str]:
    """(benchmark root, set name): rendered on the fly (always), and the real crops when present."""
    if request.param == "generated":
        from conftest import TINY_BENCHMARK

        return request.getfixturevalue("tiny_benchmarks"), TINY_BENCHMARK
    return request.getfixturevalue("shared_benchmarks"), "IIIT5K_3000"


def test_cli_picks_the_most_moved_crops_and_writes_a_png(bench, tmp_path, capsys):
    root, bench_name = bench
    paths = []
    for name in ("none", "tps", "scrn"):
        model, cfg = tiny_model(name)
        if name == "scrn":
            bend(model)
        paths.append(save(model, cfg, tmp_path / name / "last.pt"))
    out = tmp_path / "fig" / "rect.png"
    assert main([*map(str, paths), "--benchmark", bench_name, "--root", str(root),
                 "--scan", "12", "--count", "3", "--out", str(out), "--threads", "1"]) == 0
    assert f"3 crops of {bench_name}" in capsys.readouterr().out
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > img.shape[0] / 2
    assert main([*map(str, paths[:1]), "--benchmark", bench_name, "--root", str(root),
                 "--indices", "0", "5", "--out", str(tmp_path / "hand.png")]) == 0
    assert (tmp_path / "hand.png").is_file()


def test_cli_errors(bench, tmp_path, capsys):
    root, bench_name = bench
    a = save(*tiny_model("none"), tmp_path / "a" / "last.pt")
    b = save(*tiny_model("none", img_w=128), tmp_path / "b" / "last.pt")
    assert main([str(a), str(b), "--root", str(root)]) == 2
    assert "different inputs" in capsys.readouterr().err
    assert main([str(a), "--names", "x", "y"]) == 2
    assert "2 names for 1 checkpoints" in capsys.readouterr().err
    assert main([str(a), "--root", str(root), "--benchmark", bench_name, "--indices", "99999"]) == 2
    assert f"outside {bench_name}" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pt")]) == 2
