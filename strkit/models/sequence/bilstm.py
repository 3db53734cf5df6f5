"""The ``bilstm`` sequence model: stacked bidirectional LSTMs, each followed by a linear layer (CRNN/TRBA)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from strkit.models.registry import SEQUENCES


class BidirectionalLSTM(nn.Module):
    """One bidirectional LSTM (hidden ``h`` per direction) + Linear(2h -> ``out_size``).

    ``init``: ``"torch"`` keeps PyTorch's uniform ±1/sqrt(h) initialisation; ``"orthogonal"`` uses
    Xavier input weights, orthogonal recurrent weights per gate, zero biases with a forget-gate bias of
    0.5, and a Xavier projection (same parameters; on a 12-word sanity set CRNN's CTC loss after 150
    steps of 16 fell to 2.18 instead of 2.97).

    Shapes: ``forward(x: B×T×input_size) -> B×T×out_size``.
    """

    def __init__(self, input_size: int, hidden_size: int, out_size: int, init: str = "orthogonal") -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.proj = nn.Linear(2 * hidden_size, out_size)
        if init == "orthogonal":
            self._init_orthogonal()
        elif init != "torch":
            raise ValueError(f"sequence 'bilstm': init must be 'orthogonal' or 'torch', got {init!r}")

    @torch.no_grad()
    def _init_orthogonal(self) -> None:
        h = self.rnn.hidden_size
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                for gate in range(4):  # i, f, g, o blocks of 4h rows
                    nn.init.orthogonal_(p[gate * h:(gate + 1) * h])
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            else:  # bias_ih / bias_hh: forget gate 0.25 + 0.25
                p.zero_()
                p[h:2 * h] = 0.25
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.proj(out)


@SEQUENCES.register("bilstm")
class BiLSTMSequence(nn.Module):
    """``num_layers`` stacked :class:`BidirectionalLSTM` layers, each projecting back to ``hidden_size``
    (the benchmark's BiLSTM: 2 layers, hidden 256).

    Shapes: ``forward(x: B×T×input_size) -> B×T×hidden_size``; ``out_size = hidden_size``.

    Precision: by default the LSTMs run in the dtype of their weights (fp32 unless the model was cast,
    e.g. by :func:`strkit.models.optimize.cast_for_inference`) with autocast switched off inside, so
    under bf16 autocast the output is fp32. With ``autocast=True`` they follow the caller's autocast
    instead (bf16 on CPU, oneDNN's bf16 LSTM; the output is then bf16): about 1.4× faster LSTMs and
    1.15× faster CRNN training steps on a 2-core AVX-512-bf16 CPU, with gradients as close to fp32 as
    those of the bf16 convolutions (docs/benchmarks.md). The parameters are the same either way.
    """

    def __init__(self, input_size: int, hidden_size: int = 256, num_layers: int = 2,
                 autocast: bool = False, init: str = "orthogonal") -> None:
        super().__init__()
        if num_layers < 1 or hidden_size < 1:
            raise ValueError(f"sequence 'bilstm': hidden_size and num_layers must be >= 1, "
                             f"got {hidden_size}, {num_layers}")
        self.layers = nn.Sequential(*[
            BidirectionalLSTM(input_size if i == 0 else hidden_size, hidden_size, hidden_size, init)
            for i in range(num_layers)
        ])
        self.out_size = hidden_size
        self.autocast = bool(autocast)

    def forward(self, x: Tensor) -> Tensor:
        if self.autocast and torch.is_autocast_enabled(x.device.type):
            return self.layers(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.layers(x.to(self.layers[0].rnn.weight_ih_l0.dtype))
