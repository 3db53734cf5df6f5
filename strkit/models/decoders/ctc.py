"""The ``ctc`` decoder: a linear classifier per time step, CTC loss, greedy / beam / lexicon decoding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strkit.codecs import CTCCodec
from strkit.greedy_decoding import Prediction
from strkit.models.decoders import ctc_search
from strkit.models.decoders.smoothing import check_label_smoothing, uniform_kl
from strkit.models.registry import DECODERS

if TYPE_CHECKING:
    from strkit.charset import Charset


def read_lexicon(path: str | Path) -> list[str]:
    """Words of a UTF-8 text file, one per line (blank lines ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.decoder.lexicon: file '{path}' does not exist; give a UTF-8 text "
                                f"file with one word per line, or remove the key")
    return [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]


def ctc_loss(logits: Tensor, targets: dict[str, Tensor], blank: int = 0, label_smoothing: float = 0.0) -> Tensor:
    """Mean CTC loss of B×T×K logits (per-sample loss / target length, averaged; infinite losses
    zeroed), computed in fp32. ``targets``: ``targets`` (concatenated ids, or B×S padded) and
    ``target_lengths`` (B,), as :class:`strkit.codecs.CTCCodec` encodes them.

    ``label_smoothing`` ε > 0: ``(1 − ε)·CTC + ε·KL(uniform ‖ p)``, the KL averaged over every frame of
    the batch: the CTC form of label smoothing (a confidence penalty on each frame's distribution, which
    CTC otherwise drives to one-hot spikes)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # T×B×K
        n_frames, batch = log_probs.shape[:2]
        input_lengths = torch.full((batch,), n_frames, dtype=torch.long, device=logits.device)
        loss = F.ctc_loss(log_probs, targets["targets"], input_lengths, targets["target_lengths"],
                          blank=blank, reduction="mean", zero_infinity=True)
        if label_smoothing > 0:
            loss = (1.0 - label_smoothing) * loss + label_smoothing * uniform_kl(log_probs)
        return loss


def case_forms(word: str, charset: Charset) -> list[str]:
    """The forms a lexicon word matches in: as written, lower case, Capitalised and UPPER CASE, each
    normalised to ``charset`` (so a one-case charset folds them into one); distinct, in that order."""
    forms = (word, word.lower(), word[:1].upper() + word[1:].lower(), word.upper())
    return list(dict.fromkeys(f for f in (charset.normalize(x)[0] for x in forms) if f))


@DECODERS.register("ctc")
class CTCDecoder(nn.Module):
    """Linear(D -> K) on every time step, trained with CTC (class ``blank`` = 0).

    Args:
        input_size: D, feature size of the sequence stage.
        num_classes: K = charset size + 1 (blank).
        max_length: longest label (unused by CTC decoding; T bounds the output length).
        blank: blank class id (from the codec).
        beam_width: 1 = greedy best path; > 1 = prefix beam search with this many beams.
        lexicon: a word list (path of a file with one word per line, or a list of words); when set,
            decoding returns the lexicon word with the highest CTC probability.
        lexicon_candidates: for lexicons larger than this, only the words closest (edit distance, case
            ignored) to the greedy output are scored; 0 = score every word.
        lexicon_any_case: a lexicon word also matches in lower case, Capitalised and UPPER CASE, and the
            form read is returned ("coffee" in the lexicon reads a "COFFEE" sign as "COFFEE"); ``False``:
            only as written. Changes nothing for a charset of one case.
        label_smoothing: ε of :func:`ctc_loss` (training only; 0 = plain CTC).

    Shapes: ``forward(features: B×T×D, targets=None) -> logits B×T×K``.
    """

    codec_kind = "ctc"
    codec_ids = ("blank",)

    def __init__(self, input_size: int, num_classes: int, max_length: int, blank: int = 0,
                 beam_width: int = 1, lexicon: str | Sequence[str] | None = None,
                 lexicon_candidates: int = 200, lexicon_any_case: bool = True,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = check_label_smoothing("ctc", label_smoothing)
        if beam_width < 1:
            raise ValueError(f"decoder 'ctc': beam_width must be >= 1, got {beam_width}")
        self.fc = nn.Linear(input_size, num_classes)
        self.num_classes, self.max_length, self.blank = num_classes, max_length, blank
        self.beam_width = int(beam_width)
        self.lexicon_candidates = int(lexicon_candidates)
        self.lexicon_any_case = bool(lexicon_any_case)
        words = read_lexicon(lexicon) if isinstance(lexicon, str | Path) else list(lexicon or [])
        self.lexicon: list[str] = words
        self._lexicon_cache: tuple[Any, list[str], list[list[tuple[int, ...]]]] | None = None

    def forward(self, features: Tensor, targets: dict[str, Tensor] | None = None) -> Tensor:
        return self.fc(features)

    def loss(self, logits: Tensor, targets: dict[str, Tensor]) -> Tensor:
        """Mean CTC loss (per-sample loss / target length, averaged; infinite losses zeroed), in fp32.

        ``targets``: ``targets`` (concatenated ids, or B×S padded) and ``target_lengths`` (B,).
        """
        return ctc_loss(logits, targets, self.blank, self.label_smoothing)

    # -- decoding ----------------------------------------------------------------------------------
    def decode(self, logits: Tensor, codec: CTCCodec) -> list[Prediction]:
        """B×T×K logits -> B predictions (greedy, beam search or lexicon, as configured)."""
        if self.beam_width == 1 and not self.lexicon:
            return codec.decode(logits)
        log_probs = logits.detach().float().log_softmax(-1).cpu().numpy()
        out: list[Prediction] = []
        for lp in log_probs:
            ids = self._lexicon_ids(lp, codec) if self.lexicon else None
            if ids is None:
                if self.beam_width > 1:
                    ids = ctc_search.beam_search(lp, self.beam_width, self.blank)[0]
                else:
                    ids = ctc_search.greedy_search(lp, self.blank)[0]
            out.append(self._prediction(lp, ids, codec))
        return out

    def _prediction(self, log_probs: Any, ids: Sequence[int], codec: CTCCodec) -> Prediction:
        """Text of ``ids``; a character's probability is its highest probability over the frames the
        Viterbi alignment gives it; confidence is their product (as for greedy decoding)."""
        frames = ctc_search.ctc_align(log_probs, ids, self.blank)
        if len(frames) != len(ids):  # not alignable to T frames (cannot happen for searched ids)
            frames = [[] for _ in ids]
        char_probs = [float(math.exp(max((log_probs[t, c] for t in fr), default=-math.inf)))
                      for c, fr in zip(ids, frames, strict=True)]
        return Prediction(codec.decode_ids(ids), math.prod(char_probs), char_probs)

    def _encoded_lexicon(self, codec: CTCCodec) -> tuple[list[str], list[list[tuple[int, ...]]]]:
        """Lexicon words normalised to the codec's charset (empty and duplicate words dropped) and, per
        word, the class ids of each form it matches in (:func:`case_forms`, or the word alone); cached per
        codec."""
        if self._lexicon_cache is None or self._lexicon_cache[0] is not codec:
            words = list(dict.fromkeys(w for w in (codec.charset.normalize(x)[0] for x in self.lexicon) if w))
            forms = [case_forms(w, codec.charset) if self.lexicon_any_case else [w] for w in words]
            enc = codec.encode([f for fs in forms for f in fs])
            flat, lengths = enc["targets"].tolist(), enc["target_lengths"].tolist()
            ids: list[list[tuple[int, ...]]] = []
            start, k = 0, 0
            for fs in forms:
                ids.append([])
                for _ in fs:
                    ids[-1].append(tuple(flat[start:start + lengths[k]]))
                    start, k = start + lengths[k], k + 1
            self._lexicon_cache = (codec, words, ids)
        return self._lexicon_cache[1], self._lexicon_cache[2]

    def _lexicon_ids(self, log_probs: Any, codec: CTCCodec) -> tuple[int, ...] | None:
        words, ids = self._encoded_lexicon(codec)
        candidates = range(len(words))
        if self.lexicon_candidates and len(words) > self.lexicon_candidates:
            from rapidfuzz import process
            from rapidfuzz.distance import Levenshtein

            greedy = codec.decode_ids(ctc_search.greedy_search(log_probs, self.blank)[0])
            hits = process.extract(greedy, words, scorer=Levenshtein.distance, limit=self.lexicon_candidates,
                                   processor=str.casefold)
            candidates = [h[2] for h in hits]
        forms = [f for i in candidates for f in ids[i]]
        best, _ = ctc_search.lexicon_search(log_probs, forms, self.blank)
        return forms[best] if best >= 0 else None
