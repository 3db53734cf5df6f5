"""The ``attention`` decoder of TRBA: an LSTM cell with Bahdanau (additive) attention over the features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strkit.codecs import AttentionCodec
from strkit.greedy_decoding import Prediction
from strkit.models.decoders.smoothing import check_label_smoothing
from strkit.models.registry import DECODERS


@DECODERS.register("attention")
class AttentionDecoder(nn.Module):
    """Attention-LSTM decoder (Baek et al. 2019, after RARE / Shi et al.).

    At step t: e = w·tanh(W_i H + W_h h_{t-1}) (B×T), α = softmax(e), context = Σ α H (B×D);
    (h_t, c_t) = LSTMCell([context, onehot(y_{t-1})], (h_{t-1}, c_{t-1})); logits_t = Linear(h_t).
    y_0 = BOS; the previous token enters as a one-hot vector, as in the four-stage benchmark (hidden
    256: 707,879 parameters for D=256, K=39). Training (with targets): teacher forcing on
    ``tokens[:, :-1]``. Otherwise greedy: the argmax of the previous step (BOS and PAD excluded) is fed
    back. Always ``max_length + 1`` steps (a fixed-count loop, so it traces and exports).

    Args:
        input_size: D; num_classes: K (charset + EOS/BOS/PAD); max_length: longest label.
        bos, eos, pad: special token ids (from the codec).
        hidden_size: LSTM and attention size (256 in TRBA).
        label_smoothing: ε of the cross-entropy (training only; 0 = off).

    Shapes: ``forward(features: B×T×D, targets={'tokens': B×(max_length+2)} | None)
    -> logits B×(max_length+1)×K``. Runs in the dtype of its weights (fp32 unless the model was cast
    for inference), with autocast switched off inside.
    """

    codec_kind = "attention"
    codec_ids = ("bos", "eos", "pad")

    def __init__(self, input_size: int, num_classes: int, max_length: int, bos: int, eos: int, pad: int,
                 hidden_size: int = 256, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = check_label_smoothing("attention", label_smoothing)
        self.i2h = nn.Linear(input_size, hidden_size, bias=False)
        self.h2h = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)
        self.rnn = nn.LSTMCell(input_size + num_classes, hidden_size)
        self.generator = nn.Linear(hidden_size, num_classes)
        self.num_classes, self.max_length, self.hidden_size = num_classes, max_length, hidden_size
        self.bos, self.eos, self.pad = bos, eos, pad
        feed_mask = torch.zeros(num_classes)
        feed_mask[[bos, pad]] = float("-inf")
        self.register_buffer("feed_mask", feed_mask, persistent=False)  # added before the greedy argmax
        self.register_buffer("class_ids", torch.arange(num_classes), persistent=False)

    def _step(self, feats: Tensor, proj: Tensor, prev: Tensor, state: tuple[Tensor, Tensor]
              ) -> tuple[Tensor, Tensor]:
        """One decoding step: previous token ids (B,) -> new (h, c)."""
        h, _ = state
        e = self.score(torch.tanh(proj + self.h2h(h).unsqueeze(1)))  # B×T×1
        alpha = torch.softmax(e, dim=1)
        context = torch.bmm(alpha.transpose(1, 2), feats).squeeze(1)  # B×D
        onehot = (prev.unsqueeze(1) == self.class_ids).to(feats.dtype)  # B×K
        return self.rnn(torch.cat([context, onehot], dim=1), state)

    def forward(self, features: Tensor, targets: dict[str, Tensor] | None = None) -> Tensor:
        steps = self.max_length + 1
        teacher = targets is not None and self.training
        if teacher:
            tokens = targets["tokens"]
            if tokens.shape[1] != steps + 1:
                raise ValueError(f"decoder 'attention': targets['tokens'] has {tokens.shape[1]} columns, "
                                 f"expected max_length + 2 = {steps + 1}; encode labels with the model's "
                                 f"codec")
        with torch.autocast(device_type=features.device.type, enabled=False):
            feats = features.to(self.i2h.weight.dtype)  # fp32 unless the model was cast for inference
            batch = feats.shape[0]
            proj = self.i2h(feats)  # B×T×H
            h = feats.new_zeros(batch, self.hidden_size)
            state = (h, h)
            if teacher:
                hiddens = []
                for t in range(steps):
                    state = self._step(feats, proj, tokens[:, t], state)
                    hiddens.append(state[0])
                return self.generator(torch.stack(hiddens, dim=1))
            prev = torch.full((batch,), self.bos, dtype=torch.long, device=feats.device)
            outs = []
            for _ in range(steps):
                state = self._step(feats, proj, prev, state)
                logits = self.generator(state[0])
                outs.append(logits)
                prev = (logits + self.feed_mask).argmax(-1)
            return torch.stack(outs, dim=1)

    def loss(self, logits: Tensor, targets: dict[str, Tensor]) -> Tensor:
        """Cross-entropy against ``tokens[:, 1:]`` (the characters then EOS), PAD ignored, in fp32."""
        gold = targets["tokens"][:, 1:]
        if gold.shape[1] != logits.shape[1]:
            raise ValueError(f"decoder 'attention': {logits.shape[1]} logit steps for {gold.shape[1]} target "
                             f"steps; encode labels with the model's codec")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), gold.reshape(-1),
                                   ignore_index=self.pad, label_smoothing=self.label_smoothing)

    def decode(self, logits: Tensor, codec: AttentionCodec) -> list[Prediction]:
        """B×(max_length+1)×K logits -> B predictions (greedy, up to the first EOS)."""
        return codec.decode(logits)
