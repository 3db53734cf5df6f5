"""Stage 4: decoders (B×T×D features -> B×L×K logits, loss, decoding). Importing this package
registers them."""

from strkit.models.decoders import attention, ctc, iterative_vl  # noqa: F401
