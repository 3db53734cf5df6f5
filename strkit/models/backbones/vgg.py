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

    ``batch_norm``: ``"reference"`` puts BN after the 5th and 6th conv only (the published layout);
    ``"all"`` after every 3×3 conv (same layer shapes, +704 parameters at c=512), which leaves the
    CTC plateau far sooner when training from scratch on a small budget.

    Shapes: ``forward(x: B×C×H×W) -> B×c×(H/16 - 1)×(W/4 - 1)``; 1×32×100 -> 512×1×24,
    1×32×128 -> 512×1×31.
    """

    def __init__(self, in_channels: int, img_h: int, img_w: int, out_channels: int = 512,
                 batch_norm: str = "reference") -> None:
        super().__init__()
        if batch_norm not in ("reference", "all"):
            raise ValueError(f"backbone 'vgg': batch_norm must be 'reference' or 'all', got {batch_norm!r}")
        c1, c2, c3, c4 = out_channels // 8, out_channels // 4, out_channels // 2, out_channels

        def conv(cin: int, cout: int, bn: bool) -> list[nn.Module]:
            if not bn:
                return [nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(inplace=True)]
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        early = batch_norm == "all"
        self.body = nn.Sequential(
            *conv(in_channels, c1, early), nn.MaxPool2d(2, 2),
            *conv(c1, c2, early), nn.MaxPool2d(2, 2),
            *conv(c2, c3, early),
            *conv(c3, c3, early), nn.MaxPool2d((2, 1), (2, 1)),
            *conv(c3, c4, True),
            *conv(c4, c4, True),
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
