"""Logits of an exported model -> :class:`~strkit.charset.Prediction` objects, from its metadata alone."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from torch import Tensor

from strkit.charset import Prediction
from strkit.inference.metadata import ExportMetadata

log = logging.getLogger("strkit")

DecodeFn = Callable[[Tensor], list[Prediction]]


def build_decode_fn(meta: ExportMetadata) -> DecodeFn:
    """``B×L×K logits -> B predictions``, decoding as the exported model's decoder is configured.

    The decoder's ``decode(logits, codec)`` is used, so CTC beam search and lexicon decoding carry over.
    The decoder is rebuilt from the stored config on PyTorch's ``meta`` device (no memory, no weights:
    decoding never touches them) and tried once on dummy logits. A decoder this strkit does not know,
    or whose ``decode`` needs its weights, falls back to the codec's greedy decoding, with a warning.
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
        log.warning("decoder %r of the exported model cannot be rebuilt for decoding here (%s: %s); decoding "
                    "greedily with the %s codec", name, type(exc).__name__, exc, meta.codec_kind)
        return codec.decode
    return decode
