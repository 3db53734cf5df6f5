"""The ``mobilenetv2`` backbone: inverted-residual stacks with text-shaped strides, from a block list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from strkit.models.backbones.blocks import BlockSpec, conv_bn_act, make_divisible, strided_size
from strkit.models.common import check_feature_size, init_conv_weights
from strkit.models.registry import BACKBONES

# [kernel, expansion, out_channels, stride_h, stride_w]. With the (2, 2) stem the height is divided
# by 32 (32 -> 1) and the width by 4 (100 -> 25 steps): MobileNetV2's widths and depths, with the
# later stride-2 stages turned into (2, 1).
DEFAULT_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 16, 1, 1),
    (3, 6, 24, 2, 2), (3, 6, 24, 1, 1),
    (3, 6, 32, 2, 1), (3, 6, 32, 1, 1), (3, 6, 32, 1, 1),
    (3, 6, 64, 2, 1), (3, 6, 64, 1, 1), (3, 6, 64, 1, 1), (3, 6, 64, 1, 1),
    (3, 6, 96, 1, 1), (3, 6, 96, 1, 1), (3, 6, 96, 1, 1),
    (3, 6, 160, 2, 1), (3, 6, 160, 1, 1), (3, 6, 160, 1, 1),
    (3, 6, 320, 1, 1),
)


@BACKBONES.register("mobilenetv2")
class MobileNetV2Backbone(nn.Module):
    """Stem conv 3×3 (BN, ReLU6) -> inverted-residual blocks -> 1×1 conv (BN, ReLU6) to ``out_channels``.

    Args:
        in_channels, img_h, img_w: input image shape.
        blocks: block list, each ``[kernel, expansion, out_channels, stride_h, stride_w]``, ``"skip"``
            or a mapping (see :class:`~strkit.models.backbones.blocks.BlockSpec`).
        stem_channels: width of the stem conv; stem_stride: its stride (h, w).
        out_channels: width of the final 1×1 conv (not scaled by ``width_mult``).
        width_mult: multiplier for the stem and block widths (rounded to multiples of 8).

    Shapes: ``forward(x: B×C×H×W) -> B×out_channels×H'×W'``; with the default blocks
    1×32×100 -> 384×1×25 and 1×32×128 -> 384×1×32.
    """

    def __init__(self, in_channels: int, img_h: int, img_w: int,
                 blocks: Sequence[Any] = DEFAULT_BLOCKS, stem_channels: int = 32,
                 stem_stride: Sequence[int] = (2, 2), out_channels: int = 384,
                 width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"backbone 'mobilenetv2': width_mult must be > 0, got {width_mult}")
        specs = [BlockSpec.parse(b, where=f"backbone 'mobilenetv2' blocks[{i}]")
                 for i, b in enumerate(blocks)]
        sh, sw = (int(stem_stride[0]), int(stem_stride[1]))
        c = make_divisible(stem_channels * width_mult)
        self.stem = conv_bn_act(in_channels, c, 3, (sh, sw))
        h, w = strided_size(img_h, 3, sh), strided_size(img_w, 3, sw)
        layers: list[nn.Module] = []
        for i, spec in enumerate(specs):
            try:
                block = spec.build(c, width_mult)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"backbone 'mobilenetv2' blocks[{i}]: {exc}") from None
            layers.append(block)
            c = block.c_out
            k = max(spec.kernel, 1)
            h, w = strided_size(h, k, block.stride[0]), strided_size(w, k, block.stride[1])
        self.blocks = nn.Sequential(*layers)
        self.head = conv_bn_act(c, out_channels, 1)
        init_conv_weights(self, mode="fan_out")
        self.out_channels = out_channels
        self.out_hw = check_feature_size("backbone 'mobilenetv2'", (h, w), img_h, img_w)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))
