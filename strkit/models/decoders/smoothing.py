"""Label smoothing for the decoders' losses: the setting's check and the CTC form of it.

The cross-entropy decoders (``attention``, ``iterative_vl``) pass ε to
:func:`torch.nn.functional.cross_entropy`; CTC has no per-step targets to smooth, so ``ctc`` adds ε times
the KL divergence of every frame's distribution from the uniform one (:func:`uniform_kl`), as speech
recognisers do with CTC.
"""

from __future__ import annotations

import math

from torch import Tensor


def check_label_smoothing(decoder: str, value: float) -> float:
    """``value`` as a float in [0, 1), or a ValueError naming ``model.decoder.label_smoothing``."""
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"decoder '{decoder}': label_smoothing must be in [0, 1), got {value:g} "
                         f"(model.decoder.label_smoothing; 0.1 is the usual value, 0 = off)")
    return value


def uniform_kl(log_probs: Tensor) -> Tensor:
    """Mean over every frame of KL(uniform ‖ p) for log-probabilities ``log_probs`` (…×K): 0 when each
    frame is uniform, log K − mean log p otherwise."""
    return (-math.log(log_probs.shape[-1]) - log_probs.mean(-1)).mean()
