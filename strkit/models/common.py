"""Helpers shared by the stage modules: spatial-size arithmetic and weight initialisation."""

from __future__ import annotations

from torch import nn


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution / pooling window along one axis (floor mode, no dilation)."""
    return (size + 2 * padding - kernel) // stride + 1


def check_feature_size(module: str, out_hw: tuple[int, int], img_h: int, img_w: int) -> tuple[int, int]:
    """Return ``out_hw`` or raise ``ValueError`` if the input is too small to leave a feature map."""
    if out_hw[0] < 1 or out_hw[1] < 1:
        raise ValueError(f"{module}: an input of {img_h}x{img_w} (H x W) leaves no feature map "
                         f"(got {out_hw[0]}x{out_hw[1]}); use a larger data.img_h / data.img_w "
                         f"(32x100 is the standard size)")
    return out_hw


def init_conv_weights(module: nn.Module, mode: str = "fan_out") -> None:
    """He-normal conv weights, zero conv biases, BN weight 1 / bias 0 (the usual CNN initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
