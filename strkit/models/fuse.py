"""Inference-time graph simplification that leaves the architecture's function unchanged.

:func:`fuse_for_inference` folds every ``BatchNorm2d`` that directly follows a ``Conv2d`` (inside an
``nn.Sequential``, which is how every backbone and the TPS localisation network are built) into the
convolution's weight and bias, and replaces the BatchNorm with ``nn.Identity``. In eval mode a
BatchNorm is a fixed per-channel affine map, so the fused model computes the same function (up to
float rounding) with one kernel fewer per pair. The result is for inference only: its ``state_dict``
no longer has the BatchNorm entries, and training it would train a different parametrisation.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fusable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None
            and conv.out_channels == bn.num_features)


def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold Conv2d -> BatchNorm2d pairs for inference; returns the fused model in eval mode.

    Args:
        model: any module (e.g. a :class:`strkit.models.recognizer.RecognitionModel`); shapes of its
            inputs and outputs are unchanged (images B×C×H×W -> the same outputs as before).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The model (or its copy), in eval mode, with each fused BatchNorm replaced by ``nn.Identity``.
        The attribute ``fused_pairs`` on the returned model counts the folded pairs.
    """
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    fused = 0
    for module in list(target.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = module._modules[first], module._modules[second]
            if conv is None or bn is None or not _fusable(conv, bn):
                continue
            module._modules[first] = fuse_conv_bn_eval(conv, bn)
            module._modules[second] = nn.Identity()
            fused += 1
    target.fused_pairs = fused
    return target
