"""Weight sharing between the candidates of one cell (``model.backbone.weight_sharing: true``).

With separate weights (ProxylessNAS as published) each of a cell's 6–7 candidate ops is trained on the
steps that sample it, so a supernet of small MobileNetV2 cells spends thousands of steps on the CTC
plateau before any candidate has learned anything (docs/benchmarks.md). With sharing, a cell holds one
*superkernel*, the weights of its largest candidate, and every candidate is a slice of it, as in
Single-Path NAS (Stamoulis et al., 2019) and Once-for-All (Cai et al., 2020): ``kK`` uses the centre
K×K of the largest depthwise kernel, ``eE`` the first ``c_in·E`` hidden channels of the expansion and
projection. Every step then trains the shared tensors, whichever candidate it samples. Each candidate
keeps its own batch-norm layers (the statistics of a 3×3 and a 7×7 slice differ).

The binary gates, α, the latency table and the derived architecture do not change: the table times
standalone blocks, and the derived network is retrained from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SharedInvertedResidual(nn.Module):
    """The superkernel of one cell: the weights of its largest inverted-residual candidate.

    Args:
        c_in, c_out: cell widths. kernels / expansions: those of the candidates (the largest are kept).
        stride: the cell's stride (h, w).

    Parameters: ``expand`` (c_in·e_max)×c_in×1×1 (absent when every expansion is 1), ``depthwise``
    (c_in·e_max)×1×k_max×k_max, ``project`` c_out×(c_in·e_max)×1×1. It has no forward of its own: the
    :class:`SharedChoice` candidates compute with slices of it.
    """

    def __init__(self, c_in: int, c_out: int, kernels: Sequence[int], expansions: Sequence[int],
                 stride: tuple[int, int]) -> None:
        super().__init__()
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"shared inverted residual: kernels must be odd and positive, got {list(kernels)}")
        self.c_in, self.c_out, self.stride = c_in, c_out, (int(stride[0]), int(stride[1]))
        self.k_max, self.e_max = max(kernels), max(expansions)
        hidden = c_in * self.e_max
        self.expand = nn.Parameter(torch.empty(hidden, c_in, 1, 1)) if self.e_max > 1 else None
        self.depthwise = nn.Parameter(torch.empty(hidden, 1, self.k_max, self.k_max))
        self.project = nn.Parameter(torch.empty(c_out, hidden, 1, 1))
        for w in (self.expand, self.depthwise, self.project):
            if w is not None:  # He-normal, fan-out: as init_conv_weights does for the separate blocks
                nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")


class SharedChoice(nn.Module):
    """One candidate ``k{kernel}_e{expansion}`` of a :class:`SharedInvertedResidual`, with its own BNs.

    Computes exactly what an :class:`~strkit.models.backbones.blocks.InvertedResidual` with the sliced
    weights would: 1×1 expand (BN, ReLU6; none when ``expansion`` is 1) -> k×k depthwise (stride, BN,
    ReLU6) -> 1×1 projection (BN), identity shortcut when stride is (1, 1) and widths match.

    The superkernel is held by reference (the mixed edge registers it once), so that the candidates'
    ``parameters()`` are their batch-norm layers only.

    Shapes: ``forward(x: B×c_in×H×W) -> B×c_out×ceil(H/sh)×ceil(W/sw)``.
    """

    def __init__(self, shared: SharedInvertedResidual, kernel: int, expansion: int) -> None:
        super().__init__()
        if kernel > shared.k_max or expansion > shared.e_max or kernel % 2 == 0:
            raise ValueError(f"candidate k{kernel}_e{expansion} does not fit the superkernel "
                             f"k{shared.k_max}_e{shared.e_max}")
        self._shared = (shared,)  # a tuple: not registered as a submodule here
        self.kernel, self.expansion = kernel, expansion
        self.c_in, self.c_out, self.stride = shared.c_in, shared.c_out, shared.stride
        self.hidden = shared.c_in * expansion
        self.bn_expand = nn.BatchNorm2d(self.hidden) if expansion != 1 else None
        self.bn_depthwise = nn.BatchNorm2d(self.hidden)
        self.bn_project = nn.BatchNorm2d(shared.c_out)
        self.use_residual = self.stride == (1, 1) and shared.c_in == shared.c_out

    @property
    def shared(self) -> SharedInvertedResidual:
        """The superkernel this candidate slices."""
        return self._shared[0]

    def forward(self, x: Tensor) -> Tensor:
        s, hidden = self.shared, self.hidden
        h = x
        if self.bn_expand is not None:
            assert s.expand is not None
            h = F.relu6(self.bn_expand(F.conv2d(x, s.expand[:hidden])))
        off = (s.k_max - self.kernel) // 2
        weight = s.depthwise[:hidden, :, off:off + self.kernel, off:off + self.kernel]
        h = F.relu6(self.bn_depthwise(F.conv2d(h, weight, stride=self.stride, padding=self.kernel // 2,
                                               groups=hidden)))
        out = self.bn_project(F.conv2d(h, s.project[:, :hidden]))
        return x + out if self.use_residual else out
