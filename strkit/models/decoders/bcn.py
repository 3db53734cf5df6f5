"""The bidirectional cloze network (BCN): the language model of the ``iterative_vl`` decoder (after
ABINet, Fang et al. CVPR 2021).

Input: a probability distribution over the K classes at each of the L output positions (the current
prediction, or one-hot text when pre-training). Every position reads the *other* positions only: the
queries are position encodings, the keys and values are the embedded distributions (plus position
encodings), and the attention mask hides each position from itself (and, optionally, every position
after the predicted end of the word). The memory is never updated from the queries, so after any
number of layers position i's output still depends on no input at position i: a cloze task in both
directions at once, which is what lets the model correct a wrong character from its context.

Shapes: ``BCNLanguageModel.forward(probs B×L×K) -> (features B×L×D, logits B×L×K)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strkit.models.decoders.transformer import FeedForward, MultiHeadAttention, sinusoid_encoding


def cloze_mask(lengths: Tensor | None, steps: int, device: torch.device | None = None) -> Tensor:
    """Attention mask of the BCN: True where query i may not see key j.

    ``blocked[b, i, j] = (i == j) or (j >= lengths[b])``; the diagonal is always blocked.

    Args:
        lengths: (B,) number of visible positions per sample (the word plus its EOS), or ``None`` for
            no length limit.
        steps: L, the number of positions.

    Returns:
        bool B×L×L (1×L×L when ``lengths`` is None).
    """
    idx = torch.arange(steps, device=device if lengths is None else lengths.device)
    diag = (idx.unsqueeze(1) == idx.unsqueeze(0)).unsqueeze(0)  # 1×L×L
    if lengths is None:
        return diag
    beyond = idx.view(1, 1, -1) >= lengths.view(-1, 1, 1)  # B×1×L
    return diag | beyond


def prediction_lengths(probs: Tensor, eos: int) -> Tensor:
    """(B,) length of each predicted sequence including its EOS: the position of the first EOS (argmax
    class) + 1, or L when there is none. ``probs``: B×L×K."""
    is_eos = probs.argmax(dim=-1) == eos  # B×L
    steps = probs.shape[1]
    first = is_eos.float().argmax(dim=-1)  # index of the first True (0 when none)
    return torch.where(is_eos.any(dim=-1), first + 1, torch.full_like(first, steps))


def corrupt_tokens(tokens: Tensor, first_char: int, num_classes: int, p: float,
                   generator: torch.Generator | None = None) -> Tensor:
    """Replace each character token (id >= ``first_char``) by a random character with probability ``p``
    (the noisy text a language model is pre-trained to correct). ``tokens``: B×L ids; returns a copy."""
    if p <= 0:
        return tokens.clone()
    is_char = tokens >= first_char
    flip = (torch.rand(tokens.shape, generator=generator) < p).to(tokens.device) & is_char
    random_chars = torch.randint(first_char, num_classes, tokens.shape, generator=generator).to(tokens.device)
    return torch.where(flip, random_chars, tokens)


class ClozeLayer(nn.Module):
    """Pre-norm cross-attention layer: ``q + Attn(LN(q), memory, memory, blocked)``, then
    ``q + FFN(LN(q))``. No self-attention over the queries (it would leak a position's own input back
    to it through its neighbours). Shapes: ``forward(q B×L×D, memory B×L×D, blocked) -> B×L×D``."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: Tensor, memory: Tensor, blocked: Tensor) -> Tensor:
        q = q + self.drop(self.attn(self.norm1(q), memory, memory, blocked)[0])
        return q + self.drop(self.ffn(self.norm2(q)))


class BCNLanguageModel(nn.Module):
    """Bidirectional cloze language model over L = ``steps`` positions.

    Args:
        num_classes: K (the attention codec's classes: EOS, BOS, PAD, characters).
        steps: L, positions (max_length + 1).
        dim, heads, hidden, layers, dropout: transformer sizes.
        eos: the EOS class id (for the length mask).
        length_mask: also hide the positions after the first predicted EOS.

    Shapes: ``forward(probs: B×L×K) -> (features B×L×dim, logits B×L×K)``.
    """

    def __init__(self, num_classes: int, steps: int, dim: int = 256, heads: int = 4, hidden: int = 1024,
                 layers: int = 3, dropout: float = 0.1, eos: int = 0, length_mask: bool = True) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"language model: lm_layers must be >= 1, got {layers}")
        self.steps, self.eos, self.length_mask = steps, eos, length_mask
        self.token_proj = nn.Linear(num_classes, dim, bias=False)
        self.memory_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(ClozeLayer(dim, heads, hidden, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)
        self.register_buffer("pos", sinusoid_encoding(steps, dim), persistent=False)

    def mask(self, probs: Tensor) -> Tensor:
        """The attention mask used for ``probs`` (B×L×K): bool B×L×L or 1×L×L (see :func:`cloze_mask`)."""
        lengths = prediction_lengths(probs, self.eos) if self.length_mask else None
        return cloze_mask(lengths, probs.shape[1], probs.device)

    def forward(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        b, steps, _ = probs.shape
        pos = self.pos[:steps].to(probs.dtype)
        blocked = self.mask(probs)
        memory = self.memory_norm(self.token_proj(probs) + pos)
        q = pos.unsqueeze(0).expand(b, steps, -1)
        for layer in self.layers:
            q = layer(q, memory, blocked)
        feats = self.norm(q)
        return feats, self.classifier(feats)


def one_hot_probs(tokens: Tensor, num_classes: int) -> Tensor:
    """B×L ids -> B×L×K one-hot float distributions (the language model's text input)."""
    return F.one_hot(tokens, num_classes).float()
