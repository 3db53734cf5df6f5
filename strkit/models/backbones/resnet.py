"""The ``resnet`` backbone: the 4-stage text ResNet of FAN (Cheng et al. 2017) used by TRBA."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from strkit.models.common import check_feature_size, conv_out, init_conv_weights
from strkit.models.registry import BACKBONES

Size2 = int | tuple[int, int]


def _conv_bn(c_in: int, c_out: int, kernel: Size2 = 3, stride: Size2 = 1,
             padding: Size2 = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), nn.BatchNorm2d(c_out)]


def _conv_bn_relu(c_in: int, c_out: int, kernel: Size2 = 3, stride: Size2 = 1,
                  padding: Size2 = 1) -> list[nn.Module]:
    return [*_conv_bn(c_in, c_out, kernel, stride, padding), nn.ReLU(inplace=True)]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection (1×1 conv-BN projection when the width
    changes). Shapes: ``B×c_in×H×W -> B×c_out×H×W``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(c_in, c_out), *_conv_bn(c_out, c_out))
        self.shortcut = nn.Identity() if c_in == c_out else nn.Sequential(*_conv_bn(c_in, c_out, 1, 1, 0))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _stage(c_in: int, c_out: int, blocks: int) -> list[nn.Module]:
    return [BasicBlock(c_in if i == 0 else c_out, c_out) for i in range(blocks)]


@BACKBONES.register("resnet")
class ResNetBackbone(nn.Module):
    """FAN-style text ResNet (as in the four-stage benchmark's TRBA), with ``c = out_channels`` (512):

    conv c/16, conv c/8 - pool 2×2 - stage1 (``layers[0]`` blocks, c/4) + conv - pool 2×2 -
    stage2 (c/2) + conv - pool 2×2 stride (2,1) pad (0,1) - stage3 (c) + conv - stage4 (c) -
    conv 2×2 stride (2,1) pad (0,1) - conv 2×2 valid; all convs bias-free with BN + ReLU;
    ``layers`` = (1, 2, 5, 3). 44,263,904 parameters with 1 input channel and c=512.

    Shapes: ``forward(x: B×C×H×W) -> B×c×(H/16 - 1)×(W/4 + 1)``; 1×32×100 -> 512×1×26,
    1×32×128 -> 512×1×33.
    """

    def __init__(self, in_channels: int, img_h: int, img_w: int, out_channels: int = 512,
                 layers: Sequence[int] = (1, 2, 5, 3)) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"backbone 'resnet': layers must be 4 positive block counts, got {list(layers)}")
        c = out_channels
        w1, w2, w3, w4 = c // 4, c // 2, c, c
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, c // 16), *_conv_bn_relu(c // 16, c // 8),
            nn.MaxPool2d(2, 2),
            *_stage(c // 8, w1, layers[0]), *_conv_bn_relu(w1, w1),
            nn.MaxPool2d(2, 2),
            *_stage(w1, w2, layers[1]), *_conv_bn_relu(w2, w2),
            nn.MaxPool2d(2, (2, 1), (0, 1)),
            *_stage(w2, w3, layers[2]), *_conv_bn_relu(w3, w3),
            *_stage(w3, w4, layers[3]),
            *_conv_bn_relu(w4, w4, 2, (2, 1), (0, 1)),
            *_conv_bn_relu(w4, w4, 2, 1, 0),
        )
        init_conv_weights(self, mode="fan_in")
        self.out_channels = w4
        h = conv_out(conv_out(conv_out(conv_out(img_h, 2, 2), 2, 2), 2, 2), 2, 2) - 1
        w = conv_out(conv_out(conv_out(conv_out(img_w, 2, 2), 2, 2), 2, 1, 1), 2, 1, 1) - 1
        self.out_hw = check_feature_size("backbone 'resnet'", (h, w), img_h, img_w)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
