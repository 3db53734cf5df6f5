"""The ``vgg`` backbone: the CRNN feature extractor exactly as in the four-stage STR benchmark."""

from __future__ import annotations

from torch import Tensor, nn

from strkit.models.common import check_feature_size, conv_out, init_conv_weights
from strkit.models.registry import BACKBONES


@BACKBONES.register("vgg")
class VGGBackbone(nn.Module):
    """CRNN's VGG-style CNN (Shi et al. 2016, as configured in Baek et al. 2019).

    Layers, with ``c = out_channels`` (512): conv c/8 - pool 2×2 - conv c/4 - pool 2×2 - conv c/2 -
    conv c/2 - pool (2,1) - conv c + BN - conv c + BN - pool (2,1) - conv c 2×2 valid; every conv 3×3
    pad 1 with ReLU unless stated. 5,549,824 parameters with 1 input channel and c=512.

    Shapes: ``forward(x: B×C×H×W) -> B×c×(H/16 - 1)×(W/4 - 1)``; 1×32×100 -> 512×1×24,
    1×32×128 -> 512×1×31.
    """

    def __init__(self, in_channels: int, img_h: int, img_w: int, out_channels: int = 512) -> None:
        super().__init__()
        c1, c2, c3, c4 = out_channels // 8, out_channels // 4, out_channels // 2, out_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(c1, c2, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(c2, c3, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c3, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c3, c4, 3, 1, 1, bias=False), nn.BatchNorm2d(c4), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c4, 3, 1, 1, bias=False), nn.BatchNorm2d(c4), nn.ReLU(inplace=True),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c4, c4, 2, 1, 0), nn.ReLU(inplace=True),
        )
        init_conv_weights(self, mode="fan_in")
        self.out_channels = out_channels
        h = conv_out(conv_out(conv_out(conv_out(img_h, 2, 2), 2, 2), 2, 2), 2, 2) - 1
        w = conv_out(conv_out(img_w, 2, 2), 2, 2) - 1
        self.out_hw = check_feature_size("backbone 'vgg'", (h, w), img_h, img_w)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
