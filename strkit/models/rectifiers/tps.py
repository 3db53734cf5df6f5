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

The localisation *body* (everything before the global pool) is pluggable: by default the fixed CNN
above (``loc_channels``); with ``loc: {name: ..., **kwargs}`` any entry of :data:`LOC_BODIES` —
``cnn`` (the same CNN), ``searched`` (the ``rectifier`` section of an architecture file written by
a joint search, :func:`strkit.models.backbones.searched.section_arch`) or, once :mod:`strkit.nas.
search_space` is imported, ``supernet`` (a searchable MobileNetV2 supernet of mixed cells: kernel ×
expansion per cell, ``skip`` in normal cells; searched jointly with the backbone). ``loc_input: [h, w]``
resizes the image (bilinear) before the body, so a searched body runs, and is timed, at that small
size; the sampling still reads the full-size image. Whatever the body, the last FC starts at zero
weight with the reference points as bias, so the initial transform is exactly the identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strkit.models.backbones.searched import SearchedBackbone, load_arch, section_arch
from strkit.models.registry import RECTIFIERS
from strkit.registry import Registry

#: Localisation bodies of the ``tps`` rectifier: factories ``(in_channels, img_h, img_w, **cfg)`` returning
#: a module with ``out_channels`` (``forward: B×C×h×w -> B×out_channels×h'×w'``). ``supernet`` is
#: registered by :mod:`strkit.nas.search_space`.
LOC_BODIES: Registry[nn.Module] = Registry("tps localisation network")
DEFAULT_LOC_CHANNELS = (64, 128, 256, 512)


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


def cnn_features(in_channels: int, channels: Sequence[int]) -> nn.Sequential:
    """The benchmark's localisation CNN: conv-BN-ReLU blocks with 2×2 max-pools between them and a global
    average pool after the last. ``B×C×H×W -> B×channels[-1]×1×1``; attribute ``out_channels``."""
    if not channels:
        raise ValueError("tps rectifier: loc_channels must list at least one width")
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c_out in enumerate(channels):
        layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(2, 2) if i < len(channels) - 1 else nn.AdaptiveAvgPool2d(1))
        c_in = c_out
    features = nn.Sequential(*layers)
    features.out_channels = c_in
    return features


@LOC_BODIES.register("cnn")
def _cnn_body(in_channels: int, img_h: int, img_w: int,
              channels: Sequence[int] = DEFAULT_LOC_CHANNELS) -> nn.Module:
    """``loc: {name: cnn, channels: [...]}``: the fixed CNN (the input size is free)."""
    return cnn_features(in_channels, tuple(channels))


@LOC_BODIES.register("searched")
def _searched_body(in_channels: int, img_h: int, img_w: int,
                   arch: str | Path | Mapping[str, Any] = "") -> nn.Module:
    """``loc: {name: searched, arch: PATH}``: the ``rectifier`` section of an architecture file (or of the
    mapping a checkpoint stores). The whole validated file is kept as ``source_arch``."""
    if not arch:
        raise ValueError("model.rectifier.loc.arch is not set: the 'searched' localisation body needs the "
                         "arch.json written by 'tools/search.py run' with a searched rectifier")
    spec = load_arch(arch)
    body = SearchedBackbone(in_channels, img_h, img_w, arch=section_arch(spec, "rectifier", "model.rectifier.loc.arch"))
    body.source_arch = spec
    return body


class TPSLocalization(nn.Module):
    """Localisation network: ``features`` (a body ending in, or followed by, a global average pool), FC
    ``hidden`` + ReLU, FC -> 2F. The last FC starts at zero weight with its bias at the reference points,
    so the initial transform is the identity whatever the body computes.

    Args:
        in_channels: image channels (used by the default CNN only).
        num_fiducial: F.
        channels: widths of the default CNN blocks (when ``body`` is None).
        hidden: width of the hidden FC layer.
        body: a localisation body (attribute ``out_channels``); None = the default CNN.

    Shapes: ``forward(x: B×C×h×w) -> B×F×2`` (x, y) points in [-1, 1].
    """

    def __init__(self, in_channels: int, num_fiducial: int, channels: Sequence[int] = DEFAULT_LOC_CHANNELS,
                 hidden: int = 256, body: nn.Module | None = None) -> None:
        super().__init__()
        self.plugged = body is not None
        if body is None:
            self.features: nn.Module = cnn_features(in_channels, tuple(channels))
        else:
            self.features = nn.Sequential(body, nn.AdaptiveAvgPool2d(1))
        c_in = int(body.out_channels if body is not None else self.features.out_channels)
        self.feature_channels = c_in
        self.fc1 = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True))
        self.fc2 = nn.Linear(hidden, num_fiducial * 2)
        self.num_fiducial = num_fiducial
        self.reset_to_identity()

    @property
    def body(self) -> nn.Module:
        """The pluggable body (``features`` without its global pool; the default CNN as a whole)."""
        return self.features[0] if self.plugged else self.features

    def reset_to_identity(self) -> None:
        """Zero the last layer's weight and set its bias to the reference points (identity warp)."""
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.copy_(reference_points(self.num_fiducial).reshape(-1).float())

    def points(self, pooled: Tensor) -> Tensor:
        """Pooled features ``B×C'×1×1`` -> ``B×F×2`` points (the FCs)."""
        return self.fc2(self.fc1(pooled.flatten(1))).reshape(pooled.shape[0], self.num_fiducial, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.points(self.features(x))


class TPSRemainder(nn.Module):
    """Everything a :class:`TPSRectifier` runs except its localisation body, fed a constant body output:
    the fixed remainder that the latency table times when the body is searched (input resize, global
    pool, FCs, TPS matrix product, ``grid_sample``).

    Shapes: ``forward(x: B×C×H×W) -> B×C×img_h×img_w``; ``feats``: 1×C'×h'×w' (expanded to B).
    """

    def __init__(self, tps: TPSRectifier, feats: Tensor) -> None:
        super().__init__()
        self.tps = tps
        self.register_buffer("feats", feats, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        self.tps.loc_view(x)  # the resize the body's input needs (its result is the body's business)
        pooled = F.adaptive_avg_pool2d(self.feats.expand(x.shape[0], -1, -1, -1), 1)
        points = self.tps.localization.points(pooled)
        return self.tps.warp(x, points)


def _loc_input(loc_input: Sequence[int] | None, img_h: int, img_w: int) -> tuple[int, int]:
    if loc_input is None:
        return img_h, img_w
    if isinstance(loc_input, str) or len(loc_input) != 2 or any(int(v) < 1 for v in loc_input):
        raise ValueError(f"model.rectifier.loc_input must be [height, width] >= 1 (e.g. [16, 64]), got {loc_input!r}")
    return int(loc_input[0]), int(loc_input[1])


@RECTIFIERS.register("tps")
class TPSRectifier(nn.Module):
    """TPS spatial transformer (RARE / TRBA), initialised to the identity.

    Args:
        img_h, img_w: output size (the configured image size); inputs of any size are resampled to it.
        in_channels: image channels C.
        num_fiducial: F, an even number >= 4 (20 in TRBA).
        loc_channels: widths of the default localisation CNN blocks (TRBA: 64, 128, 256, 512); not with
            ``loc``.
        loc_hidden: width of its hidden fully connected layer (TRBA: 256).
        loc: ``{name, **kwargs}`` of a :data:`LOC_BODIES` entry (``cnn``, ``searched``, ``supernet``)
            instead of the default CNN.
        loc_input: ``[h, w]`` the image is resized to (bilinear) before the localisation body; default:
            the image as given (a ``supernet`` / ``searched`` body is then built for ``img_h × img_w``).

    Attributes:
        arch: the architecture mapping of a ``searched`` body (stored in checkpoints), else None.
        loc_hw: the input size the localisation body is built for.

    Shapes: ``forward(x: B×C×H×W) -> B×C×img_h×img_w``. The grid is computed and sampled in fp32 even
    under autocast.
    """

    def __init__(self, img_h: int, img_w: int, in_channels: int, num_fiducial: int = 20,
                 loc_channels: Sequence[int] | None = None, loc_hidden: int = 256,
                 loc: Mapping[str, Any] | str | None = None, loc_input: Sequence[int] | None = None) -> None:
        super().__init__()
        if num_fiducial < 4 or num_fiducial % 2:
            raise ValueError(f"tps rectifier: num_fiducial must be an even number >= 4, got {num_fiducial}")
        if loc is not None and loc_channels is not None:
            raise ValueError("tps rectifier: set either model.rectifier.loc_channels (the fixed CNN) or "
                             "model.rectifier.loc (a localisation body: cnn, searched, supernet), not both")
        self.img_h, self.img_w, self.in_channels = img_h, img_w, in_channels
        self.loc_hw = _loc_input(loc_input, img_h, img_w)
        self.resize_loc = loc_input is not None
        body = None
        if loc is not None:
            body = LOC_BODIES.build(loc, where="model.rectifier.loc", in_channels=in_channels,
                                    img_h=self.loc_hw[0], img_w=self.loc_hw[1])
        channels = DEFAULT_LOC_CHANNELS if loc_channels is None else tuple(loc_channels)
        self.localization = TPSLocalization(in_channels, num_fiducial, channels, loc_hidden, body=body)
        source = getattr(body, "source_arch", None)
        self.arch: dict[str, Any] | None = source if isinstance(source, dict) else None
        basis = tps_grid_basis(num_fiducial, img_h, img_w).float()
        self.register_buffer("grid_basis", basis, persistent=False)

    def loc_view(self, x: Tensor) -> Tensor:
        """The image as the localisation body sees it: resized to ``loc_input`` when set.
        ``B×C×H×W -> B×C×h×w``."""
        if not self.resize_loc:
            return x
        return F.interpolate(x, size=self.loc_hw, mode="bilinear", align_corners=False)

    def sampling_grid(self, points: Tensor) -> Tensor:
        """B×F×2 fiducial points -> B×img_h×img_w×2 sampling grid (fp32)."""
        grid = torch.matmul(self.grid_basis, points.float())
        return grid.reshape(points.shape[0], self.img_h, self.img_w, 2)

    def warp(self, x: Tensor, points: Tensor) -> Tensor:
        """Resample ``x`` (B×C×H×W) along the spline through ``points`` (B×F×2) -> B×C×img_h×img_w."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            grid = self.sampling_grid(points)
            out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.to(x.dtype)

    def remainder(self, batch: int = 1) -> tuple[nn.Module, Tensor]:
        """(:class:`TPSRemainder`, example B×C×img_h×img_w images): what the rectifier costs besides its
        localisation body (for the latency table when the body is searched)."""
        body = self.localization.body
        h, w = (int(v) for v in getattr(body, "out_hw", (1, 1)))
        images = torch.randn(batch, self.in_channels, self.img_h, self.img_w)
        return TPSRemainder(self, torch.randn(1, int(body.out_channels), h, w)), images

    def forward(self, x: Tensor) -> Tensor:
        return self.warp(x, self.localization(self.loc_view(x)))
