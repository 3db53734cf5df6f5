"""The search space: a MobileNetV2 supernet of mixed cells for 32×W text crops.

Layout (every width rounded to a multiple of 8)::

    stem      3×3 conv-BN-ReLU6, stride ``stem_stride``                       (fixed)
    first     one cell, stride (1, 1), choosing among ``first_ops`` (k3_e1, k5_e1, k7_e1)
    stage s   ``cells`` cells of width ``channels``: the first is a reduction cell with the stage's
              ``stride`` choosing among ``reduction_ops`` (k∈{3,5,7} × e∈{3,6}); the others are
              normal cells (stride 1) choosing among ``normal_ops`` (skip + k × e)
    head      1×1 conv-BN-ReLU6 to ``out_channels``                            (fixed)

Text-shaped strides: with a (2, 2) stem and stage strides (2,2), (2,1), (2,1), (1,1), (2,1), (1,1) a
32×W crop ends as a 1×W/4 feature map. Every candidate op is built by
:func:`strkit.models.backbones.searched.op_block_spec` — the code path the ``searched`` backbone
retrains — so what the latency table times is what is deployed.

The supernet is registered as the ``supernet`` backbone, so any rectifier, sequence model and decoder
can be put around it from config (``model.backbone: {name: supernet, stages: [...], ...}``), and as
the ``supernet`` localisation body of the ``tps`` rectifier (``model.rectifier: {name: tps, loc:
{name: supernet, ...}}``), the second searched part: its :attr:`SuperNet.part` is then ``rectifier``
(every cell's ``meta["part"]`` too), which is how :func:`strkit.nas.arch.searched_parts` tells the
two apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from strkit.models.backbones.blocks import conv_bn_act, make_divisible, strided_size
from strkit.models.backbones.searched import ARCH_PARTS, SKIP_OP, ArchError, op_block_spec, parse_op
from strkit.models.common import check_feature_size, init_conv_weights
from strkit.models.rectifiers.tps import LOC_BODIES
from strkit.models.registry import BACKBONES
from strkit.nas.proxyless import MixedEdge
from strkit.nas.shared import SharedChoice, SharedInvertedResidual
from strkit.nas.space import SearchSpace

KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
DEFAULT_FIRST_OPS: tuple[str, ...] = tuple(f"k{k}_e1" for k in KERNELS)
DEFAULT_REDUCTION_OPS: tuple[str, ...] = tuple(f"k{k}_e{e}" for k in KERNELS for e in EXPANSIONS)
DEFAULT_NORMAL_OPS: tuple[str, ...] = (SKIP_OP, *DEFAULT_REDUCTION_OPS)
# channels, cells, stride of the first cell: MobileNetV2's widths and depths with text strides.
DEFAULT_STAGES: tuple[Mapping[str, Any], ...] = (
    {"channels": 24, "cells": 2, "stride": [2, 2]},
    {"channels": 32, "cells": 3, "stride": [2, 1]},
    {"channels": 64, "cells": 4, "stride": [2, 1]},
    {"channels": 96, "cells": 3, "stride": [1, 1]},
    {"channels": 160, "cells": 3, "stride": [2, 1]},
    {"channels": 320, "cells": 1, "stride": [1, 1]},
)


@dataclass(frozen=True)
class StageSpec:
    """One stage of the space: ``cells`` cells of width ``channels``, the first with ``stride``."""

    channels: int
    cells: int
    stride: tuple[int, int]
    reduction_ops: tuple[str, ...]
    normal_ops: tuple[str, ...]

    @classmethod
    def parse(cls, entry: Any, reduction_ops: Sequence[str], normal_ops: Sequence[str],
              where: str) -> StageSpec:
        """Read ``{channels, cells, stride: [h, w], reduction_ops?, normal_ops?}`` or
        ``[channels, cells, stride_h, stride_w]``."""
        if isinstance(entry, list | tuple) and len(entry) == 4:
            entry = {"channels": entry[0], "cells": entry[1], "stride": [entry[2], entry[3]]}
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected {{channels, cells, stride: [h, w]}} or "
                             f"[channels, cells, stride_h, stride_w], got {entry!r}")
        known = {"channels", "cells", "stride", "reduction_ops", "normal_ops"}
        if set(entry) - known:
            raise ValueError(f"{where}: unknown key(s) {sorted(set(entry) - known)}; accepted: {sorted(known)}")
        try:
            channels, cells = int(entry["channels"]), int(entry.get("cells", 1))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: 'channels' and 'cells' must be integers, got {dict(entry)}") from None
        stride = entry.get("stride", [1, 1])
        stride = (stride, stride) if isinstance(stride, int) else tuple(int(s) for s in stride)
        if channels < 1 or cells < 1 or len(stride) != 2 or min(stride) < 1:
            raise ValueError(f"{where}: need channels >= 1, cells >= 1 and stride [h, w] >= 1, got "
                             f"{dict(entry)}")
        return cls(make_divisible(channels), cells, (stride[0], stride[1]),
                   _ops(entry.get("reduction_ops", reduction_ops), f"{where}.reduction_ops"),
                   _ops(entry.get("normal_ops", normal_ops), f"{where}.normal_ops"))


def _ops(names: Any, where: str) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"{where}: expected a non-empty list of op names such as ['skip', 'k3_e6'], "
                         f"got {names!r}")
    out = tuple(str(n) for n in names)
    for n in out:
        try:
            parse_op(n, where)
        except ArchError as exc:
            raise ValueError(str(exc)) from None
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: duplicate op names in {list(out)}")
    return out


def standalone_op(info: Mapping[str, Any]) -> nn.Module:
    """The standalone block a candidate stands for (what the derived network builds): from an
    :func:`op_info` record. Latency, parameter and FLOP costs are measured on it, so that they do not
    depend on whether the supernet shares weights between candidates."""
    stride = (int(info["stride"][0]), int(info["stride"][1]))
    return op_block_spec(str(info["op"]), int(info["c_out"]), stride).build(int(info["c_in"]))


def op_info(op: str, c_in: int, c_out: int, h: int, w: int, stride: tuple[int, int]) -> dict[str, Any]:
    """What the latency table records about one candidate at one position."""
    ke = parse_op(op)
    kernel, expansion = ke if ke is not None else (0, 0)
    return {"op": op, "h": h, "w": w, "c_in": c_in, "c_out": c_out, "stride": [stride[0], stride[1]],
            "kernel": kernel, "expansion": expansion}


@BACKBONES.register("supernet")
class SuperNet(SearchSpace):
    """MobileNetV2 supernet: stem -> first cell -> stages of mixed cells -> head (see module docstring).

    Args:
        in_channels, img_h, img_w: input image shape (the latency table is measured at it).
        stem_channels, stem_stride: the fixed stem conv.
        first_channels, first_ops: width and candidates of the first cell (stride 1).
        stages: list of ``{channels, cells, stride: [h, w]}`` (optionally per-stage
            ``reduction_ops`` / ``normal_ops``) or ``[channels, cells, stride_h, stride_w]``.
        reduction_ops: candidates of the first cell of each stage (no ``skip``: it changes width/size).
        normal_ops: candidates of the other cells.
        out_channels: width of the fixed 1×1 head conv.
        weight_sharing: the candidates of a cell are slices of one superkernel (its largest candidate)
            instead of separate blocks (:mod:`strkit.nas.shared`): every step trains the shared weights.
        part: which searched part of the recogniser this is (``backbone`` or ``rectifier``, see
            :data:`~strkit.models.backbones.searched.ARCH_PARTS`); set by the pipeline, not by configs.

    Attributes:
        cells: the mixed edges, in order; ``cells[i].meta`` holds part/kind/stage/c_in/c_out/stride/in_hw.
        out_channels, out_hw: output width and (H', W') at the configured input.

    Shapes: ``forward(x: B×in_channels×img_h×img_w) -> B×out_channels×H'×W'``; with the defaults
    1×32×128 -> 384×1×32.
    """

    def __init__(self, in_channels: int, img_h: int, img_w: int, stem_channels: int = 32,
                 stem_stride: Sequence[int] = (2, 2), first_channels: int = 16,
                 first_ops: Sequence[str] = DEFAULT_FIRST_OPS,
                 stages: Sequence[Any] = DEFAULT_STAGES,
                 reduction_ops: Sequence[str] = DEFAULT_REDUCTION_OPS,
                 normal_ops: Sequence[str] = DEFAULT_NORMAL_OPS, out_channels: int = 384,
                 weight_sharing: bool = False, part: str = "backbone") -> None:
        super().__init__()
        if part not in ARCH_PARTS:
            raise ValueError(f"supernet part {part!r}: use one of {list(ARCH_PARTS)}")
        self.part = part
        where = "backbone 'supernet'" if part == "backbone" else "model.rectifier.loc 'supernet'"
        specs = [StageSpec.parse(s, reduction_ops, normal_ops, f"{where} stages[{i}]")
                 for i, s in enumerate(stages)]
        first = _ops(first_ops, f"{where} first_ops")
        sh, sw = int(stem_stride[0]), int(stem_stride[1])
        c = make_divisible(stem_channels)
        self.stem_channels, self.stem_stride = c, (sh, sw)
        self.input = {"img_h": img_h, "img_w": img_w, "channels": in_channels}
        self.stem = conv_bn_act(in_channels, c, 3, (sh, sw))
        h, w = strided_size(img_h, 3, sh), strided_size(img_w, 3, sw)
        self.stem_out_hw = (h, w)
        plan: list[tuple[str, int, tuple[str, ...], int, tuple[int, int]]] = [
            ("first", 0, first, make_divisible(first_channels), (1, 1))]
        for s, spec in enumerate(specs, start=1):
            for j in range(spec.cells):
                if j == 0:
                    plan.append(("reduction", s, spec.reduction_ops, spec.channels, spec.stride))
                else:
                    plan.append(("normal", s, spec.normal_ops, spec.channels, (1, 1)))
        cells: list[MixedEdge] = []
        for i, (kind, stage, ops, c_out, stride) in enumerate(plan):
            cw = f"{where} cell {i} ({kind}, stage {stage})"
            if SKIP_OP in ops and (c != c_out or stride != (1, 1)):
                raise ValueError(f"{cw}: 'skip' is a candidate but the cell changes width ({c}->{c_out}) or "
                                 f"size (stride {list(stride)}); remove 'skip' from its op list")
            infos = [op_info(name, c, c_out, h, w, stride) for name in ops]
            shared = None
            shaped = [(name, parse_op(name)) for name in ops]
            if weight_sharing and any(ke is not None for _, ke in shaped):
                ke_list = [ke for _, ke in shaped if ke is not None]
                shared = SharedInvertedResidual(c, c_out, [k for k, _ in ke_list], [e for _, e in ke_list], stride)
                modules = {name: SharedChoice(shared, *ke) if ke is not None else standalone_op(info)
                           for (name, ke), info in zip(shaped, infos, strict=True)}
            else:
                modules = {name: standalone_op(info) for name, info in zip(ops, infos, strict=True)}
            meta = {"part": part, "index": i, "kind": kind, "stage": stage, "c_in": c, "c_out": c_out,
                    "stride": [stride[0], stride[1]], "in_hw": [h, w]}
            cells.append(MixedEdge(modules, infos, meta, shared=shared))
            # odd kernels with padding k//2 all give ceil(size / stride)
            h, w = strided_size(h, 3, stride[0]), strided_size(w, 3, stride[1])
            c = c_out
        self.cells = nn.ModuleList(cells)
        self.head = conv_bn_act(c, out_channels, 1)
        init_conv_weights(self, mode="fan_out")  # as the mobilenetv2 / searched backbones
        self.head_in = (c, h, w)
        self.out_channels = out_channels
        self.out_hw = check_feature_size(where, (h, w), img_h, img_w)

    def edges(self) -> list[MixedEdge]:
        """The mixed cells, in order."""
        return list(self.cells)  # type: ignore[arg-type]

    def arch_section(self, choices: Sequence[int]) -> dict[str, Any]:
        """``input`` / ``stem`` / ``cells`` / ``head`` of the sub-network with candidate ``choices[i]`` in cell
        ``i`` (what the ``searched`` backbone builds)."""
        edges = self.edges()
        if len(choices) != len(edges):
            raise ValueError(f"{len(choices)} choices for {len(edges)} {self.part} cells")
        cells = []
        for e, j in zip(edges, choices, strict=True):
            if not 0 <= j < len(e):
                raise ValueError(f"{self.part} cell {e.meta['index']}: choice {j} out of range (0..{len(e) - 1})")
            m = e.meta
            cells.append({"op": e.candidates[j], "c_in": m["c_in"], "c_out": m["c_out"],
                          "stride": list(m["stride"]), "kind": m["kind"], "stage": m["stage"]})
        return {"input": dict(self.input), "stem": {"channels": self.stem_channels, "stride": list(self.stem_stride)},
                "cells": cells, "head": {"channels": self.out_channels}}

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return self.head(x)


def build_supernet(space: Mapping[str, Any], in_channels: int, img_h: int, img_w: int) -> SuperNet:
    """Build a :class:`SuperNet` from a backbone config mapping (``name`` optional, must be
    ``supernet`` when given), checking its keys against the constructor."""
    spec = dict(space)
    name = spec.pop("name", "supernet")
    if name != "supernet":
        raise ValueError(f"model.backbone.name is {name!r}: a search needs the 'supernet' backbone "
                         "(model.backbone: {name: supernet, stages: [...]})")
    return BACKBONES.build({"name": "supernet", **spec}, where="model.backbone",
                           in_channels=in_channels, img_h=img_h, img_w=img_w)


@LOC_BODIES.register("supernet")
class RectifierSuperNet(SuperNet):
    """``model.rectifier.loc: {name: supernet, ...}``: a :class:`SuperNet` labelled ``part="rectifier"``; its
    config keys are the supernet's own, less the pipeline-set ``part``."""

    def __init__(self, in_channels: int, img_h: int, img_w: int, **space: Any) -> None:
        super().__init__(in_channels, img_h, img_w, part="rectifier", **space)


RectifierSuperNet.__signature__ = inspect.signature(SuperNet).replace(  # type: ignore[attr-defined]
    parameters=[p for p in inspect.signature(SuperNet).parameters.values() if p.name != "part"])
