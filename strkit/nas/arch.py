"""Architecture files: derive the chosen sub-network of a supernet, write and read it.

The schema (versioned JSON) is owned by :mod:`strkit.models.backbones.searched`, which builds the
``searched`` backbone from it; this module produces it. ``derive → save → load → build`` gives a
backbone whose op list is exactly the derived one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from strkit.models.backbones.searched import (
    ARCH_FORMAT,
    ARCH_VERSION,
    ArchError,
    SearchedBackbone,
    load_arch,
    validate_arch,
)
from strkit.nas.search_space import SuperNet

__all__ = ["ArchError", "arch_ops", "build_searched", "derive_arch", "find_supernet", "load_arch",
           "save_arch", "validate_arch"]


def find_supernet(model: nn.Module) -> SuperNet:
    """The :class:`SuperNet` inside ``model`` (the model itself, or e.g. a recogniser's backbone)."""
    nets = [m for m in model.modules() if isinstance(m, SuperNet)]
    if len(nets) != 1:
        raise ValueError(f"expected exactly one supernet backbone in the model, found {len(nets)}; "
                         "set model.backbone.name=supernet")
    return nets[0]


def derive_arch(model: nn.Module, choices: Sequence[int] | None = None,
                metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The architecture of one sub-network of the supernet in ``model``.

    Args:
        model: a :class:`SuperNet` or a module containing one.
        choices: the candidate index of every cell; ``None`` takes the argmax of α per cell.
        metadata: stored under ``"search"`` (ignored when building).

    Returns:
        A validated architecture mapping (see :mod:`strkit.models.backbones.searched`).
    """
    net = find_supernet(model)
    edges = net.edges()
    if choices is None:
        choices = [e.chosen() for e in edges]
    if len(choices) != len(edges):
        raise ValueError(f"{len(choices)} choices for {len(edges)} cells")
    cells = []
    for e, j in zip(edges, choices, strict=True):
        if not 0 <= j < len(e):
            raise ValueError(f"cell {e.meta['index']}: choice {j} out of range (0..{len(e) - 1})")
        m = e.meta
        cells.append({"op": e.candidates[j], "c_in": m["c_in"], "c_out": m["c_out"],
                      "stride": list(m["stride"]), "kind": m["kind"], "stage": m["stage"]})
    arch = {
        "format": ARCH_FORMAT,
        "version": ARCH_VERSION,
        "input": dict(net.input),
        "stem": {"channels": net.stem_channels, "stride": list(net.stem_stride)},
        "cells": cells,
        "head": {"channels": net.out_channels},
    }
    if metadata:
        arch["search"] = dict(metadata)
    return validate_arch(arch, "derived architecture")


def fixed_arch(model: nn.Module, op: str, first_op: str | None = None) -> dict[str, Any]:
    """The sub-network with the same op in every cell: the fixed baselines of a search space (e.g. every
    cell ``k3_e3``, as in the "verify the effect of NAS" tables).

    Args:
        model: a :class:`SuperNet` or a module containing one.
        op: the op of every cell that offers it.
        first_op: the op of cells that do not offer ``op`` (e.g. the first cell, whose candidates are
            ``k{3,5,7}_e1``); default: the candidate with ``op``'s kernel (``k5_e6`` -> ``k5_e1``).

    Raises:
        ValueError: a cell offers neither op (the candidates are listed).
    """
    net = find_supernet(model)
    kernel = op.split("_")[0]
    choices = []
    for e in net.edges():
        if op in e.candidates:
            choices.append(e.candidates.index(op))
            continue
        fallback = first_op or next((c for c in e.candidates if c.split("_")[0] == kernel), None)
        if fallback not in e.candidates:
            raise ValueError(f"cell {e.meta['index']} offers neither '{op}' nor '{fallback}'; its candidates "
                             f"are {list(e.candidates)}")
        choices.append(e.candidates.index(fallback))
    return derive_arch(net, choices, metadata={"fixed": op})


def arch_ops(arch: Mapping[str, Any]) -> list[str]:
    """The op name of every cell, in order."""
    return [c["op"] for c in arch["cells"]]


def save_arch(arch: Mapping[str, Any], path: str | Path) -> Path:
    """Validate ``arch`` and write it as indented JSON (write to a temporary file, then rename)."""
    data = validate_arch(arch, "architecture to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def build_searched(arch: str | Path | Mapping[str, Any], in_channels: int | None = None,
                   img_h: int | None = None, img_w: int | None = None) -> SearchedBackbone:
    """The ``searched`` backbone of ``arch`` at its search input shape (or the given one)."""
    spec = load_arch(arch)
    inp = spec["input"]
    return SearchedBackbone(in_channels or inp["channels"], img_h or inp["img_h"], img_w or inp["img_w"],
                            arch=spec)
