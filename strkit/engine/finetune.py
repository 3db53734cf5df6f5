"""Starting a run from a trained model: zoo names, the model config of the init checkpoint, charset changes.

- :func:`resolve_init_source`: ``train.init_from`` may name a bundled model (``default``), a run folder
  (its ``best.pt``) or a checkpoint file.
- :func:`adopt_init_config`: with ``train.init_config``, the model section and the image geometry of the
  run are those of the init checkpoint (a fine-tuning config then works for any model), except
  ``model.charset`` when the config sets one (``""`` = the checkpoint's).
- :func:`init_with_charset_change`: copies every weight of the init checkpoint; for a CTC model whose
  charset differs, the class rows of the output layers (blank + one row per character) are matched by
  character: rows of characters both charsets hold are copied bit for bit, rows of new characters keep
  their fresh initialisation, rows of dropped characters are left out.
- :class:`FreezeParameters`: the run-loop hook of ``train.freeze`` (parameters kept fixed for the first
  steps, e.g. an identity-initialised rectifier).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from strkit.charset import Charset
from strkit.checkpoint import init_from_checkpoint, load_checkpoint
from strkit.codecs import CTCCodec
from strkit.config import Config, ConfigError, from_dict
from strkit.models.zoo import zoo_models

from .loop import Hook, RunLoop
from .optim import parameters_with_prefix

log = logging.getLogger("strkit")


def resolve_init_source(name: str) -> Path:
    """A checkpoint file for ``train.init_from``: a bundled model name, a run folder (its ``best.pt``) or a
    path.

    Raises:
        ConfigError: none of these exists.
    """
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir() and (path / "best.pt").is_file():
        return path / "best.pt"
    bundled = zoo_models()
    if name in bundled:
        return bundled[name].checkpoint
    raise ConfigError(f"train.init_from: '{name}' is neither a checkpoint, a run folder with best.pt nor a "
                      f"bundled model ({', '.join(bundled) or 'none installed'})")


def adopt_init_config(cfg: Config) -> Config:
    """``cfg`` with the model section and image geometry of ``train.init_from`` when ``train.init_config``
    is set (``model.charset`` kept when the config gives one); ``cfg`` unchanged otherwise."""
    if not (cfg.train.init_from and cfg.train.init_config):
        return cfg
    source = resolve_init_source(cfg.train.init_from)
    saved = from_dict(load_checkpoint(source)["config"])
    model = dataclasses.replace(saved.model, charset=cfg.model.charset or saved.model.charset)
    data = dataclasses.replace(cfg.data, img_h=saved.data.img_h, img_w=saved.data.img_w,
                               channels=saved.data.channels, keep_ratio=saved.data.keep_ratio)
    return dataclasses.replace(cfg, model=model, data=data)


def _class_rows(old: Charset, new: Charset) -> tuple[list[int], list[int]]:
    """``(new class ids, old class ids)`` of the CTC classes both charsets share (blank = 0 included)."""
    new_ids, old_ids = [0], [0]
    for i, ch in enumerate(new.chars):
        if ch in old:
            new_ids.append(i + 1)
            old_ids.append(old.index(ch) + 1)
    return new_ids, old_ids


def init_with_charset_change(model: torch.nn.Module, path: str | Path, prefixes: tuple[str, ...] | list[str]
                             ) -> list[str]:
    """Initialise ``model`` from checkpoint ``path`` (see the module docstring); returns the names of the
    tensors copied (entirely or row by row).

    Raises:
        ValueError: a weight differs in shape for another reason than the charset, or the charsets differ
            for a model without a CTC decoder (its special tokens have no character to match).
    """
    payload = load_checkpoint(path)
    old = Charset.from_dict(payload["charset"])
    new: Charset = model.charset  # type: ignore[assignment]
    if old.chars == new.chars:
        return init_from_checkpoint(model, path, prefixes)
    if not isinstance(model.codec, CTCCodec):  # type: ignore[attr-defined]
        raise ValueError(f"{path}: the charset changes ({old.name} -> {new.name}); that is supported for CTC "
                         f"models only")
    k_old, k_new = len(old) + 1, len(new) + 1
    new_ids, old_ids = _class_rows(old, new)
    own = model.state_dict()
    state = {k: v for k, v in payload["state_dict"].items() if k.startswith(tuple(prefixes))}
    merged: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        mine = own.get(k)
        if mine is not None and mine.shape == v.shape:
            merged[k] = v
        elif mine is not None and v.shape[:1] == (k_old,) and mine.shape[:1] == (k_new,) \
                and v.shape[1:] == mine.shape[1:]:
            rows = mine.clone()
            rows[new_ids] = v[old_ids].to(rows.dtype)
            merged[k] = rows
        else:
            got = tuple(mine.shape) if mine is not None else "missing"
            raise ValueError(f"{path}: weight {k} has shape {tuple(v.shape)} but this model's is {got}; only the "
                             f"class rows may differ (charset {old.name} -> {new.name})")
    model.load_state_dict(merged, strict=False)
    log.info("charset %s (%d) -> %s (%d): %d shared characters' rows copied, %d new rows initialised fresh, "
             "%d characters dropped", old.name, len(old), new.name, len(new), len(new_ids) - 1,
             k_new - len(new_ids), k_old - len(old_ids))
    return sorted(merged)


def frozen_parameters(model: torch.nn.Module, freeze: Mapping[str, int]) -> list[tuple[int, list[torch.nn.Parameter]]]:
    """``train.freeze`` ({parameter-name prefix: step}) -> [(step, parameters)], checked: every prefix
    must name parameters of the model and every step must be a non-negative integer."""
    out: list[tuple[int, list[torch.nn.Parameter]]] = []
    for prefix, until in (freeze or {}).items():
        if not isinstance(until, int) or isinstance(until, bool) or until < 0:
            raise ConfigError(f"train.freeze.{prefix}: the step until which it stays fixed must be an integer "
                              f">= 0, got {until!r}")
        out.append((until, parameters_with_prefix(list(model.named_parameters()), prefix, "train.freeze")))
    return out


class FreezeParameters(Hook):
    """``train.freeze``: the parameters of each prefix get no gradient before their step, so neither an update
    nor weight decay moves them (gradients are still computed, which keeps DDP's reduction uniform).

    Args:
        model: the model the prefixes name parameters of.
        freeze: ``{parameter-name prefix: step}`` (checked by :func:`frozen_parameters`).
    """

    def __init__(self, model: torch.nn.Module, freeze: Mapping[str, int]) -> None:
        self.frozen = frozen_parameters(model, freeze)

    def after_backward(self, loop: RunLoop) -> None:
        for until, params in self.frozen:
            if loop.step < until:
                for p in params:
                    p.grad = None
