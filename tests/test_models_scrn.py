"""The ``scrn`` rectifier: symmetric boundaries, identity start, a known arc rectified upright, geometry
targets from the synthetic generator's records, the auxiliary geometry loss, ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_helpers import onnx_and_torch_outputs

from strkit.models.rectifiers.scrn import (
    ScRNRectifier,
    attributes_from_boundaries,
    crop_aspect,
    geometry_targets_batch,
    geometry_targets_from_json,
    reference_layout,
    spline_grid_basis,
    symmetric_boundaries,
)
from strkit.models.registry import RECTIFIERS

SMALL = {"name": "scrn", "loc_channels": [8, 8, 8], "loc_hidden": 8}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread


def build(img_w: int = 100, channels: int = 1, **kw) -> ScRNRectifier:
    return RECTIFIERS.build({**SMALL, **kw}, img_h=32, img_w=img_w, in_channels=channels)


# --- symmetric boundaries ----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(cx=st.floats(-1, 1), cy=st.floats(-1, 1), s=st.floats(0.05, 2.0), theta=st.floats(-3.0, 3.0),
       aspect=st.sampled_from([1.0, 99 / 31, 127 / 31]))
def test_boundaries_are_symmetric_about_the_centre_line(cx, cy, s, theta, aspect):
    centre = torch.tensor([[[cx, cy]]], dtype=torch.float64)
    scale = torch.tensor([[s]], dtype=torch.float64)
    th = torch.tensor([[theta]], dtype=torch.float64)
    upper, lower = symmetric_boundaries(centre, scale, th, aspect)
    torch.testing.assert_close((upper + lower) / 2, centre)
    # in pixel-isotropic units the half-height vector has length s and is perpendicular to the text direction
    half = (upper - lower)[0, 0] / 2 * torch.tensor([aspect, 1.0], dtype=torch.float64)
    assert math.isclose(float(half.norm()), s, rel_tol=1e-9)
    assert abs(float(half @ torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64))) < 1e-9
    c2, s2, t2 = attributes_from_boundaries(upper, lower, aspect)
    torch.testing.assert_close(c2, centre)
    assert math.isclose(float(s2), s, rel_tol=1e-9)
    assert abs(math.remainder(float(t2) - theta, 2 * math.pi)) < 1e-9


def test_horizontal_text_points_up():
    centre = torch.tensor([[[0.0, 0.0]]])
    upper, lower = symmetric_boundaries(centre, torch.tensor([[0.5]]), torch.tensor([[0.0]]))
    assert upper[0, 0].tolist() == [0.0, -0.5] and lower[0, 0].tolist() == [0.0, 0.5]  # y grows downwards


# --- identity and shapes -------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [100, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_scrn_starts_as_the_identity(width, channels):
    rect = build(width, channels)
    x = torch.rand(2, channels, 32, width) * 2 - 1
    y = rect(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    centre, scale, theta = rect.attributes(x)
    assert centre.shape == (2, 10, 2) and scale.shape == theta.shape == (2, 10)
    torch.testing.assert_close(scale, torch.ones(2, 10))
    y.sum().backward()
    assert rect.localization.attributes.weight.grad is not None
    assert rect.localization.attributes.weight.grad.abs().sum() > 0


def test_reference_layout_and_basis_give_the_identity_grid():
    ref = reference_layout(5)
    assert ref.shape == (15, 2)
    assert ref[:5, 1].eq(-1).all() and ref[5:10, 1].eq(1).all() and ref[10:, 1].eq(0).all()
    grid = spline_grid_basis(ref, 8, 20) @ ref
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 8, dtype=torch.float64),
                            torch.linspace(-1, 1, 20, dtype=torch.float64), indexing="ij")
    torch.testing.assert_close(grid, torch.stack([xs.reshape(-1), ys.reshape(-1)], 1), atol=1e-9, rtol=0)


def test_scrn_resamples_to_the_configured_size_and_rejects_bad_settings():
    rect = build(100)
    assert tuple(rect(torch.randn(2, 1, 48, 160)).shape) == (2, 1, 32, 100)
    assert rect.control_points(torch.randn(1, 1, 32, 100)).shape == (1, 30, 2)
    with pytest.raises(ValueError, match="num_points"):
        build(num_points=1)
    with pytest.raises(ValueError, match="loc_channels"):
        build(loc_channels=[])


def test_scrn_under_bf16_autocast_keeps_the_input_dtype():
    rect = build(100)
    x = torch.randn(2, 1, 32, 100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rect(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x, atol=1e-4, rtol=0)


# --- a known arc ---------------------------------------------------------------------------------------
def arc_word(h: int = 96, w: int = 256, n_points: int = 10) -> tuple[np.ndarray, dict, callable, tuple]:
    """An upright 'word' (cosine bars, brighter in the middle rows) bent onto a 100° arc with the
    synthetic generator's ArcCurve, its geometry record as the generator writes it, and the pattern."""
    from strkit.data.synth.geometry import ArcCurve, Box, boundary

    box = Box(40.0, 30.0, 216.0, 66.0)
    curve = ArcCurve(box, radius=box.w / math.radians(100), up=True)

    def pattern(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        inside = (u >= box.x0) & (u <= box.x1) & (v >= box.y0) & (v <= box.y1)
        mid = (box.y0 + box.y1) / 2
        val = np.cos(2 * math.pi * (u - box.x0) / 22.0) * np.cos(0.9 * math.pi * (v - mid) / box.h)
        return np.where(inside, val, -1.0)

    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)  # pixel centres, continuous coordinates
    image = pattern(*curve.inverse(xs, ys))
    tx, ty, bx, by = boundary(box, n_points)
    top, bottom = np.stack(curve.forward(tx, ty), 1), np.stack(curve.forward(bx, by), 1)
    record = {"top": top.round(2).tolist(), "bottom": bottom.round(2).tolist(), "width": w, "height": h}
    return image, record, pattern, (box, curve)


def test_geometry_of_a_known_arc_gives_an_upright_word():
    image, record, pattern, (box, curve) = arc_word()
    rect = build(128, num_points=10)
    t = geometry_targets_from_json(record, 128, 32, 10)
    theta = t["theta"]
    assert theta[0] < -0.5 and theta[-1] > 0.5 and abs(theta[[4, 5]].sum()) < 1e-4  # a ∩ shape
    grid = rect.grid_from_attributes(t["centre"][None], t["scale"][None], t["theta"][None])
    src = torch.tensor(image, dtype=torch.float32)[None, None]
    out = F.grid_sample(src, grid, mode="bilinear", align_corners=True)[0, 0].numpy()
    rows, cols = np.meshgrid(np.linspace(box.y0, box.y1, 32), np.linspace(box.x0, box.x1, 128), indexing="ij")
    upright = pattern(cols, rows)
    plain = F.interpolate(src, size=(32, 128), mode="bilinear", align_corners=True)[0, 0].numpy()
    assert np.abs(plain - upright).mean() > 0.6  # the arc is far from upright
    assert np.abs(out - upright).mean() < 0.15  # measured 0.11
    # every output pixel samples within 2.5 source pixels of where the flat word's pixel was bent to
    g = grid[0].numpy()
    gx = (g[..., 0] + 1) / 2 * (image.shape[1] - 1) + 0.5
    gy = (g[..., 1] + 1) / 2 * (image.shape[0] - 1) + 0.5
    ex, ey = curve.forward(cols, rows)
    assert np.hypot(gx - ex, gy - ey).max() < 2.5  # measured 1.9 (a boundary-only spline: 5.9)


# --- geometry targets ----------------------------------------------------------------------------------
def straight_record(w: float = 200.0, h: float = 50.0, n: int = 10) -> dict:
    xs = np.linspace(20, 180, n)
    return {"top": [[x, 15.0] for x in xs], "bottom": [[x, 35.0] for x in xs], "width": w, "height": h}


def test_targets_of_a_straight_word():
    t = geometry_targets_from_json(straight_record(), 128, 32, 6)
    assert t["centre"].shape == (6, 2) and t["scale"].shape == t["theta"].shape == (6,)
    assert t["centre"].dtype == torch.float32
    y_mid = (25.0 * 32 / 50 - 0.5) / 31 * 2 - 1
    torch.testing.assert_close(t["centre"][:, 1], torch.full((6,), y_mid))
    torch.testing.assert_close(t["scale"], torch.full((6,), 10.0 * 32 / 50 / 31 * 2))
    torch.testing.assert_close(t["theta"], torch.zeros(6))
    x = t["centre"][:, 0]
    assert x.diff().min() > 0 and abs(float(x[0]) - ((20 * 128 / 200 - 0.5) / 127 * 2 - 1)) < 1e-6
    # the record's pixel size does not matter, only the word's place in the image
    doubled = {k: (np.asarray(v) * 2).tolist() if k in ("top", "bottom") else v * 2
               for k, v in straight_record().items()}
    t2 = geometry_targets_from_json(doubled, 128, 32, 6)
    for key in t:
        torch.testing.assert_close(t2[key], t[key])


def test_targets_reproduce_the_record_boundaries():
    _, record, _, _ = arc_word()
    t = geometry_targets_from_json(record, 128, 32, 10)  # 10 points: no resampling
    upper, lower = symmetric_boundaries(t["centre"], t["scale"], t["theta"], crop_aspect(32, 128))
    for pts, key in ((upper, "top"), (lower, "bottom")):
        p = np.asarray(record[key]) * [128 / 256, 32 / 96]
        norm = (p - 0.5) / [127, 31] * 2 - 1
        np.testing.assert_allclose(pts.numpy(), norm, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    ({"bottom": [[0, 1], [2, 3]], "width": 10, "height": 10}, "'top'"),
    ({"top": [[0, 1], [2, 3]], "bottom": [[0, 1], [2, 3], [4, 5]], "width": 10, "height": 10}, "paired"),
    ({"top": [[0, 1], [2, 3]], "bottom": [[0, 1], [2, 3]]}, "width"),
    ({"top": [[0, 1]], "bottom": [[0, 1]], "width": 10, "height": 10}, "at least two"),
])
def test_malformed_records_are_reported(bad, match):
    with pytest.raises(ValueError, match=match):
        geometry_targets_from_json(bad, 128, 32, 6)


def test_batch_of_targets_marks_missing_geometry():
    t = geometry_targets_batch([straight_record(), None], 128, 32, 6)
    assert t["centre"].shape == (2, 6, 2) and t["valid"].tolist() == [True, False]
    torch.testing.assert_close(t["scale"][1], torch.ones(6))


def test_geometry_loss_pulls_the_attributes_to_the_targets():
    torch.manual_seed(0)
    rect = build(128, num_points=6)
    images = torch.rand(2, 1, 32, 128) * 2 - 1
    targets = geometry_targets_batch([straight_record(), straight_record()], 128, 32, 6)
    opt = torch.optim.Adam(rect.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = rect.geometry_loss(images, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    none_valid = {**targets, "valid": torch.tensor([False, False])}
    zero = rect.geometry_loss(images, none_valid)
    assert float(zero) == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="num_points"):
        rect.geometry_loss(images, geometry_targets_batch([straight_record()] * 2, 128, 32, 4))


# --- export --------------------------------------------------------------------------------------------
def test_scrn_exports_to_onnx_with_runtime_parity():
    rect = build(100).eval()
    with torch.no_grad():  # a non-trivial warp
        rect.localization.attributes.weight.normal_(0, 0.05)
    x = torch.rand(3, 1, 32, 100) * 2 - 1
    got, ref = onnx_and_torch_outputs(rect, x)
    assert np.abs(ref - x.numpy()).max() > 1e-2  # the warp is not the identity
    assert np.abs(got - ref).max() < 1e-4
