"""Transformer building blocks of the ``iterative_vl`` decoder: positional encoding, multi-head
attention with a boolean mask, feed-forward, a pre-norm encoder layer.

Written out with plain matmuls (no fused kernels) so that masks behave exactly as documented and the
modules trace and export to ONNX.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoid_encoding(length: int, dim: int, device: torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """length×dim fixed sinusoidal position encoding (Vaswani et al. 2017): even channels
    sin(p / 10000^(2i/dim)), odd channels cos(...)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(length, dim, device=device, dtype=torch.float32)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return enc.to(dtype)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with ``heads`` heads.

    A ``blocked`` mask (True = the query may not see that key) broadcastable to B×Lq×Lk is applied to
    the scores; a query whose keys are all blocked gets zero attention weights (output = output
    projection bias), never NaN.

    Shapes: ``forward(query B×Lq×D, key B×Lk×D, value B×Lk×D, blocked) -> (B×Lq×D, weights B×h×Lq×Lk)``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: d_model={dim} is not divisible by num_heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)  # B×h×n×d

    def forward(self, query: Tensor, key: Tensor, value: Tensor, blocked: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        q = self._split(self.q_proj(query))
        k, v = self._split(self.k_proj(key)), self._split(self.v_proj(value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # B×h×Lq×Lk
        if blocked is not None:
            mask = blocked.unsqueeze(1) if blocked.dim() == 3 else blocked
            scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
        else:
            weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(self.dropout(weights), v)  # B×h×Lq×d
        b, _, lq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, -1)), weights


class FeedForward(nn.Module):
    """Linear(D -> F) - ReLU - dropout - Linear(F -> D). Shapes: ``B×L×D -> B×L×D``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: ``x + SelfAttn(LN(x))``, then ``x + FFN(LN(x))``.

    Shapes: ``forward(x: B×T×D) -> B×T×D``.
    """

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h)[0])
        return x + self.drop(self.ffn(self.norm2(x)))

