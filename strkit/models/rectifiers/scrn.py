"""The ``scrn`` rectifier: symmetry-constrained rectification (after Yang et al., ICCV 2019).

Instead of predicting 2K free fiducial points like ``tps``, the localisation network predicts K *local
text attributes* along the text centre line: for point k its position ``c_k = (x_k, y_k)``, the local
half-height ``s_k`` (scale) and the local orientation ``θ_k``. The upper and lower boundary points are
then placed symmetrically about the centre line,

    n_k = (sin θ_k, −cos θ_k)            unit normal pointing to the top of the text (pixel space)
    upper_k = c_k + s_k · n_k            lower_k = c_k − s_k · n_k

and a thin-plate spline (the solve of :mod:`strkit.models.rectifiers.tps`) maps the K upper points onto
the top edge, the K lower points onto the bottom edge and the K centre points onto the middle row of
the upright ``img_h × img_w`` output (3K control points). Anchoring the centre line as well as the
boundaries is a deviation from a boundary-only spline: on a 100° arc it cuts the largest grid error
inside the word from about 6 to 2 source pixels (the test with a known arc measures this), because a
boundary-only spline bulges between the two edges of a strongly curved band. A second deviation: the
paper predicts the attributes per pixel with a fully convolutional network and then samples the centre
line; here a small CNN regresses the K points directly (no post-processing, so the whole rectifier is
differentiable end to end and exports to ONNX as one graph).

Coordinates (all tensors): ``grid_sample`` units with ``align_corners=True``: x and y in [-1, 1], −1 is
the centre of the first pixel. ``θ`` is measured in *pixel* space (so that symmetry is a real,
isotropic symmetry of the word, not one distorted by the crop's aspect ratio), ``θ = 0`` is horizontal
text written left to right; ``s`` is in normalised-y units (``s = 1`` is half the crop height).

Identity at initialisation: K centre points evenly spaced on ``y = 0``, ``s = 1``, ``θ = 0`` give
exactly the reference points, so the warp is the identity. The localisation network's last layer
predicts offsets from that layout and starts at zero.

Auxiliary geometry supervision: the synthetic generator stores, per sample, the word's upper and lower
boundary polylines (LMDB key ``geom-%09d``, JSON ``{"top": [[x, y]...], "bottom": [[x, y]...],
"width": W, "height": H}`` in continuous pixel coordinates). :func:`geometry_targets_from_json` turns
one record into attribute targets resampled to K points; :meth:`ScRNRectifier.geometry_loss` compares
the network's attributes with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strkit.models.rectifiers.tps import _tps_kernel
from strkit.models.registry import RECTIFIERS

# Bounds of the predicted log-scale: the half-height stays within [e^-4, e^2] crop half-heights.
_LOG_SCALE_MIN, _LOG_SCALE_MAX = -4.0, 2.0


def crop_aspect(img_h: int, img_w: int) -> float:
    """Pixels per normalised-x unit over pixels per normalised-y unit, ``(W - 1) / (H - 1)``
    (``align_corners=True`` units)."""
    return (img_w - 1) / max(img_h - 1, 1)


def symmetric_boundaries(centre: Tensor, scale: Tensor, theta: Tensor, aspect: float = 1.0
                         ) -> tuple[Tensor, Tensor]:
    """Upper and lower boundary points placed symmetrically about the centre line.

    Args:
        centre: B×K×2 centre-line points (x, y), normalised coordinates.
        scale: B×K local half-heights, normalised-y units.
        theta: B×K local text orientations in pixel space (radians, 0 = horizontal).
        aspect: :func:`crop_aspect` of the image the coordinates refer to (1.0: square pixels units).

    Returns:
        ``(upper B×K×2, lower B×K×2)``: ``centre ± scale · (sin θ / aspect, −cos θ)``.
    """
    offset = torch.stack([torch.sin(theta) * scale / aspect, -torch.cos(theta) * scale], dim=-1)
    return centre + offset, centre - offset


def attributes_from_boundaries(upper: Tensor, lower: Tensor, aspect: float = 1.0
                               ) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`symmetric_boundaries`: paired boundary points (…×K×2 each) ->
    ``(centre …×K×2, scale …×K, theta …×K)``."""
    centre = (upper + lower) / 2
    half = (upper - lower) / 2
    hx, hy = half[..., 0] * aspect, half[..., 1]
    return centre, torch.hypot(hx, hy), torch.atan2(hx, -hy)


def reference_layout(num_points: int) -> Tensor:
    """3K×2 (x, y) reference points in [-1, 1], float64: K evenly spaced along the top edge (y = −1),
    then K along the bottom edge (y = +1), then K along the middle row (y = 0)."""
    xs = torch.linspace(-1.0, 1.0, num_points, dtype=torch.float64)
    rows = [torch.stack([xs, torch.full_like(xs, y)], dim=1) for y in (-1.0, 1.0, 0.0)]
    return torch.cat(rows, dim=0)


def spline_grid_basis(reference: Tensor, out_h: int, out_w: int) -> Tensor:
    """(out_h·out_w)×N matrix M such that ``M @ P`` (P: N×2 control points, the images of the N×2
    ``reference`` points) gives the thin-plate-spline sampling coordinates (x, y) of every output pixel,
    row-major, ``align_corners=True`` units. float64. The same solve as
    :func:`strkit.models.rectifiers.tps.tps_grid_basis`, for any reference layout."""
    ref = reference.to(torch.float64)
    n = ref.shape[0]
    one = torch.ones(n, 1, dtype=torch.float64)
    system = torch.cat([
        torch.cat([one, ref, _tps_kernel(ref, ref)], dim=1),
        torch.cat([torch.zeros(2, 3, dtype=torch.float64), ref.T], dim=1),
        torch.cat([torch.zeros(1, 3, dtype=torch.float64), one.T], dim=1),
    ], dim=0)
    inv = torch.linalg.inv(system)
    ys = torch.linspace(-1.0, 1.0, out_h, dtype=torch.float64)
    xs = torch.linspace(-1.0, 1.0, out_w, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    p_hat = torch.cat([torch.ones(pts.shape[0], 1, dtype=torch.float64), pts, _tps_kernel(pts, ref)], dim=1)
    return p_hat @ inv[:, :n]


# ---------------------------------------------------------------------------------------------------
# Geometry targets from the synthetic generator's records
# ---------------------------------------------------------------------------------------------------
def _polyline(record: Mapping[str, Any], key: str) -> np.ndarray:
    pts = record.get(key)
    try:
        arr = np.asarray(pts, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 2 or not np.isfinite(arr).all():
        raise ValueError(f"geometry record: '{key}' must be a list of at least two [x, y] points, got "
                         f"{str(pts)[:80]}; regenerate the data with tools/synth.py --geometry")
    return arr


def _resample_polyline(points: np.ndarray, k: int) -> np.ndarray:
    """Resample an n×2 polyline at k values of its point-index parameter, evenly spaced from the first
    point to the last (linear interpolation between neighbours)."""
    src = np.arange(len(points), dtype=np.float64)
    at = np.linspace(0.0, len(points) - 1.0, k)
    return np.stack([np.interp(at, src, points[:, 0]), np.interp(at, src, points[:, 1])], axis=1)


def geometry_targets_from_json(record: Mapping[str, Any], img_w: int, img_h: int, num_points: int
                               ) -> dict[str, Tensor]:
    """Attribute targets of one synthetic sample's geometry record (the ``geom-%09d`` JSON).

    The record holds the word's upper (``top``) and lower (``bottom``) boundary polylines, point i of
    one paired with point i of the other, in continuous pixel coordinates of a ``width × height``
    image. They are rescaled to the ``img_w × img_h`` model input, converted to normalised
    (``align_corners=True``) coordinates and resampled at ``num_points`` pairs, evenly spaced in the
    polylines' point index. The generator places the points at equal steps of the *flat* (unwarped)
    text's x, so equal index steps are equal steps along the upright word: the spline then spreads the
    word evenly over the output width, whatever the curve or perspective did to the spacing. Each pair
    gives one centre point, half-height and orientation (:func:`attributes_from_boundaries`).

    Returns:
        ``centre`` K×2, ``scale`` K, ``theta`` K (float32; conventions of :func:`symmetric_boundaries`).

    Raises:
        ValueError: a malformed record (missing key, unpaired polylines, bad size).
    """
    top, bottom = _polyline(record, "top"), _polyline(record, "bottom")
    if top.shape != bottom.shape:
        raise ValueError(f"geometry record: 'top' has {len(top)} points and 'bottom' {len(bottom)}; the "
                         f"polylines must be paired point by point")
    try:
        width, height = float(record["width"]), float(record["height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("geometry record: 'width' and 'height' (the image size in pixels) are required"
                         ) from None
    if width <= 0 or height <= 0 or num_points < 2 or img_w < 2 or img_h < 2:
        raise ValueError(f"geometry record: bad sizes (record {width}x{height}, model {img_w}x{img_h}, "
                         f"{num_points} points)")
    scale_xy = np.array([img_w / width, img_h / height])
    denom = np.array([img_w - 1, img_h - 1], dtype=np.float64)

    def norm(p: np.ndarray) -> np.ndarray:
        return (p * scale_xy - 0.5) / denom * 2.0 - 1.0

    up = _resample_polyline(norm(top), num_points)
    lo = _resample_polyline(norm(bottom), num_points)
    aspect = crop_aspect(img_h, img_w)
    c, s, t = attributes_from_boundaries(torch.from_numpy(up), torch.from_numpy(lo), aspect)
    return {"centre": c.float(), "scale": s.float(), "theta": t.float()}


def geometry_targets_batch(records: Sequence[Mapping[str, Any] | None], img_w: int, img_h: int,
                           num_points: int) -> dict[str, Tensor]:
    """Stack :func:`geometry_targets_from_json` over a batch; ``None`` records (samples without
    geometry) get ``valid = False`` and identity placeholders.

    Returns:
        ``centre`` B×K×2, ``scale`` B×K, ``theta`` B×K, ``valid`` B (bool).
    """
    k = num_points
    ident = {"centre": torch.stack([torch.linspace(-1, 1, k), torch.zeros(k)], dim=1),
             "scale": torch.ones(k), "theta": torch.zeros(k)}
    rows = [geometry_targets_from_json(r, img_w, img_h, k) if r is not None else ident for r in records]
    out = {key: torch.stack([r[key] for r in rows]) for key in ("centre", "scale", "theta")}
    out["valid"] = torch.tensor([r is not None for r in records], dtype=torch.bool)
    return out


# ---------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------
class AttributeLocalization(nn.Module):
    """Predicts K centre-line attributes from the image.

    conv-BN-ReLU blocks (``channels``; 2×2 max-pool between them) -> feature map B×C×h×w; its column
    profile (mean over h, linearly resampled to K columns) is joined with the global mean feature and
    read by Conv1d(2C -> hidden, k=3) + ReLU + Conv1d(hidden -> 4, k=1) into per-point offsets
    ``(dx, dy, log-scale, θ)`` from the identity layout. The last conv starts at zero.

    Shapes: ``forward(x: B×C_in×H×W) -> (centre B×K×2, scale B×K, theta B×K)``.
    """

    def __init__(self, in_channels: int, num_points: int, channels: Sequence[int] = (32, 64, 128, 256),
                 hidden: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            if i:
                layers.append(nn.MaxPool2d(2, 2))
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.point_head = nn.Sequential(nn.Conv1d(2 * c_in, hidden, 3, 1, 1), nn.ReLU(inplace=True))
        self.attributes = nn.Conv1d(hidden, 4, 1)
        self.num_points = num_points
        self.register_buffer("base_x", torch.linspace(-1.0, 1.0, num_points), persistent=False)
        self.reset_to_identity()

    def reset_to_identity(self) -> None:
        """Zero the last layer: centre points evenly spaced on y = 0, scale 1, orientation 0."""
        with torch.no_grad():
            self.attributes.weight.zero_()
            self.attributes.bias.zero_()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fmap = self.features(x)  # B×C×h×w
        cols = fmap.mean(dim=2)  # B×C×w
        cols = F.interpolate(cols, size=self.num_points, mode="linear", align_corners=True)  # B×C×K
        glob = fmap.mean(dim=(2, 3)).unsqueeze(2).expand_as(cols)
        out = self.attributes(self.point_head(torch.cat([cols, glob], dim=1)))  # B×4×K
        dx, dy, log_s, theta = out.unbind(dim=1)
        centre = torch.stack([self.base_x + dx, dy], dim=-1)
        scale = torch.exp(log_s.clamp(_LOG_SCALE_MIN, _LOG_SCALE_MAX))
        return centre, scale, theta


@RECTIFIERS.register("scrn")
class ScRNRectifier(nn.Module):
    """Symmetry-constrained rectifier, initialised to the identity (see the module docstring).

    Args:
        img_h, img_w: output size (the configured image size); inputs of any size are resampled to it.
        in_channels: image channels C.
        num_points: K, centre-line points (>= 2); the spline has 3K control points.
        loc_channels: widths of the localisation CNN blocks.
        loc_hidden: width of the per-point head.

    Shapes: ``forward(x: B×C×H×W) -> B×C×img_h×img_w``; ``attributes(x)`` -> ``(centre B×K×2, scale B×K,
    theta B×K)``; ``control_points(x)`` -> B×3K×2 (K upper, K lower, K centre points); ``rectify(x)`` ->
    ``(B×C×img_h×img_w, attributes)`` (one localisation pass for both the warp and
    :meth:`attribute_loss`). The grid is computed and sampled in fp32 even under autocast. Exports to
    ONNX (opset >= 16).
    """

    def __init__(self, img_h: int, img_w: int, in_channels: int, num_points: int = 10,
                 loc_channels: Sequence[int] = (32, 64, 128, 256), loc_hidden: int = 128) -> None:
        super().__init__()
        if num_points < 2:
            raise ValueError(f"scrn rectifier: num_points must be >= 2, got {num_points}")
        if not loc_channels:
            raise ValueError("scrn rectifier: loc_channels must list at least one width")
        self.img_h, self.img_w, self.num_points = img_h, img_w, num_points
        self.aspect = crop_aspect(img_h, img_w)
        self.localization = AttributeLocalization(in_channels, num_points, tuple(loc_channels), loc_hidden)
        basis = spline_grid_basis(reference_layout(num_points), img_h, img_w).float()
        self.register_buffer("grid_basis", basis, persistent=False)

    def attributes(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted centre-line attributes ``(centre B×K×2, scale B×K, theta B×K)`` of images B×C×H×W."""
        return self.localization(x)

    def control_points(self, x: Tensor) -> Tensor:
        """B×3K×2 spline control points (upper boundary, lower boundary, centre line) of images B×C×H×W."""
        return self.points_from_attributes(*self.attributes(x))

    def points_from_attributes(self, centre: Tensor, scale: Tensor, theta: Tensor) -> Tensor:
        """Attributes (B×K×2, B×K, B×K) -> B×3K×2 control points (upper, lower, centre)."""
        upper, lower = symmetric_boundaries(centre, scale, theta, self.aspect)
        return torch.cat([upper, lower, centre], dim=1)

    def sampling_grid(self, points: Tensor) -> Tensor:
        """B×3K×2 control points -> B×img_h×img_w×2 sampling grid (fp32)."""
        grid = torch.matmul(self.grid_basis, points.float())
        return grid.reshape(points.shape[0], self.img_h, self.img_w, 2)

    def grid_from_attributes(self, centre: Tensor, scale: Tensor, theta: Tensor) -> Tensor:
        """Attributes (as from :func:`geometry_targets_from_json`, batched) -> B×img_h×img_w×2 grid."""
        return self.sampling_grid(self.points_from_attributes(centre, scale, theta))

    def rectify(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Rectified images B×C×img_h×img_w and the attributes ``(centre B×K×2, scale B×K, theta B×K)``
        the warp was built from (images B×C×H×W)."""
        attrs = self.attributes(x)
        points = self.points_from_attributes(*attrs)
        with torch.autocast(device_type=x.device.type, enabled=False):
            grid = self.sampling_grid(points)
            out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.to(x.dtype), attrs

    def forward(self, x: Tensor) -> Tensor:
        return self.rectify(x)[0]

    def geometry_targets(self, records: Sequence[Mapping[str, Any] | None]) -> dict[str, Tensor]:
        """:func:`geometry_targets_batch` for this rectifier's image size and ``num_points`` (CPU tensors:
        ``centre`` B×K×2, ``scale`` B×K, ``theta`` B×K, ``valid`` B)."""
        return geometry_targets_batch(records, self.img_w, self.img_h, self.num_points)

    def geometry_loss(self, images: Tensor, geom_targets: Mapping[str, Tensor]) -> Tensor:
        """Auxiliary loss between predicted and target attributes (e.g. from :func:`geometry_targets_batch`).

        ``L1(centre) + L1(scale) + (1 − cos(θ − θ*))``, each averaged over points, then over the samples
        whose ``valid`` flag is set (all samples when ``valid`` is absent). Zero (with a graph) when no
        sample is valid.

        Args:
            images: B×C×H×W, the rectifier's input.
            geom_targets: ``centre`` B×K×2, ``scale`` B×K, ``theta`` B×K, optional ``valid`` B (bool).
        """
        return self.attribute_loss(*self.attributes(images), geom_targets)

    def attribute_loss(self, centre: Tensor, scale: Tensor, theta: Tensor,
                       geom_targets: Mapping[str, Tensor]) -> Tensor:
        """:meth:`geometry_loss` of already predicted attributes (centre B×K×2, scale B×K, theta B×K, e.g.
        from :meth:`rectify`). Invalid samples are masked out (not multiplied by 0), so a non-finite
        prediction on a sample without geometry cannot turn the loss into NaN."""
        tc = geom_targets["centre"].to(centre)
        if tc.shape != centre.shape:
            raise ValueError(f"scrn geometry_loss: targets have {tuple(tc.shape)} centre points, the "
                             f"rectifier predicts {tuple(centre.shape)}; resample them to num_points="
                             f"{self.num_points}")
        ts, tt = geom_targets["scale"].to(scale), geom_targets["theta"].to(theta)
        per_sample = ((centre.float() - tc.float()).abs().sum(-1).mean(-1)
                      + (scale.float() - ts.float()).abs().mean(-1)
                      + (1.0 - torch.cos(theta.float() - tt.float())).mean(-1))
        valid = geom_targets.get("valid")
        if valid is None:
            return per_sample.mean()
        valid = valid.to(per_sample.device, torch.bool)
        kept = torch.where(valid, per_sample, torch.zeros_like(per_sample))
        return kept.sum() / valid.sum().clamp_min(1).to(per_sample.dtype)


__all__ = ["ScRNRectifier", "attributes_from_boundaries", "crop_aspect", "geometry_targets_batch",
           "geometry_targets_from_json", "reference_layout", "spline_grid_basis", "symmetric_boundaries"]
