"""The ``itervm`` backbone wrapper: iterative vision modelling (after IterNet, Chu & Wang 2022).

The wrapped backbone runs ``iterations`` times on the same image. Pass 1 is the plain backbone. Every
later pass receives the previous pass's high-level feature (the backbone output, B×C'×H'×W'): at each
of the backbone's *levels* (the last layer before each change of spatial size) a 1×1 convolution
projects it to the level's width, it is resized to the level's size (bilinear) and added to the
level's feature map, so that low- and mid-level features are computed with the word-level context of
the previous pass. The output is the high-level feature of the last pass.

The levels need access to the inner backbone's intermediate features, without changing the backbone:
the wrapper flattens the backbone into its call sequence (the children of the backbone in
registration order, ``nn.Sequential`` containers expanded recursively) and runs that sequence itself.
At construction it checks, on a probe input, that the sequence reproduces the backbone's own
``forward`` exactly; backbones whose forward is not such a chain (none of strkit's) are refused with a
clear error. The probe runs in eval mode on a local random generator, so neither BN statistics nor
the global RNG are touched.

``share_weights: true`` runs one backbone every pass (parameters: the backbone + the projections);
``false`` gives every pass its own copy, initialised from the first pass's weights. The projections
start at zero, so at initialisation every pass returns the plain backbone's output.

Config::

    backbone: {name: itervm, iterations: 2, share_weights: true,
               backbone: {name: resnet, out_channels: 512, layers: [1, 2, 5, 3]}}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strkit.models.registry import BACKBONES


def flatten_chain(module: nn.Module) -> list[nn.Module]:
    """The children of ``module`` in registration order, ``nn.Sequential`` containers expanded
    recursively (a module without children is returned as a one-element list)."""
    children = list(module.children())
    if not children:
        return [module]
    out: list[nn.Module] = []
    for child in children:
        out.extend(flatten_chain(child) if isinstance(child, nn.Sequential) else [child])
    return out


def _run_chain(layers: list[nn.Module], x: Tensor) -> list[Tensor]:
    outs = []
    for layer in layers:
        x = layer(x)
        outs.append(x)
    return outs


@torch.no_grad()
def probe_levels(backbone: nn.Module, layers: list[nn.Module], in_channels: int, img_h: int, img_w: int,
                 where: str) -> list[tuple[int, int]]:
    """Check that ``layers`` run in order equal ``backbone.forward`` and return the levels as
    ``(layer index, channels)``: every layer after which the spatial size changes, the last one
    (the output) excluded.

    Raises:
        ValueError: the chain does not reproduce the backbone (it cannot be wrapped).
    """
    was_training = backbone.training
    backbone.eval()
    try:
        gen = torch.Generator().manual_seed(0)
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.randn(1, in_channels, img_h, img_w, generator=gen).to(device)
        ref = backbone(x)
        try:
            outs = _run_chain(layers, x.clone())
        except RuntimeError:  # e.g. a layer fed the wrong width: the children are not a chain
            outs = []
    finally:
        backbone.train(was_training)
    if not outs or outs[-1].shape != ref.shape or not torch.allclose(outs[-1], ref, rtol=1e-4, atol=1e-5):
        raise ValueError(f"{where}: backbone '{type(backbone).__name__}' is not a plain chain of its child "
                         f"modules (running them in order does not reproduce its forward), so itervm cannot "
                         f"reach its intermediate features; wrap a vgg, resnet, mobilenetv2 or searched "
                         f"backbone")
    levels = []
    for i in range(len(outs) - 1):
        if outs[i].dim() == 4 and outs[i].shape[-2:] != outs[i + 1].shape[-2:]:
            levels.append((i, int(outs[i].shape[1])))
    return levels


@BACKBONES.register("itervm")
class IterVMBackbone(nn.Module):
    """Runs an inner backbone ``iterations`` times, feeding each pass the previous pass's output.

    Args:
        in_channels, img_h, img_w: input image shape (passed to the inner backbone).
        backbone: the inner backbone's spec ``{name, **kwargs}`` (any registered backbone that is a
            chain of its children: vgg, resnet, mobilenetv2, searched).
        iterations: number of passes (>= 1; 1 is the plain backbone).
        share_weights: one backbone for every pass (true) or one copy per pass initialised from the
            first (false).
        arch: an architecture mapping for a ``searched`` inner backbone; when given it replaces the inner
            spec's ``arch`` (so a checkpoint's stored architecture reaches the inner backbone).

    Attributes:
        out_channels, out_hw: those of the inner backbone; ``arch``: the inner backbone's architecture
        (``searched``) or None; ``levels``: ``(layer index, channels)`` of the fed-back levels.

    Shapes: ``forward(x: B×C×H×W) -> B×C'×H'×W'`` (the inner backbone's output shape).
    """

    def __init__(self, in_channels: int, img_h: int, img_w: int,
                 backbone: Mapping[str, Any] | str = "resnet", iterations: int = 2,
                 share_weights: bool = True, arch: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"backbone 'itervm': iterations must be >= 1, got {iterations}")
        spec = {"name": backbone} if isinstance(backbone, str) else dict(backbone)
        if spec.get("name") == "itervm":
            raise ValueError("backbone 'itervm': the inner backbone cannot itself be 'itervm'; raise "
                             "'iterations' instead")
        if arch is not None:
            spec["arch"] = arch
        where = "model.backbone.backbone"
        first = BACKBONES.build(spec, where=where, in_channels=in_channels, img_h=img_h, img_w=img_w)
        self.iterations, self.share_weights = int(iterations), bool(share_weights)
        n_copies = 1 if self.share_weights else self.iterations
        self.passes = nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(n_copies - 1)])
        self.levels = probe_levels(first, flatten_chain(first), in_channels, img_h, img_w, where)
        self.out_channels: int = first.out_channels
        self.out_hw: tuple[int, int] = first.out_hw
        inner_arch = getattr(first, "arch", None)
        self.arch = inner_arch if isinstance(inner_arch, dict) else None
        n_feedback = 0 if self.iterations == 1 else (1 if self.share_weights else self.iterations - 1)
        self.feedback = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(self.out_channels, c, 1, bias=False) for _, c in self.levels)
            for _ in range(n_feedback))
        for proj in self.feedback.modules():
            if isinstance(proj, nn.Conv2d):
                nn.init.zeros_(proj.weight)

    @property
    def inner(self) -> nn.Module:
        """The (first pass's) inner backbone."""
        return self.passes[0]

    def forward(self, x: Tensor) -> Tensor:
        level_of = {idx: j for j, (idx, _) in enumerate(self.levels)}
        high: Tensor | None = None
        for p in range(self.iterations):
            net = self.passes[min(p, len(self.passes) - 1)]
            projs = self.feedback[min(p - 1, len(self.feedback) - 1)] if p > 0 else None
            h = x
            for i, layer in enumerate(flatten_chain(net)):
                h = layer(h)
                if projs is not None and high is not None and i in level_of:
                    fb = projs[level_of[i]](high)
                    h = h + F.interpolate(fb, size=h.shape[-2:], mode="bilinear", align_corners=False)
            high = h
        assert high is not None
        return high
