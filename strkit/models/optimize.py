"""Inference-time transformations of a recognition model that keep its architecture and function.

- :func:`fuse_for_inference` folds every ``BatchNorm2d`` that directly follows a ``Conv2d`` (inside an
  ``nn.Sequential``, which is how every backbone and the TPS localisation network are built) into the
  convolution's weight and bias and replaces the BatchNorm with ``nn.Identity``. In eval mode a
  BatchNorm is a fixed per-channel affine map, so the fused model computes the same function (up to
  float rounding) with one kernel fewer per pair.
- :func:`cast_for_inference` stores the weights of the compute layers (convolutions, linear layers,
  LSTMs, embeddings) in bf16, so that inference runs in bf16 without autocast re-casting every weight
  on every call (at batch 1 that re-cast costs as much as a sixth of TRBA's time on a 2-core CPU).
  Normalisation layers and buffers (BatchNorm statistics, the TPS grid basis) stay fp32; inputs must
  be given in the new dtype.

Both results are for inference only: training them would train a different parametrisation, and
their ``state_dict`` differs from the original's (fused BatchNorms are gone; dtypes change).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: Layers whose parameters :func:`cast_for_inference` leaves in fp32.
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _fusable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None
            and conv.out_channels == bn.num_features)


def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold Conv2d -> BatchNorm2d pairs for inference; returns the fused model in eval mode.

    Args:
        model: any module (e.g. a :class:`strkit.models.recognizer.RecognitionModel`); the shapes of
            its inputs and outputs are unchanged (images B×C×H×W -> the same outputs as before).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The model (or its copy), in eval mode, with each fused BatchNorm replaced by ``nn.Identity``.
        Its attribute ``fused_pairs`` counts the folded pairs.
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


def cast_for_inference(model: nn.Module, dtype: torch.dtype = torch.bfloat16,
                       inplace: bool = False) -> nn.Module:
    """Store the floating-point parameters of every non-normalisation layer in ``dtype``.

    Args:
        model: a recognition model (or any module); its stages must run in the dtype of their weights
            (the four-stage modules do: :class:`~strkit.models.sequence.bilstm.BiLSTMSequence` and the
            attention decoder cast their input to it, the TPS rectifier samples in fp32).
        dtype: the storage and compute dtype, normally ``torch.bfloat16``.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The model (or its copy) in eval mode. Feed it images of ``dtype`` (B×C×H×W); logits come out
        in ``dtype`` (the attention decoder's in its own weights' dtype).
    """
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    for module in target.modules():
        if isinstance(module, NORM_LAYERS):
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)  # the same Parameter objects (LSTMs keep references)
    return target
