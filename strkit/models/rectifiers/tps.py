"""The ``tps`` rectifier: the thin-plate-spline spatial transformer of RARE, as used by TRBA.

A small localisation CNN predicts F fiducial points on the input image; the thin-plate spline that
maps F reference points (evenly spaced along the top and bottom edges of the output) onto them is
evaluated at every output pixel and the image is resampled there with ``grid_sample``. The spline
solve does not depend on the image, so the (H·W)×F matrix mapping predicted points to sampling
coordinates is computed once at construction and kept as a buffer; the forward pass is a matrix
product plus ``grid_sample``, which exports to ONNX (opset >= 16).

Layer shapes follow the four-stage benchmark (localisation: conv-BN-ReLU 64/128/256/512 with 2×2
max-pools, global average pool, FC 256, FC 2F; 1,692,392 parameters for F=20 and one channel). Unlike
the benchmark, whose last-layer bias starts from a slanted point pattern, the initial transform here is
exactly the identity, and the output grid samples pixel centres with ``align_corners=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strkit.models.registry import RECTIFIERS


def reference_points(num_fiducial: int) -> Tensor:
    """F×2 (x, y) reference points in [-1, 1]: F/2 evenly spaced along the top edge (y=-1), then F/2
    along the bottom edge (y=+1). float64."""
    half = num_fiducial // 2
    xs = torch.linspace(-1.0, 1.0, half, dtype=torch.float64)
    top = torch.stack([xs, torch.full_like(xs, -1.0)], dim=1)
    bottom = torch.stack([xs, torch.full_like(xs, 1.0)], dim=1)
    return torch.cat([top, bottom], dim=0)


def _tps_kernel(a: Tensor, b: Tensor) -> Tensor:
    """Radial basis U(r) = r² log r between the rows of ``a`` (N×2) and ``b`` (M×2) -> N×M, U(0)=0."""
    r = torch.cdist(a, b)
    return torch.where(r > 0, r.square() * torch.log(r.clamp_min(1e-12)), torch.zeros_like(r))


def tps_grid_basis(num_fiducial: int, out_h: int, out_w: int) -> Tensor:
    """(out_h·out_w)×F matrix M such that ``M @ C'`` (C': F×2 predicted points) gives the sampling
    coordinates (x, y) of every output pixel, row-major, in ``align_corners=True`` units. float64.

    With C' equal to :func:`reference_points` the result is the identity grid.
    """
    ctrl = reference_points(num_fiducial)  # F×2
    n_f = ctrl.shape[0]
    # System matrix of the spline with an affine part: (F+3)×(F+3).
    top = torch.cat([torch.ones(n_f, 1, dtype=torch.float64), ctrl, _tps_kernel(ctrl, ctrl)], dim=1)
    mid = torch.cat([torch.zeros(2, 3, dtype=torch.float64), ctrl.T], dim=1)
    last = torch.cat([torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, n_f, dtype=torch.float64)], dim=1)
    inv_delta = torch.linalg.inv(torch.cat([top, mid, last], dim=0))
    ys = torch.linspace(-1.0, 1.0, out_h, dtype=torch.float64)
    xs = torch.linspace(-1.0, 1.0, out_w, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # n×2
    p_hat = torch.cat([torch.ones(pts.shape[0], 1, dtype=torch.float64), pts, _tps_kernel(pts, ctrl)], dim=1)
    return p_hat @ inv_delta[:, :n_f]


class TPSLocalization(nn.Module):
    """Localisation network: conv-BN-ReLU blocks (2×2 max-pool between them, global average pool after
    the last), FC ``hidden`` + ReLU, FC -> 2F. The last FC starts at zero weight with its bias at the
    reference points, so the initial transform is the identity.

    Shapes: ``forward(x: B×C×H×W) -> B×F×2`` (x, y) points in [-1, 1].
    """

    def __init__(self, in_channels: int, num_fiducial: int, channels: Sequence[int] = (64, 128, 256, 512),
                 hidden: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2, 2) if i < len(channels) - 1 else nn.AdaptiveAvgPool2d(1))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True))
        self.fc2 = nn.Linear(hidden, num_fiducial * 2)
        self.num_fiducial = num_fiducial
        self.reset_to_identity()

    def reset_to_identity(self) -> None:
        """Zero the last layer's weight and set its bias to the reference points (identity warp)."""
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.copy_(reference_points(self.num_fiducial).reshape(-1).float())

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x).flatten(1)
        return self.fc2(self.fc1(h)).reshape(x.shape[0], self.num_fiducial, 2)


@RECTIFIERS.register("tps")
class TPSRectifier(nn.Module):
    """TPS spatial transformer (RARE / TRBA), initialised to the identity.

    Args:
        img_h, img_w: output size (the configured image size); inputs of any size are resampled to it.
        in_channels: image channels C.
        num_fiducial: F, an even number >= 4 (20 in TRBA).
        loc_channels: widths of the localisation CNN blocks (TRBA: 64, 128, 256, 512).
        loc_hidden: width of its hidden fully connected layer (TRBA: 256).

    Shapes: ``forward(x: B×C×H×W) -> B×C×img_h×img_w``. The grid is computed and sampled in fp32 even
    under autocast.
    """

    def __init__(self, img_h: int, img_w: int, in_channels: int, num_fiducial: int = 20,
                 loc_channels: Sequence[int] = (64, 128, 256, 512), loc_hidden: int = 256) -> None:
        super().__init__()
        if num_fiducial < 4 or num_fiducial % 2:
            raise ValueError(f"tps rectifier: num_fiducial must be an even number >= 4, got {num_fiducial}")
        if not loc_channels:
            raise ValueError("tps rectifier: loc_channels must list at least one width")
        self.img_h, self.img_w = img_h, img_w
        self.localization = TPSLocalization(in_channels, num_fiducial, tuple(loc_channels), loc_hidden)
        basis = tps_grid_basis(num_fiducial, img_h, img_w).float()
        self.register_buffer("grid_basis", basis, persistent=False)

    def sampling_grid(self, points: Tensor) -> Tensor:
        """B×F×2 fiducial points -> B×img_h×img_w×2 sampling grid (fp32)."""
        grid = torch.matmul(self.grid_basis, points.float())
        return grid.reshape(points.shape[0], self.img_h, self.img_w, 2)

    def forward(self, x: Tensor) -> Tensor:
        points = self.localization(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            grid = self.sampling_grid(points)
            out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.to(x.dtype)
