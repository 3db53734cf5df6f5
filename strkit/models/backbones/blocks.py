"""Building blocks of the MobileNetV2-family backbones (hand-set ``mobilenetv2`` and ``searched``).

Every block op has the same constructor ``(c_in, c_out, kernel, expansion, stride)`` and is registered
in :data:`BLOCK_OPS`, so a block list (or a search space's candidate list) names ops instead of
branching on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from strkit.models.common import conv_out
from strkit.registry import Registry

BLOCK_OPS: Registry = Registry("block op")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a (width-multiplied) channel count to the nearest multiple of ``divisor``, never going
    more than 10% below ``value`` (the MobileNet convention)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return out


def conv_bn_act(c_in: int, c_out: int, kernel: int = 1, stride: tuple[int, int] = (1, 1), groups: int = 1,
                act: bool = True) -> nn.Sequential:
    """k×k conv (padding k//2, no bias) + BN (+ ReLU6). Shapes: ``B×c_in×H×W -> B×c_out×H/sh×W/sw``
    (ceil for odd kernels)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


def strided_size(size: int, kernel: int, stride: int) -> int:
    """Output length of a k×k, padding k//2 conv along one axis."""
    return conv_out(size, kernel, stride, kernel // 2)


@BLOCK_OPS.register("mbconv")
class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1×1 expand (c_in·e, BN, ReLU6; omitted when e = 1) -> k×k depthwise
    (stride, BN, ReLU6) -> 1×1 linear projection (BN). Identity shortcut when stride is (1, 1) and
    c_in == c_out.

    Shapes: ``forward(x: B×c_in×H×W) -> B×c_out×ceil(H/sh)×ceil(W/sw)`` (odd ``kernel``).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int,
                 stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"inverted residual: kernel must be odd and positive, got {kernel}")
        if expansion < 1:
            raise ValueError(f"inverted residual: expansion must be >= 1, got {expansion}")
        stride = (int(stride[0]), int(stride[1]))
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_act(c_in, hidden, 1))
        layers.append(conv_bn_act(hidden, hidden, kernel, stride, groups=hidden))
        layers.append(conv_bn_act(hidden, c_out, 1, act=False))
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == (1, 1) and c_in == c_out
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.kernel, self.expansion = kernel, expansion

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


@BLOCK_OPS.register("skip")
class SkipBlock(nn.Module):
    """Identity op (a dropped cell). Only valid with stride (1, 1) and c_in == c_out; ``kernel`` and
    ``expansion`` are ignored. Shapes: ``forward(x: B×C×H×W) -> x``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 0, expansion: int = 0,
                 stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        if c_in != c_out or tuple(stride) != (1, 1):
            raise ValueError(f"skip block needs stride (1, 1) and equal widths, got {c_in}->{c_out} "
                             f"stride {tuple(stride)}; use an 'mbconv' block to change width or size")
        self.c_in = self.c_out = c_in
        self.stride = (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x


@dataclass(frozen=True)
class BlockSpec:
    """One block of a MobileNetV2-style backbone.

    ``op`` names an entry of :data:`BLOCK_OPS`; ``out_channels`` of a ``skip`` block is its input width
    (0 = "same as input").
    """

    op: str = "mbconv"
    kernel: int = 3
    expansion: int = 6
    out_channels: int = 0
    stride: tuple[int, int] = (1, 1)

    @classmethod
    def parse(cls, entry: Any, where: str = "block") -> BlockSpec:
        """Read ``[kernel, expansion, out_channels, stride_h, stride_w]``, ``"skip"`` or a mapping
        ``{op, kernel, expansion, out_channels, stride: [h, w]}``."""
        if isinstance(entry, BlockSpec):
            return entry
        if isinstance(entry, str):
            return cls(op=entry, kernel=0, expansion=0)
        if isinstance(entry, list | tuple) and len(entry) == 5 and all(isinstance(v, int) for v in entry):
            k, e, c, sh, sw = entry
            return cls("mbconv", k, e, c, (sh, sw))
        if isinstance(entry, dict):
            known = {"op", "kernel", "expansion", "out_channels", "stride"}
            if set(entry) - known:
                raise ValueError(f"{where}: unknown key(s) {sorted(set(entry) - known)}; "
                                 f"accepted: {sorted(known)}")
            stride = entry.get("stride", (1, 1))
            stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
            return cls(entry.get("op", "mbconv"), int(entry.get("kernel", 3)), int(entry.get("expansion", 6)),
                       int(entry.get("out_channels", 0)), (int(stride[0]), int(stride[1])))
        raise ValueError(f"{where}: expected [kernel, expansion, out_channels, stride_h, stride_w], "
                         f"'skip' or a mapping, got {entry!r}")

    def build(self, c_in: int, width_mult: float = 1.0) -> nn.Module:
        """Instantiate the op with input width ``c_in`` (``out_channels`` scaled by ``width_mult``)."""
        c_out = make_divisible(self.out_channels * width_mult) if self.out_channels else c_in
        return BLOCK_OPS.get(self.op)(c_in, c_out, self.kernel, self.expansion, self.stride)
