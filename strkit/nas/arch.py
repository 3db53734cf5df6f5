"""Architecture files: derive the chosen sub-network of a supernet, write and read it.

The schema (versioned JSON) is owned by :mod:`strkit.models.backbones.searched`, which builds the
``searched`` backbone from it; this module produces it. ``derive → save → load → build`` gives a
backbone whose op list is exactly the derived one.

A model can hold two searched parts (:func:`searched_parts`): the backbone supernet and, in a joint
search, the ``supernet`` localisation body of the ``tps`` rectifier. The backbone's cells go to the
top level of the architecture, the rectifier's to its ``rectifier`` section. Where one flat list
of choices (or costs) covers every searched cell, its order is :func:`searched_edges`' — the backbone's
cells, then the rectifier's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from strkit.atomic import write_text_atomic
from strkit.models.backbones.searched import (
    ARCH_FORMAT,
    ARCH_PARTS,
    ARCH_VERSION,
    RECTIFIER_SECTION,
    ArchError,
    SearchedBackbone,
    arch_sections,
    load_arch,
    section_arch,
    validate_arch,
)
from strkit.nas.proxyless import MixedEdge
from strkit.nas.space import SearchSpace

__all__ = ["ArchError", "arch_ops", "arch_sections", "build_searched", "derive_arch", "find_supernet",
           "load_arch", "save_arch", "searched_edges", "searched_parts", "section_arch", "validate_arch"]

Choices = Sequence[int] | Mapping[str, Sequence[int]]


def searched_parts(model: nn.Module) -> dict[str, SearchSpace]:
    """Every :class:`~strkit.nas.space.SearchSpace` in ``model`` by its part, in :data:`ARCH_PARTS` order:
    ``{"backbone": ..., "rectifier": ...}`` (a part the model does not search is absent).

    Raises:
        ValueError: two supernets claim the same part.
    """
    found: dict[str, SearchSpace] = {}
    for m in model.modules():
        if isinstance(m, SearchSpace):
            if m.part in found:
                raise ValueError(f"the model holds more than one {m.part} supernet; a search has at most one "
                                 "searched backbone (model.backbone.name=supernet) and one searched rectifier "
                                 "(model.rectifier.loc.name=supernet)")
            found[m.part] = m
    return {part: found[part] for part in ARCH_PARTS if part in found}


def find_supernet(model: nn.Module) -> SearchSpace:
    """The backbone's search space inside ``model`` (the model itself, or e.g. a recogniser's backbone)."""
    parts = searched_parts(model)
    if "backbone" not in parts:
        raise ValueError(f"expected exactly one supernet backbone in the model, found 0 (searched parts: "
                         f"{sorted(parts) or 'none'}); set model.backbone.name=supernet")
    return parts["backbone"]


def searched_edges(model: nn.Module) -> list[MixedEdge]:
    """The mixed cells of every searched part: the backbone's, then the rectifier's."""
    return [e for net in searched_parts(model).values() for e in net.edges()]


def _split_choices(parts: Mapping[str, SearchSpace], choices: Choices | None) -> dict[str, list[int]]:
    """Per-part choices from ``None`` (argmax), a mapping part -> list, or one flat list in
    :func:`searched_edges` order."""
    if choices is None:
        return {part: [e.chosen() for e in net.edges()] for part, net in parts.items()}
    if isinstance(choices, Mapping):
        unknown = set(choices) - set(parts)
        if unknown:
            raise ValueError(f"choices for {sorted(unknown)}, but the searched parts are {list(parts)}")
        return {part: list(choices[part]) if part in choices else [e.chosen() for e in net.edges()]
                for part, net in parts.items()}
    flat = list(choices)
    total = sum(len(net.edges()) for net in parts.values())
    if len(flat) != total:
        counts = ", ".join(f"{p}: {len(n.edges())}" for p, n in parts.items())
        raise ValueError(f"{len(flat)} choices for {total} cells ({counts})")
    out: dict[str, list[int]] = {}
    for part, net in parts.items():
        out[part], flat = flat[:len(net.edges())], flat[len(net.edges()):]
    return out


def derive_arch(model: nn.Module, choices: Choices | None = None,
                metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The architecture of one sub-network of the searched parts of ``model``.

    Args:
        model: a :class:`SuperNet` or a module containing the backbone one (and maybe a rectifier one).
        choices: the candidate index of every cell: one flat list in :func:`searched_edges` order, or a
            mapping part -> list (a missing part takes its argmax); ``None`` takes the argmax of α per cell.
        metadata: stored under ``"search"`` (ignored when building).

    Returns:
        A validated architecture mapping (see :mod:`strkit.models.backbones.searched`): the backbone at
        the top level, the rectifier (when searched) in the ``rectifier`` section.
    """
    find_supernet(model)  # the backbone is required
    parts = searched_parts(model)
    per_part = _split_choices(parts, choices)
    arch: dict[str, Any] = {"format": ARCH_FORMAT, "version": ARCH_VERSION,
                            **parts["backbone"].arch_section(per_part["backbone"])}
    if "rectifier" in parts:
        arch[RECTIFIER_SECTION] = parts["rectifier"].arch_section(per_part["rectifier"])
    if metadata:
        arch["search"] = dict(metadata)
    return validate_arch(arch, "derived architecture")


def fixed_arch(model: nn.Module, op: str, first_op: str | None = None) -> dict[str, Any]:
    """The sub-network with the same op in every cell of every searched part: the fixed baselines of a
    search space (e.g. every cell ``k3_e3``, as in the "verify the effect of NAS" tables).

    Args:
        model: a :class:`SuperNet` or a module containing one (or a backbone and a rectifier one).
        op: the op of every cell that offers it.
        first_op: the op of cells that do not offer ``op`` (e.g. the first cell, whose candidates are
            ``k{3,5,7}_e1``); default: the candidate with ``op``'s kernel (``k5_e6`` -> ``k5_e1``).

    Raises:
        ValueError: a cell offers neither op (the candidates are listed).
    """
    kernel = op.split("_")[0]
    choices: dict[str, list[int]] = {}
    for part, net in searched_parts(model).items():
        choices[part] = []
        for e in net.edges():
            if op in e.candidates:
                choices[part].append(e.candidates.index(op))
                continue
            fallback = first_op or next((c for c in e.candidates if c.split("_")[0] == kernel), None)
            if fallback not in e.candidates:
                raise ValueError(f"{part} cell {e.meta['index']} offers neither '{op}' nor '{fallback}'; its "
                                 f"candidates are {list(e.candidates)}")
            choices[part].append(e.candidates.index(fallback))
    return derive_arch(model, choices, metadata={"fixed": op})


def arch_ops(arch: Mapping[str, Any], part: str = "backbone") -> list[str]:
    """The op name of every cell of ``part`` (``backbone``: the top level; ``rectifier``: its section),
    in order."""
    sections = arch_sections(arch)
    if part not in sections:
        section_arch(arch, part)  # raises the explanation
    return [c["op"] for c in sections[part]["cells"]]


def save_arch(arch: Mapping[str, Any], path: str | Path) -> Path:
    """Validate ``arch`` and write it as indented JSON (write to a temporary file, then rename)."""
    data = validate_arch(arch, "architecture to save")
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def build_searched(arch: str | Path | Mapping[str, Any], in_channels: int | None = None,
                   img_h: int | None = None, img_w: int | None = None) -> SearchedBackbone:
    """The ``searched`` backbone of ``arch`` at its search input shape (or the given one)."""
    spec = load_arch(arch)
    inp = spec["input"]
    return SearchedBackbone(in_channels or inp["channels"], img_h or inp["img_h"], img_w or inp["img_w"],
                            arch=spec)
