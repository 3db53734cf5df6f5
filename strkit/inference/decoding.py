"""Logits of an exported model -> :class:`~strkit.greedy_decoding.Prediction` objects, from its metadata alone."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

from torch import Tensor

from strkit.greedy_decoding import Prediction
from strkit.inference.metadata import ExportMetadata

log = logging.getLogger("strkit")

DecodeFn = Callable[[Tensor], list[Prediction]]


def scale_logits(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` in float32 (the logits themselves when ``temperature`` is 1)."""
    return logits if temperature == 1.0 else logits.float() / float(temperature)


def build_lexicon_decode_fn(meta: ExportMetadata, words: Sequence[str], any_case: bool = True) -> DecodeFn:
    """``B×L×K logits -> B predictions`` constrained to ``words``: the word of highest CTC probability, by
    the ``ctc`` decoder's own lexicon decoding (its other options, e.g. ``lexicon_candidates``, kept);
    ``any_case``: a word also matches in lower case, Capitalised and UPPER CASE (``lexicon_any_case``).

    Raises:
        ValueError: the model is not a CTC model.
    """
    if meta.codec_kind != "ctc":
        raise ValueError(f"a lexicon constrains CTC models only; this model's decoder is "
                         f"'{meta.decoder.get('name', meta.codec_kind)}' ({meta.codec_kind})")
    decoder = {**meta.decoder, "name": "ctc", "lexicon": list(words), "lexicon_any_case": bool(any_case)}
    decoder = {k: v for k, v in decoder.items() if k in LEXICON_DECODER_KEYS}
    return build_decode_fn(replace(meta, decoder=decoder), strict=True)


#: Options of the ``ctc`` decoder that a lexicon-constrained decoding keeps from the model's decoder.
LEXICON_DECODER_KEYS = ("name", "beam_width", "lexicon", "lexicon_candidates", "lexicon_any_case")


def build_decode_fn(meta: ExportMetadata, strict: bool = False) -> DecodeFn:
    """``B×L×K logits -> B predictions``, decoding as the exported model's decoder is configured.

    The decoder's ``decode(logits, codec)`` is used, so CTC beam search and lexicon decoding carry over.
    The decoder is rebuilt from the stored config on PyTorch's ``meta`` device (no memory, no weights:
    decoding never touches them) and tried once on dummy logits. A decoder this strkit does not know,
    or whose ``decode`` needs its weights, falls back to the codec's greedy decoding, with a warning
    (``strict``: raises ``ValueError`` instead).
    """
    import torch

    from strkit.models.registry import DECODERS
    from strkit.registry import RegistryError

    codec = meta.build_codec()
    spec = dict(meta.decoder)
    name = spec.get("name", meta.codec_kind)
    try:
        cls = DECODERS.get(name)
        ids = {k: meta.special_ids[k] for k in getattr(cls, "codec_ids", ()) if k in meta.special_ids}
        with torch.device("meta"):
            decoder = DECODERS.build(spec, where="metadata.decoder", input_size=1, num_classes=meta.num_classes,
                                     max_length=meta.max_length, **ids)
        decode = partial(decoder.decode, codec=codec)
        decode(torch.zeros(1, meta.max_length + 1, meta.num_classes))
    except (RegistryError, TypeError, ValueError, KeyError, FileNotFoundError, RuntimeError,
            NotImplementedError) as exc:
        if strict:
            raise ValueError(f"decoder {name!r} cannot be built for decoding ({type(exc).__name__}: {exc})") from None
        log.warning("decoder %r of the exported model cannot be rebuilt for decoding here (%s: %s); decoding "
                    "greedily with the %s codec", name, type(exc).__name__, exc, meta.codec_kind)
        return codec.decode
    return decode
