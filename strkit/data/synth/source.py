"""Registers the ``synth`` data source: ``data.train: [{kind: synth, path: mjsynth, ratio: 0.5}]``."""

from __future__ import annotations

from typing import Any

from strkit.data.sources import SOURCES, Dataset

SOURCE_LENGTH = 10**7
"""Items of a ``synth`` source. Samplers permute a source's indices, so "infinite" is this large but
finite number (ten million distinct images: an epoch is far longer than any CPU run)."""


@SOURCES.register("synth")
def synth_source(path: str, *, label_filter: Any = None, channels: int = 3, **kw: Any) -> Dataset:
    """An on-the-fly :class:`~strkit.data.synth.dataset.SynthDataset`.

    Args:
        path: a preset name (``clean``, ``mjsynth``, ``hard``, ``realistic``) or a synth YAML file.
        label_filter: the model's label filter; when it is a :class:`strkit.charset.LabelFilter`, labels
            are rendered directly in its charset and no longer than its ``max_length``.
        channels: 1 (gray) or 3 (RGB).
        **kw: ignored (other sources' options, e.g. ``benchmark_root``).
    """
    from strkit.data.synth.dataset import SynthDataset

    charset = getattr(label_filter, "charset", None)
    overrides: dict[str, Any] = {}
    max_length = getattr(label_filter, "max_length", None)
    if max_length is not None:
        from strkit.data.synth.config import load_synth_config

        cfg = load_synth_config(path)
        overrides["text.max_len"] = max(1, min(cfg.text.max_len, int(max_length)))
        overrides["text.min_len"] = min(cfg.text.min_len, overrides["text.max_len"])
    return SynthDataset(path, seed=0, length=SOURCE_LENGTH, channels=channels, label_filter=label_filter,
                        overrides=overrides or None, charset=charset)
