"""The ``iterative_vl`` decoder: parallel vision decoding, a cloze language model and gated fusion,
refined iteratively (the ABINet / IterNet head; Fang et al. CVPR 2021, Chu & Wang 2022).

1. Vision. The sequence features (B×T×D) are projected to ``d_model``, given sinusoidal positions and
   passed through ``encoder_layers`` transformer layers. A *position attention* reads the L = max_length
   + 1 output positions in parallel: the queries are position encodings of the output steps, the keys
   come from a small 1-D U-Net over the encoded features, the values are the encoded features.
   A linear layer gives the vision logits.
2. Language. :class:`~strkit.models.decoders.bcn.BCNLanguageModel` reads the softmax of the current
   logits, detached (gradients do not flow from the language model into the vision model, as in
   ABINet), and predicts every position from the others.
3. Fusion. ``g = σ(W [v; l])``, ``f = g ⊙ v + (1 − g) ⊙ l`` and a linear layer give the fused logits.
4. Steps 2-3 repeat ``iterations`` times, each time on the previous fused prediction.

``forward`` returns the last fused logits (the vision logits when ``iterations`` is 0, the setting for
vision pre-training); all intermediate logits are kept for :meth:`IterativeVLDecoder.loss` (deep
supervision) when targets are given. ``iterations`` does not change the parameters, so weights move
freely between the training stages (language pre-training, vision pre-training, joint training).

Shapes: ``forward(features: B×T×D, targets={'tokens': B×(max_length+2)} | None) -> B×(max_length+1)×K``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strkit.codecs import AttentionCodec
from strkit.greedy_decoding import Prediction
from strkit.models.decoders.bcn import BCNLanguageModel, corrupt_tokens, one_hot_probs
from strkit.models.decoders.smoothing import check_label_smoothing
from strkit.models.decoders.transformer import EncoderLayer, sinusoid_encoding
from strkit.models.registry import DECODERS

FIRST_CHAR_ID = 3  # AttentionCodec: EOS=0, BOS=1, PAD=2, characters from 3


def _conv1d_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm1d(c_out),
                         nn.ReLU(inplace=True))


class PositionAttention(nn.Module):
    """Parallel attention of L output positions over T feature steps (ABINet's position attention, on
    a 1-D sequence).

    Keys: a two-level 1-D U-Net (stride-2 conv-BN-ReLU down to ``key_channels``, linear upsampling and
    skip connections back to ``dim``) over the features; queries: a linear map of the L position
    encodings; values: the features. Scores are scaled by 1/√dim.

    Shapes: ``forward(feats: B×T×dim) -> (B×L×dim, attention B×L×T)``.
    """

    def __init__(self, dim: int, steps: int, key_channels: int = 64) -> None:
        super().__init__()
        self.down1 = _conv1d_bn_relu(dim, key_channels, 2)
        self.down2 = _conv1d_bn_relu(key_channels, key_channels, 2)
        self.up2 = _conv1d_bn_relu(key_channels, key_channels)
        self.up1 = _conv1d_bn_relu(key_channels, dim)
        self.query = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)
        self.register_buffer("query_pos", sinusoid_encoding(steps, dim), persistent=False)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        x = feats.transpose(1, 2)  # B×D×T
        e1 = self.down1(x)
        e2 = self.down2(e1)
        d1 = self.up2(F.interpolate(e2, size=e1.shape[-1], mode="linear", align_corners=False)) + e1
        keys = self.up1(F.interpolate(d1, size=x.shape[-1], mode="linear", align_corners=False)) + x
        q = self.query(self.query_pos.to(feats.dtype))  # L×D
        attn = torch.softmax(torch.matmul(q, keys) * self.scale, dim=-1)  # B×L×T
        return torch.matmul(attn, feats), attn


class GatedFusion(nn.Module):
    """``g = σ(W [v; l] + b)``, ``f = g ⊙ v + (1 − g) ⊙ l``. Shapes: two B×L×D -> B×L×D."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, vision: Tensor, language: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(torch.cat([vision, language], dim=-1)))
        return g * vision + (1.0 - g) * language


@dataclass
class DeepOutputs:
    """Every output of one forward pass (B×L×K logits each): ``vision``, then per iteration
    ``language[i]`` and ``fusion[i]``; ``final`` is what ``forward`` returned."""

    vision: Tensor
    language: list[Tensor]
    fusion: list[Tensor]
    final: Tensor


@DECODERS.register("iterative_vl")
class IterativeVLDecoder(nn.Module):
    """Vision decoder + bidirectional cloze language model + gated fusion, iterated (see module doc).

    Args:
        input_size: D of the incoming features; num_classes: K; max_length: longest label.
        bos, eos, pad: the attention codec's special ids.
        d_model, num_heads, ffn_size, dropout: transformer sizes (vision encoder and language model).
        encoder_layers: transformer layers over the visual features before the position attention (0-n).
        lm_layers: layers of the language model.
        iterations: language/fusion refinement rounds (0 = vision only; the language model and the
            fusion are then frozen, as they are unused).
        key_channels: width of the position attention's key U-Net.
        length_mask: the language model also hides positions after the predicted end of the word.
        loss_weights: ``[vision, language, fusion]`` weights of the deep-supervision loss.
        label_smoothing: ε of every cross-entropy term (training only; 0 = off).

    Attributes:
        vision_encoder, position_attention, vision_classifier, language (the BCN), fusion,
        fusion_classifier: the parts (``language`` is what text-only pre-training trains).

    Shapes: ``forward(features: B×T×D, targets) -> logits B×(max_length+1)×K``.
    """

    codec_kind = "attention"
    codec_ids = ("bos", "eos", "pad")

    def __init__(self, input_size: int, num_classes: int, max_length: int, bos: int, eos: int, pad: int,
                 d_model: int = 256, num_heads: int = 4, ffn_size: int = 1024, encoder_layers: int = 2,
                 lm_layers: int = 3, iterations: int = 3, dropout: float = 0.1, key_channels: int = 64,
                 length_mask: bool = True, loss_weights: Sequence[float] = (1.0, 1.0, 1.0),
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = check_label_smoothing("iterative_vl", label_smoothing)
        if iterations < 0 or encoder_layers < 0:
            raise ValueError(f"decoder 'iterative_vl': iterations and encoder_layers must be >= 0, got "
                             f"{iterations} and {encoder_layers}")
        if len(loss_weights) != 3:
            raise ValueError(f"decoder 'iterative_vl': loss_weights must be [vision, language, fusion], got "
                             f"{list(loss_weights)}")
        steps = max_length + 1
        self.num_classes, self.max_length, self.steps = num_classes, max_length, steps
        self.bos, self.eos, self.pad = bos, eos, pad
        self.iterations = int(iterations)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.d_model = d_model
        self.input_proj: nn.Module = (nn.Linear(input_size, d_model) if input_size != d_model
                                      else nn.Identity())
        self.vision_encoder = nn.ModuleList(EncoderLayer(d_model, num_heads, ffn_size, dropout)
                                            for _ in range(encoder_layers))
        self.encoder_norm: nn.Module = nn.LayerNorm(d_model) if encoder_layers else nn.Identity()
        self.position_attention = PositionAttention(d_model, steps, key_channels)
        self.vision_classifier = nn.Linear(d_model, num_classes)
        self.language = BCNLanguageModel(num_classes, steps, d_model, num_heads, ffn_size, lm_layers, dropout,
                                         eos=eos, length_mask=length_mask)
        self.fusion = GatedFusion(d_model)
        self.fusion_classifier = nn.Linear(d_model, num_classes)
        if self.iterations == 0:  # vision only: the unused parts are frozen (no optimiser state, DDP-safe)
            for part in (self.language, self.fusion, self.fusion_classifier):
                part.requires_grad_(False)
        self._deep: DeepOutputs | None = None  # the outputs of the last forward called with targets

    # -- forward -------------------------------------------------------------------------------------
    def vision(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Vision branch: features B×T×D -> (vision features B×L×d_model, vision logits B×L×K)."""
        x = self.input_proj(features)
        x = x + sinusoid_encoding(x.shape[1], self.d_model, x.device, x.dtype)
        for layer in self.vision_encoder:
            x = layer(x)
        v_feat, _ = self.position_attention(self.encoder_norm(x))
        return v_feat, self.vision_classifier(v_feat)

    def refine(self, v_feat: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """One iteration: language model on softmax(logits) (detached), fusion with the vision features.
        Returns ``(language logits, fused logits)``, each B×L×K."""
        probs = torch.softmax(logits.detach(), dim=-1)
        l_feat, l_logits = self.language(probs)
        fused = self.fusion(v_feat, l_feat.to(v_feat.dtype))
        return l_logits, self.fusion_classifier(fused)

    def forward(self, features: Tensor, targets: dict[str, Tensor] | None = None) -> Tensor:
        v_feat, v_logits = self.vision(features)
        logits = v_logits
        language: list[Tensor] = []
        fusion: list[Tensor] = []
        for _ in range(self.iterations):
            l_logits, logits = self.refine(v_feat, logits)
            language.append(l_logits)
            fusion.append(logits)
        self._deep = DeepOutputs(v_logits, language, fusion, logits) if targets is not None else None
        return logits

    # -- losses -------------------------------------------------------------------------------------
    def _ce(self, logits: Tensor, gold: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), gold.reshape(-1),
                                   ignore_index=self.pad, label_smoothing=self.label_smoothing)

    def iteration_losses(self, targets: dict[str, Tensor]) -> dict[str, list[float]]:
        """Cross-entropy of every output of the last forward (with targets): ``vision`` [1 value],
        ``language`` and ``fusion`` [one per iteration]. For monitoring; no graph is kept."""
        deep = self._deep
        if deep is None:
            raise RuntimeError("decoder 'iterative_vl': no per-iteration outputs; call forward with targets "
                               "first")
        gold = targets["tokens"][:, 1:]
        with torch.no_grad():
            return {"vision": [float(self._ce(deep.vision, gold))],
                    "language": [float(self._ce(t, gold)) for t in deep.language],
                    "fusion": [float(self._ce(t, gold)) for t in deep.fusion]}

    def loss(self, logits: Tensor, targets: dict[str, Tensor]) -> Tensor:
        """Deep supervision: ``w_v · CE(vision) + mean over iterations of (w_l · CE(language_i) +
        w_f · CE(fusion_i))`` against ``tokens[:, 1:]``, PAD ignored, in fp32.

        Uses the outputs stored by the forward call that produced ``logits``; for any other logits it is
        the plain cross-entropy of ``logits``.
        """
        gold = targets["tokens"][:, 1:]
        if gold.shape[1] != logits.shape[1]:
            raise ValueError(f"decoder 'iterative_vl': {logits.shape[1]} logit steps for {gold.shape[1]} "
                             f"target steps; encode labels with the model's codec")
        deep = self._deep
        if deep is None or deep.final is not logits:
            return self._ce(logits, gold)
        w_v, w_l, w_f = self.loss_weights
        total = w_v * self._ce(deep.vision, gold)
        for lt, ft in zip(deep.language, deep.fusion, strict=True):
            total = total + (w_l * self._ce(lt, gold) + w_f * self._ce(ft, gold)) / len(deep.fusion)
        return total

    def language_model_loss(self, tokens: Tensor, noise: float = 0.1,
                            generator: torch.Generator | None = None) -> Tensor:
        """Text-only loss of the language model (pre-training): its input is the one-hot text
        ``tokens[:, 1:]`` with each character replaced by a random one with probability ``noise``; its
        target is the clean text. ``tokens``: B×(max_length+2) from the attention codec."""
        gold = tokens[:, 1:]
        noisy = corrupt_tokens(gold, FIRST_CHAR_ID, self.num_classes, noise, generator)
        _, logits = self.language(one_hot_probs(noisy, self.num_classes).to(self.language.pos.dtype))
        return self._ce(logits, gold)

    # -- decoding -----------------------------------------------------------------------------------
    def decode(self, logits: Tensor, codec: AttentionCodec) -> list[Prediction]:
        """B×(max_length+1)×K logits -> B predictions (greedy, up to the first EOS)."""
        return codec.decode(logits)
