"""The ``none`` rectifier: passes the image through unchanged."""

from __future__ import annotations

from torch import Tensor, nn

from strkit.models.registry import RECTIFIERS


@RECTIFIERS.register("none")
class IdentityRectifier(nn.Module):
    """No rectification.

    Shapes: ``forward(x: B×C×H×W) -> B×C×H×W`` (the same tensor).
    """

    def __init__(self, img_h: int, img_w: int, in_channels: int) -> None:
        super().__init__()
        self.img_h, self.img_w, self.in_channels = img_h, img_w, in_channels

    def forward(self, x: Tensor) -> Tensor:
        return x
