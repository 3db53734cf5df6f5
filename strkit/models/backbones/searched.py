"""The ``searched`` backbone: an inverted-residual network built from an architecture file.

The architecture file is the JSON written by the search (:func:`strkit.nas.arch.derive_arch`); this
module owns its schema so that the model layer can rebuild a searched network without importing
:mod:`strkit.nas`. Version 1::

    {
      "format": "strkit-arch", "version": 1,
      "input": {"img_h": 32, "img_w": 128, "channels": 1},     # the input the search ran at
      "stem":  {"channels": 32, "stride": [2, 2]},             # 3×3 conv-BN-ReLU6
      "cells": [                                               # in order, c_in of cell i = c_out of i-1
        {"op": "k5_e1", "c_in": 32, "c_out": 16, "stride": [1, 1], "kind": "first", "stage": 0},
        {"op": "k3_e6", "c_in": 16, "c_out": 24, "stride": [2, 2], "kind": "reduction", "stage": 1},
        {"op": "skip",  "c_in": 24, "c_out": 24, "stride": [1, 1], "kind": "normal", "stage": 1},
        ...
      ],
      "head":  {"channels": 384},                              # 1×1 conv-BN-ReLU6
      "rectifier": {"input": ..., "stem": ..., "cells": [...], "head": ...},   # optional, see below
      "search": {...}                                          # optional metadata, ignored here
    }

The optional ``"rectifier"`` section is the searched localisation body of the ``tps`` rectifier (a
joint search of rectifier and backbone): the same ``input`` / ``stem`` / ``cells`` / ``head`` schema,
with ``input`` the (down-scaled) image the localisation network sees. Files without it are backbone
architectures as before; :func:`section_arch` turns a section into a standalone architecture.

Ops are ``k{kernel}_e{expansion}`` (an inverted residual, :class:`~strkit.models.backbones.blocks.
InvertedResidual`) or ``skip`` (identity). The backbone is :class:`~strkit.models.backbones.
mobilenetv2.MobileNetV2Backbone` with the cell list as its block list, so a searched network and a
hand-set one share one code path (and the search's candidate ops are built by the same
:meth:`BlockSpec.build`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from strkit.models.backbones.blocks import BlockSpec, make_divisible
from strkit.models.backbones.mobilenetv2 import MobileNetV2Backbone
from strkit.models.registry import BACKBONES

ARCH_FORMAT = "strkit-arch"
ARCH_VERSION = 1
SKIP_OP = "skip"
#: The searched parts an architecture can describe: the backbone (top level) and the optional section.
ARCH_PARTS = ("backbone", "rectifier")
RECTIFIER_SECTION = "rectifier"
_OP_RE = re.compile(r"^k(\d+)_e(\d+)$")


class ArchError(ValueError):
    """An architecture file or mapping is unreadable or does not follow the schema."""


def op_name(kernel: int, expansion: int) -> str:
    """Canonical name of an inverted-residual op: ``op_name(5, 6) == "k5_e6"``."""
    return f"k{int(kernel)}_e{int(expansion)}"


def parse_op(name: str, where: str = "op") -> tuple[int, int] | None:
    """``"k5_e6"`` -> ``(5, 6)``; ``"skip"`` -> ``None``. Raises :class:`ArchError` for other names."""
    if name == SKIP_OP:
        return None
    m = _OP_RE.match(str(name))
    if not m or int(m.group(1)) % 2 == 0 or int(m.group(2)) < 1:
        raise ArchError(f"{where}: unknown op {name!r}; ops are 'skip' or 'k<odd kernel>_e<expansion>' "
                        f"such as 'k3_e6'")
    return int(m.group(1)), int(m.group(2))


def op_block_spec(name: str, c_out: int, stride: tuple[int, int], where: str = "op") -> BlockSpec:
    """The :class:`BlockSpec` of op ``name`` (what the backbone, the supernet and the latency table build)."""
    ke = parse_op(name, where)
    if ke is None:
        return BlockSpec(op="skip", kernel=0, expansion=0, out_channels=0, stride=(1, 1))
    return BlockSpec(op="mbconv", kernel=ke[0], expansion=ke[1], out_channels=c_out, stride=stride)


def _int(value: Any, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArchError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _width(value: Any, where: str) -> int:
    """A block width: the backbone rounds widths to multiples of 8, so an arch must hold rounded ones."""
    c = _int(value, where)
    if make_divisible(c) != c:
        raise ArchError(f"{where} is {c}; block widths must be multiples of 8 (MobileNet rounding), "
                        f"e.g. {make_divisible(c)}")
    return c


def _stride(value: Any, where: str) -> list[int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ArchError(f"{where} must be [stride_h, stride_w], got {value!r}")
    return [_int(value[0], f"{where}[0]"), _int(value[1], f"{where}[1]")]


def _section(data: Mapping[str, Any], key: str, where: str, prefix: str = "") -> Mapping[str, Any]:
    sec = data.get(key)
    if not isinstance(sec, Mapping):
        raise ArchError(f"{where}: '{prefix}{key}' must be a mapping, got {sec!r}")
    return sec


def _validate_body(data: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """Check ``input`` / ``stem`` / ``cells`` / ``head`` of ``data`` (the top level, or the ``rectifier``
    section with ``prefix="rectifier."``) and return them normalised."""
    inp = _section(data, "input", where, prefix)
    for key in ("img_h", "img_w", "channels"):
        _int(inp.get(key), f"{where}: {prefix}input.{key}")
    stem = _section(data, "stem", where, prefix)
    c = _width(stem.get("channels"), f"{where}: {prefix}stem.channels")
    out: dict[str, Any] = {"input": dict(inp), "stem": {
        "channels": c, "stride": _stride(stem.get("stride", [2, 2]), f"{where}: {prefix}stem.stride")}}
    cells = data.get("cells")
    if not isinstance(cells, list) or not cells:
        raise ArchError(f"{where}: '{prefix}cells' must be a non-empty list")
    norm_cells = []
    for i, cell in enumerate(cells):
        cw = f"{where}: {prefix}cells[{i}]"
        if not isinstance(cell, Mapping):
            raise ArchError(f"{cw} must be a mapping, got {cell!r}")
        op = cell.get("op")
        ke = parse_op(op, f"{cw}.op")  # type: ignore[arg-type]
        c_in = _int(cell.get("c_in"), f"{cw}.c_in")
        c_out = _width(cell.get("c_out"), f"{cw}.c_out")
        stride = _stride(cell.get("stride", [1, 1]), f"{cw}.stride")
        if c_in != c:
            raise ArchError(f"{cw}.c_in is {c_in} but the previous layer outputs {c} channels")
        if ke is None and (c_in != c_out or stride != [1, 1]):
            raise ArchError(f"{cw}: a 'skip' cell needs c_in == c_out and stride [1, 1], got "
                            f"{c_in}->{c_out} stride {stride}")
        norm_cells.append({**dict(cell), "op": op, "c_in": c_in, "c_out": c_out, "stride": stride})
        c = c_out
    out["cells"] = norm_cells
    head = _section(data, "head", where, prefix)
    out["head"] = {**dict(head), "channels": _int(head.get("channels"), f"{where}: {prefix}head.channels")}
    return out


def validate_arch(data: Any, where: str = "architecture") -> dict[str, Any]:
    """Check an architecture mapping against the schema and return a normalised deep copy.

    Checks the format marker and version, every key's type, op names, that every cell's ``c_in``
    is the previous width and that ``skip`` cells keep width and size; the optional ``rectifier``
    section likewise.

    Raises:
        ArchError: naming the bad key (``cells[3].op``, ``rectifier.stem.channels`` ...) and what it
            should be.
    """
    if not isinstance(data, Mapping):
        raise ArchError(f"{where}: an architecture must be a JSON object, got {type(data).__name__}")
    if data.get("format") != ARCH_FORMAT:
        raise ArchError(f"{where}: not a strkit architecture (format is {data.get('format')!r}, expected "
                        f"{ARCH_FORMAT!r}); pass the arch.json written by tools/search.py")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise ArchError(f"{where}: bad 'version' {version!r}")
    if version > ARCH_VERSION:
        raise ArchError(f"{where}: architecture version {version} is newer than this strkit reads "
                        f"({ARCH_VERSION}); upgrade strkit")
    out = copy.deepcopy(dict(data))
    out.update(_validate_body(data, where))
    if RECTIFIER_SECTION in data:
        sec = data[RECTIFIER_SECTION]
        if not isinstance(sec, Mapping):
            raise ArchError(f"{where}: '{RECTIFIER_SECTION}' must be a mapping with input, stem, cells and head "
                            f"(the searched tps localisation network), got {sec!r}; remove it for a "
                            "backbone-only architecture")
        out[RECTIFIER_SECTION] = _validate_body(sec, where, f"{RECTIFIER_SECTION}.")
    return out


def arch_sections(arch: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The searched parts a validated architecture describes: ``{"backbone": arch}`` plus
    ``"rectifier"`` (its section) when present. Each value has ``input``, ``stem``, ``cells``, ``head``."""
    sections: dict[str, Mapping[str, Any]] = {"backbone": arch}
    if RECTIFIER_SECTION in arch:
        sections["rectifier"] = arch[RECTIFIER_SECTION]
    return sections


def section_arch(arch: Mapping[str, Any], part: str, where: str = "architecture") -> dict[str, Any]:
    """A standalone architecture (what :class:`SearchedBackbone` builds) for ``part`` of a validated
    architecture: the architecture itself for ``backbone``, its ``rectifier`` section for ``rectifier``.

    Raises:
        ArchError: the part is unknown or the architecture has no such section.
    """
    sections = arch_sections(arch)
    if part not in ARCH_PARTS:
        raise ArchError(f"{where}: unknown searched part {part!r}; parts are {list(ARCH_PARTS)}")
    if part not in sections:
        raise ArchError(f"{where}: the architecture has no '{RECTIFIER_SECTION}' section (it was searched "
                        "without the rectifier); search with model.rectifier.loc: {name: supernet, ...} or "
                        "use the fixed localisation CNN (drop model.rectifier.loc)")
    sec = sections[part]
    return {"format": arch["format"], "version": arch["version"],
            **{k: copy.deepcopy(sec[k]) for k in ("input", "stem", "cells", "head")}}


def load_arch(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read and validate an architecture: a JSON file path, or a mapping (e.g. the copy a checkpoint
    stores inline). Returns the normalised mapping (see :func:`validate_arch`)."""
    if isinstance(source, Mapping):
        return validate_arch(source, "architecture")
    path = Path(source)
    if not path.is_file():
        raise ArchError(f"architecture file not found: {path}. Pass the arch.json written by "
                        f"'tools/search.py run' (model.backbone.arch=PATH)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchError(f"{path}: not a readable JSON architecture file ({exc})") from None
    return validate_arch(data, str(path))


def arch_blocks(arch: Mapping[str, Any]) -> list[BlockSpec]:
    """The block list (one :class:`BlockSpec` per cell) of a validated architecture."""
    return [op_block_spec(c["op"], c["c_out"], (c["stride"][0], c["stride"][1]), f"cells[{i}]")
            for i, c in enumerate(arch["cells"])]


@BACKBONES.register("searched")
class SearchedBackbone(MobileNetV2Backbone):
    """Stem 3×3 conv -> the architecture's cells (inverted residuals / skips) -> 1×1 head conv.

    Args:
        in_channels, img_h, img_w: input image shape (may differ from the shape the search ran at;
            the strides are those of the architecture).
        arch: path of an architecture JSON file, or the mapping itself (a checkpoint stores it inline).

    Attributes:
        arch: the validated architecture mapping (what a checkpoint should store).

    Shapes: ``forward(x: B×C×H×W) -> B×head.channels×H'×W'`` with H' = H / (product of the stride
    heights), W' likewise (ceil at every stride).
    """

    def __init__(self, in_channels: int, img_h: int, img_w: int,
                 arch: str | Path | Mapping[str, Any] = "") -> None:
        if not arch:
            raise ArchError("backbone 'searched' needs an architecture: set model.backbone.arch to the "
                            "arch.json written by 'tools/search.py run'")
        spec = load_arch(arch)
        super().__init__(in_channels, img_h, img_w, blocks=arch_blocks(spec),
                         stem_channels=spec["stem"]["channels"], stem_stride=spec["stem"]["stride"],
                         out_channels=spec["head"]["channels"], width_mult=1.0)
        self.arch = spec

    def op_names(self) -> list[str]:
        """The op of every cell, in order (``["k5_e1", "k3_e6", "skip", ...]``)."""
        return [c["op"] for c in self.arch["cells"]]
