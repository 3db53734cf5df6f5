"""The ``none`` sequence model: features go straight to the decoder."""

from __future__ import annotations

from torch import Tensor, nn

from strkit.models.registry import SEQUENCES


@SEQUENCES.register("none")
class IdentitySequence(nn.Module):
    """No contextual modelling. Shapes: ``forward(x: B×T×D) -> B×T×D``; ``out_size = input_size``."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.out_size = input_size

    def forward(self, x: Tensor) -> Tensor:
        return x
