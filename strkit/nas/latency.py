"""Latency lookup table, expected cost of a supernet, and the cost losses (DESIGN.md §3).

The table holds one measured time per candidate op at each cell's input shape (H, W, C_in, C_out,
stride, kernel, expansion), plus the fixed stem and head convs and, optionally, the parts of the
recogniser outside the searched parts (rectifier, sequence model + decoder). When the ``tps``
rectifier's localisation body is searched too (:func:`strkit.nas.arch.searched_parts`), its stem,
candidate ops and head are entries like the backbone's, timed at the (down-scaled) shapes the body
sees, and the rest of the rectifier (input resize, pool, FCs, TPS matrix product, ``grid_sample``) is
the fixed part ``rectifier_rest`` instead of ``rectifier``. Each time is the median over
``repeats`` timed runs, in eval mode under ``torch.inference_mode``, after ``warmup`` runs, with the
thread count fixed (CPU) or with ``torch.cuda.synchronize`` around each run (CUDA). The table is a
versioned JSON file naming the device, thread count, batch size and torch version it was measured
with.

The expected latency of the searched parts is differentiable in α::

    E[lat] = fixed + Σ_parts (stem + head + Σ_cells Σ_ops softmax(α_cell)_op · LUT(op at the cell's shape))

and the same sum with per-op parameter counts or FLOPs (2 per multiply-add) gives the ``params`` / ``flops``
constraints (searched parts only: backbone, and the rectifier's localisation body when searched).
:func:`cost_loss` combines it with the task loss (``linear``, ``hinge`` or ProxylessNAS' multiplicative
``mul_log`` form).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from strkit.models.backbones.searched import arch_sections
from strkit.nas.arch import build_searched, derive_arch, find_supernet, searched_edges, searched_parts
from strkit.nas.proxyless import MixedEdge
from strkit.nas.search_space import SuperNet, op_info, standalone_op
from strkit.registry import Registry

LUT_FORMAT = "strkit-latency-lut"
LUT_VERSION = 1


class LatencyTableError(ValueError):
    """A latency table is unreadable, or lacks an entry the model needs."""


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (0 = leave as is), then restore."""
    old = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_modules(items: Sequence[tuple[Callable[[Tensor], Any], Tensor]], repeats: int = 30, warmup: int = 5,
                 device: torch.device | str = "cpu") -> list[float]:
    """Median wall time, in milliseconds, of each ``module(example)`` of ``items``.

    Each module gets ``warmup`` untimed calls; then ``repeats`` rounds time one call of every module
    in turn (interleaved, so that a change of machine load during the measurement shifts every entry
    alike instead of a few). On CUDA each call is bracketed by ``torch.cuda.synchronize``. The caller
    sets eval mode and the thread count.
    """
    device = torch.device(device)
    for module, example in items:
        for _ in range(max(0, warmup)):
            module(example)
    _sync(device)
    times: list[list[float]] = [[] for _ in items]
    for _ in range(max(1, repeats)):
        for i, (module, example) in enumerate(items):
            _sync(device)
            t0 = time.perf_counter()
            module(example)
            _sync(device)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(statistics.median(t)) for t in times]


def time_module(module: Callable[[Tensor], Any], example: Tensor, repeats: int = 30, warmup: int = 5,
                device: torch.device | str = "cpu") -> float:
    """Median wall time of ``module(example)`` in milliseconds (see :func:`time_modules`)."""
    return time_modules([(module, example)], repeats, warmup, device)[0]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return name


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
def entry_key(info: Mapping[str, Any]) -> str:
    """Canonical key of an op description (every field but ``ms``, sorted): ``c_in=16|...|w=64``."""
    parts = []
    for k in sorted(info):
        if k == "ms":
            continue
        v = info[k]
        parts.append(f"{k}={'x'.join(str(int(s)) for s in v) if isinstance(v, list | tuple) else v}")
    return "|".join(parts)


def stem_info(net: nn.Module) -> dict[str, Any]:
    """LUT description of a supernet's stem conv."""
    c_in, h, w = net.input["channels"], net.input["img_h"], net.input["img_w"]  # type: ignore[index]
    return {"op": "stem", "h": h, "w": w, "c_in": c_in, "c_out": net.stem_channels,
            "stride": list(net.stem_stride), "kernel": 3, "expansion": 0}


def head_info(net: nn.Module) -> dict[str, Any]:
    """LUT description of a supernet's 1×1 head conv."""
    c, h, w = net.head_in  # type: ignore[misc]
    return {"op": "head", "h": h, "w": w, "c_in": c, "c_out": net.out_channels, "stride": [1, 1],
            "kernel": 1, "expansion": 0}


@dataclass
class LatencyTable:
    """Measured op latencies (milliseconds) and the device they were measured on.

    Attributes:
        entries: :func:`entry_key` -> (op description, ms).
        fixed: parts outside the searched ones measured once (``rectifier`` or, when its localisation
            body is searched, ``rectifier_rest``; ``sequence_decoder``) -> ms.
        meta: device, device_name, threads, torch, batch, dtype, repeats, warmup, created, input.
        scale: calibration factor applied by :meth:`lookup` (see :func:`calibrate_lut`): ops timed one
            by one miss part of what a whole network costs (memory traffic between ops, allocator,
            dispatch), and on CPU that share is nearly the same fraction for every sub-network.
    """

    entries: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict)
    fixed: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0  # calibration: whole-backbone latency ≈ scale · Σ isolated op latencies

    def add(self, info: Mapping[str, Any], ms: float) -> None:
        self.entries[entry_key(info)] = (dict(info), round(float(ms), 6))  # what the JSON file keeps

    def __contains__(self, info: object) -> bool:
        return isinstance(info, Mapping) and entry_key(info) in self.entries

    def lookup(self, info: Mapping[str, Any]) -> float:
        """Milliseconds of the op ``info``; raises :class:`LatencyTableError` naming it if missing."""
        key = entry_key(info)
        if key not in self.entries:
            raise LatencyTableError(
                f"the latency table has no entry for {key} (measured on {self.meta.get('device', '?')} for "
                f"input {self.meta.get('input', '?')}); it was measured for another search space or "
                "input size: re-measure it with 'tools/search.py lut CONFIG'")
        return self.entries[key][1] * self.scale

    @property
    def fixed_ms(self) -> float:
        """Sum of the parts outside the searched ones."""
        return float(sum(self.fixed.values()))

    def edge_costs(self, edge: MixedEdge) -> Tensor:
        """The latency of every candidate of ``edge`` (ms), shape (N,)."""
        return torch.tensor([self.lookup(i) for i in edge.infos], dtype=torch.float64)

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": LUT_FORMAT, "version": LUT_VERSION, **self.meta,
                "fixed": dict(self.fixed), "scale": self.scale,
                "entries": [{**info, "ms": ms} for info, ms in self.entries.values()]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency table") -> LatencyTable:
        if not isinstance(data, Mapping) or data.get("format") != LUT_FORMAT:
            raise LatencyTableError(f"{where}: not a strkit latency table (no format '{LUT_FORMAT}'); "
                                    "write one with 'tools/search.py lut CONFIG'")
        version = data.get("version")
        if not isinstance(version, int) or version > LUT_VERSION:
            raise LatencyTableError(f"{where}: latency table version {version!r} is not readable by this "
                                    f"strkit (reads <= {LUT_VERSION})")
        table = cls(meta={k: v for k, v in data.items()
                          if k not in ("format", "version", "entries", "fixed", "scale")})
        try:
            table.fixed = {str(k): float(v) for k, v in dict(data.get("fixed", {})).items()}
            table.scale = float(data.get("scale", 1.0))
            if not math.isfinite(table.scale) or table.scale <= 0:
                raise LatencyTableError(f"{where}: calibration scale must be a positive number, got "
                                        f"{data.get('scale')!r}")
            for i, e in enumerate(data["entries"]):
                if not isinstance(e, Mapping) or "ms" not in e:
                    raise LatencyTableError(f"{where}: entries[{i}] has no 'ms'")
                info = {k: v for k, v in e.items() if k != "ms"}
                table.add(info, float(e["ms"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, LatencyTableError):
                raise
            raise LatencyTableError(f"{where}: malformed latency table ({type(exc).__name__}: {exc})") from None
        return table

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"latency table not found: {path}; measure one with "
                                    "'tools/search.py lut CONFIG' (or leave search.lut empty to measure it)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LatencyTableError(f"{path}: not a readable JSON latency table ({exc})") from None
        return cls.from_dict(data, str(path))

    def compatibility(self, device: torch.device | str, threads: int) -> list[str]:
        """Reasons why this table may not describe ``device`` with ``threads`` threads (empty if none)."""
        notes = []
        device = torch.device(device)
        if self.meta.get("device") != device.type:
            notes.append(f"measured on {self.meta.get('device')!r}, used for {device.type!r}")
        if device.type == "cpu" and threads and self.meta.get("threads") != threads:
            notes.append(f"measured with {self.meta.get('threads')} thread(s), used with {threads}")
        if self.meta.get("torch") != str(torch.__version__):
            notes.append(f"measured with torch {self.meta.get('torch')}, running {torch.__version__}")
        return notes


def load_lut(path: str | Path) -> LatencyTable:
    """Read a latency table JSON file (see :class:`LatencyTable`)."""
    return LatencyTable.load(path)


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------
class _SequenceDecoder(nn.Module):
    """Inference tail of a recogniser: B×T×C' features -> sequence -> decoder logits."""

    def __init__(self, sequence: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.sequence, self.decoder = sequence, decoder

    def forward(self, feats: Tensor) -> Tensor:
        return self.decoder(self.sequence(feats), None)


def recogniser_parts(model: nn.Module, batch: int = 1) -> dict[str, tuple[nn.Module, Tensor]]:
    """The parts of a recogniser outside its searched parts, with example inputs, for the fixed latency:
    ``rectifier`` (B×C×H×W images) — or ``rectifier_rest`` (the rectifier without its searched
    localisation body, from its ``remainder(batch)``) when the rectifier holds a supernet — and
    ``sequence_decoder`` (B×T×C' features). Empty for a model without these stages (e.g. a bare supernet)."""
    needed = ("rectifier", "backbone", "sequence", "decoder", "img_h", "img_w", "channels")
    if not all(hasattr(model, a) for a in needed):
        return {}
    backbone = model.backbone
    t = int(backbone.out_hw[1])
    images = torch.randn(batch, model.channels, model.img_h, model.img_w)
    feats = torch.randn(batch, t, int(backbone.out_channels))
    if "rectifier" in searched_parts(model.rectifier):
        if not callable(getattr(model.rectifier, "remainder", None)):
            raise LatencyTableError(f"the rectifier {type(model.rectifier).__name__} holds a searched part but no "
                                    "remainder() to time the rest of it; only the 'tps' rectifier can be searched")
        rect = {"rectifier_rest": model.rectifier.remainder(batch)}
    else:
        rect = {"rectifier": (model.rectifier, images)}
    return {**rect, "sequence_decoder": (_SequenceDecoder(model.sequence, model.decoder), feats)}


def _add_todo(todo: dict[str, tuple[dict[str, Any], nn.Module, tuple[int, int, int]]], net: SuperNet) -> None:
    """Add the stem, every candidate op and the head of ``net`` to ``todo`` (key -> (info, module, C×H×W
    input)), once per distinct description."""
    stem = stem_info(net)
    todo.setdefault(entry_key(stem), (stem, net.stem, (net.input["channels"], net.input["img_h"], net.input["img_w"])))
    for edge in net.edges():
        for info in edge.infos:  # standalone blocks: what the derived network runs, shared weights or not
            key = entry_key(info)
            if key not in todo:
                todo[key] = (info, standalone_op(info), edge.in_shape)
    head = head_info(net)
    todo.setdefault(entry_key(head), (head, net.head, net.head_in))


def measure_lut(model: nn.Module, device: torch.device | str = "cpu", threads: int = 0, repeats: int = 30,
                warmup: int = 5, batch: int = 1, include_rest: bool = True,
                progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """Measure the latency table of the supernet(s) in ``model`` (backbone, and rectifier when searched).

    Every distinct (op, shape) among the candidates is timed once (cells of a stage that share a
    shape share entries); ``skip`` costs 0. The stem and head of each searched part are timed too,
    and, when ``model`` is a recogniser and ``include_rest``, its rectifier (or the rectifier's
    remainder when its localisation body is searched) and sequence model + decoder (fixed parts).

    Args:
        model: a :class:`~strkit.nas.search_space.SuperNet` or a recogniser holding one (or two).
        device: where to time (``cpu``, ``cuda``...). threads: CPU threads (0 = torch's default).
        repeats, warmup: timed and untimed runs per entry. batch: images per run.
        progress: called with (entries done, entries to time) after each group.
    """
    device = torch.device(device)
    net = find_supernet(model)
    todo: dict[str, tuple[dict[str, Any], nn.Module, tuple[int, int, int]]] = {}
    for part in searched_parts(model).values():
        _add_todo(todo, part)
    rest = recogniser_parts(model, batch) if include_rest else {}
    table = LatencyTable(meta={
        "device": device.type, "device_name": _device_name(device),
        "threads": torch.get_num_threads() if threads <= 0 else threads, "torch": str(torch.__version__),
        "batch": batch, "dtype": "float32", "repeats": repeats, "warmup": warmup,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": dict(net.input)})
    items: list[tuple[str, dict[str, Any] | None, nn.Module, Tensor]] = []
    for info, op, (c, h, w) in todo.values():
        if info["op"] == "skip":
            table.add(info, 0.0)
            continue
        items.append(("op", info, copy.deepcopy(op).to(device).eval(), torch.randn(batch, c, h, w, device=device)))
    for name, (mod, example) in rest.items():
        items.append((name, None, copy.deepcopy(mod).to(device).eval(), example.to(device)))
    # interleaved rounds over all entries: a change of load hits every entry alike, and each op
    # runs after others (caches as cold as inside a network), not in a tight loop of its own
    chunk = max(1, len(items))
    with torch_threads(threads):
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            for (kind, info, _, _), ms in zip(part, time_modules([(m, x) for _, _, m, x in part], repeats,
                                                                 warmup, device), strict=True):
                if info is not None:
                    table.add(info, ms)
                else:
                    table.fixed[kind] = ms
            if progress:
                progress(min(start + chunk, len(items)), len(items))
    return table


# ----------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------
def arch_infos(arch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """LUT descriptions of every layer of an architecture (stem, cells, head) at its search input; also
    of a section of one (e.g. ``arch["rectifier"]``: the same keys)."""
    inp, stem = arch["input"], arch["stem"]
    sh, sw = stem["stride"]
    h, w = (inp["img_h"] - 1) // sh + 1, (inp["img_w"] - 1) // sw + 1
    infos = [{"op": "stem", "h": inp["img_h"], "w": inp["img_w"], "c_in": inp["channels"],
              "c_out": stem["channels"], "stride": [sh, sw], "kernel": 3, "expansion": 0}]
    for cell in arch["cells"]:
        s = cell["stride"]
        infos.append(op_info(cell["op"], cell["c_in"], cell["c_out"], h, w, (s[0], s[1])))
        h, w = (h - 1) // s[0] + 1, (w - 1) // s[1] + 1
    c = arch["cells"][-1]["c_out"]
    infos.append({"op": "head", "h": h, "w": w, "c_in": c, "c_out": arch["head"]["channels"],
                  "stride": [1, 1], "kernel": 1, "expansion": 0})
    return infos


def predict_arch_latency(arch: Mapping[str, Any], lut: LatencyTable, include_fixed: bool = False,
                         parts: Sequence[str] | None = None) -> float:
    """LUT latency of an architecture's searched parts (stem + cells + head of the backbone and, when the
    architecture has one, of the ``rectifier`` section), plus the fixed parts if asked.

    Args:
        parts: the sections to sum (``("backbone",)``, ``("rectifier",)``); default: every section present.
    """
    sections = arch_sections(arch)
    wanted = list(sections) if parts is None else [p for p in parts if p in sections]
    ms = sum(lut.lookup(i) if i["op"] != "skip" else 0.0 for p in wanted for i in arch_infos(sections[p]))
    return float(ms + (lut.fixed_ms if include_fixed else 0.0))


def _count_flops(module: nn.Module, example: Tensor) -> float:
    """FLOPs of one forward pass of ``module`` per image: convolutions and linear layers, a multiply-add
    counted as 2 FLOPs (the convention of ``torch.utils.flop_counter`` and ``tools/eval.py``)."""
    total = [0.0]

    def conv_hook(m: nn.Conv2d, _inp: Any, out: Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += 2 * out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: Any, out: Tensor) -> None:
        total[0] += 2 * out[0].numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was = module.training
    try:
        module.eval()
        with torch.inference_mode():
            module(example)
    finally:
        module.train(was)
        for h in handles:
            h.remove()
    return total[0]


def _param_count(module: nn.Module) -> float:
    return float(sum(p.numel() for p in module.parameters()))


COST_KINDS: Registry[Callable[..., tuple[list[Tensor], float]]] = Registry("search constraint")


def _as_nets(nets: SuperNet | Sequence[SuperNet]) -> list[SuperNet]:
    return [nets] if isinstance(nets, SuperNet) else list(nets)


# Each entry: (a supernet, or the searched supernets in searched_edges order; the table) -> (per-cell
# candidate costs, the cells of every net in order; fixed cost).
@COST_KINDS.register("latency")
def _latency_costs(nets: SuperNet | Sequence[SuperNet], lut: LatencyTable | None = None) -> tuple[list[Tensor], float]:
    nets = _as_nets(nets)
    if lut is None:
        raise LatencyTableError("the latency constraint needs a latency table (search.lut, or measure "
                                "one with 'tools/search.py lut CONFIG')")
    fixed = lut.fixed_ms + sum(lut.lookup(stem_info(n)) + lut.lookup(head_info(n)) for n in nets)
    return [lut.edge_costs(e) for n in nets for e in n.edges()], fixed


@COST_KINDS.register("params")
def _params_costs(nets: SuperNet | Sequence[SuperNet], lut: LatencyTable | None = None) -> tuple[list[Tensor], float]:
    nets = _as_nets(nets)
    costs = [torch.tensor([_param_count(standalone_op(i)) / 1e6 for i in e.infos], dtype=torch.float64)
             for n in nets for e in n.edges()]
    return costs, sum(_param_count(n.stem) + _param_count(n.head) for n in nets) / 1e6


@COST_KINDS.register("flops")
def _flops_costs(nets: SuperNet | Sequence[SuperNet], lut: LatencyTable | None = None) -> tuple[list[Tensor], float]:
    nets = _as_nets(nets)
    costs = []
    fixed = 0.0
    for net in nets:
        for e in net.edges():
            x = torch.zeros(1, *e.in_shape)
            costs.append(torch.tensor([_count_flops(standalone_op(i), x) / 1e6 for i in e.infos],
                                      dtype=torch.float64))
        c, h, w = net.input["channels"], net.input["img_h"], net.input["img_w"]
        fixed += _count_flops(net.stem, torch.zeros(1, c, h, w)) + _count_flops(net.head, torch.zeros(1, *net.head_in))
    return costs, fixed / 1e6


COST_UNITS = {"latency": "ms", "params": "M params", "flops": "MFLOPs"}


class CostModel:
    """Per-cell candidate costs of the searched parts for one constraint, and their expectation under p.

    Args:
        model: a supernet or a recogniser holding one (the backbone) or two (with the rectifier's
            localisation body).
        kind: ``latency`` (needs ``lut``; includes the LUT's fixed parts), ``params`` (millions,
            searched parts) or ``flops`` (MFLOPs per image, searched parts; a multiply-add is 2 FLOPs).
        lut: the latency table.

    Attributes:
        edges, costs: the cells of every searched part in :func:`~strkit.nas.arch.searched_edges` order
            (backbone, then rectifier) and their candidate costs (one (N,) float64 tensor each).
    """

    def __init__(self, model: nn.Module, kind: str = "latency", lut: LatencyTable | None = None) -> None:
        self.kind = kind
        self.net = find_supernet(model)
        self.parts = searched_parts(model)
        self.edges = searched_edges(model)
        self.costs, self.fixed = COST_KINDS.get(kind)(list(self.parts.values()), lut)
        self.unit = COST_UNITS.get(kind, "")

    def expected(self) -> Tensor:
        """fixed + Σ_cells Σ_ops softmax(α)_op · cost_op over every searched cell: a differentiable scalar
        (float64)."""
        total: Tensor | None = None
        for e, c in zip(self.edges, self.costs, strict=True):
            term = (e.probs().double() * c.to(e.alpha.device)).sum()
            total = term if total is None else total + term
        assert total is not None
        return total + self.fixed

    def of_choices(self, choices: Sequence[int]) -> float:
        """The cost of one sub-network (candidate index per cell, in :attr:`edges` order)."""
        return float(self.fixed + sum(float(c[j]) for c, j in zip(self.costs, choices, strict=True)))

    def bounds(self) -> tuple[float, float]:
        """(cheapest, most expensive) sub-network cost."""
        return (float(self.fixed + sum(float(c.min()) for c in self.costs)),
                float(self.fixed + sum(float(c.max()) for c in self.costs)))


def expected_latency(model: nn.Module, lut: LatencyTable) -> Tensor:
    """E[lat] in ms (see the module docstring), differentiable in every α. Equals the LUT sum of the
    chosen ops when every α is one-hot (in the limit)."""
    return CostModel(model, "latency", lut).expected()


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
COST_LOSSES: Registry[Callable[..., Tensor]] = Registry("cost loss")


@COST_LOSSES.register("linear")
def _linear(task: Tensor, cost: Tensor, target: float, lam: float, beta: float) -> Tensor:
    """ProxylessNAS ``add#linear``: L = L_task + λ·(E − T)/T."""
    return task + lam * (cost - target) / target


@COST_LOSSES.register("hinge")
def _hinge(task: Tensor, cost: Tensor, target: float, lam: float, beta: float) -> Tensor:
    """L = L_task + λ·max(0, E − T)/T (no reward for going below the target)."""
    return task + lam * torch.relu(cost - target) / target


@COST_LOSSES.register("mul_log")
def _mul_log(task: Tensor, cost: Tensor, target: float, lam: float, beta: float) -> Tensor:
    """ProxylessNAS ``mul#log``: L = L_task · (log E / log T)^β (E clamped to > 1)."""
    if target <= 1.0:
        raise ValueError(f"the mul_log cost loss needs a target > 1 (log T > 0), got {target}; "
                         "use search.loss=linear for targets below 1")
    ratio = torch.log(cost.clamp_min(1.0 + 1e-6)) / math.log(target)
    return task * ratio.pow(beta)


def cost_loss(task_loss: Tensor, cost: Tensor, target: float, form: str = "linear", lam: float = 0.1,
              beta: float = 0.6) -> Tensor:
    """Total architecture loss from the task loss and the expected cost E (scalar tensors).

    Forms: ``linear`` L + λ(E−T)/T, ``hinge`` L + λ·max(0, E−T)/T, ``mul_log`` L·(log E/log T)^β.
    """
    if target <= 0:
        raise ValueError(f"the cost target must be > 0, got {target}")
    return COST_LOSSES.get(form)(task_loss, cost.to(task_loss.dtype), float(target), float(lam), float(beta))


# ----------------------------------------------------------------------------------------------
# Validation: how well does the table predict whole networks?
# ----------------------------------------------------------------------------------------------
@dataclass
class LutValidation:
    """Predicted vs measured backbone latency of random sub-networks."""

    predicted_ms: list[float]
    measured_ms: list[float]
    ops: list[list[str]]

    @property
    def errors_pct(self) -> list[float]:
        return [100.0 * abs(p - m) / m for p, m in zip(self.predicted_ms, self.measured_ms, strict=True)]

    @property
    def mae_pct(self) -> float:
        """Mean absolute error of the prediction, in % of the measured latency."""
        return float(statistics.fmean(self.errors_pct))

    @property
    def bias_pct(self) -> float:
        """Mean signed error (prediction − measurement), in % of the measurement."""
        return float(statistics.fmean(100.0 * (p - m) / m
                                      for p, m in zip(self.predicted_ms, self.measured_ms, strict=True)))

    @property
    def correlation(self) -> float:
        """Pearson correlation of predicted and measured latency (ranking quality; insensitive to a
        uniform change of machine speed between the table and the check). NaN for fewer than 2."""
        if len(self.measured_ms) < 2 or len(set(self.predicted_ms)) < 2 or len(set(self.measured_ms)) < 2:
            return math.nan
        return float(statistics.correlation(self.predicted_ms, self.measured_ms))

    @property
    def scale(self) -> float:
        """Least-squares factor s with measured ≈ s · predicted (1 = no systematic offset)."""
        num = sum(p * m for p, m in zip(self.predicted_ms, self.measured_ms, strict=True))
        den = sum(p * p for p in self.predicted_ms)
        return num / den if den > 0 else math.nan

    @property
    def scaled_mae_pct(self) -> float:
        """MAE in % after multiplying the predictions by :attr:`scale`: the error left once a uniform
        speed difference (e.g. another load on a shared machine) is taken out."""
        s = self.scale
        return float(statistics.fmean(100.0 * abs(s * p - m) / m
                                      for p, m in zip(self.predicted_ms, self.measured_ms, strict=True)))

    def to_dict(self) -> dict[str, Any]:
        return {"n": len(self.measured_ms), "mae_pct": self.mae_pct, "bias_pct": self.bias_pct,
                "correlation": self.correlation, "scale": self.scale, "scaled_mae_pct": self.scaled_mae_pct,
                "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms, "ops": self.ops}


def measure_archs_latency(archs: Sequence[Mapping[str, Any]], device: torch.device | str = "cpu",
                          threads: int = 0, repeats: int = 30, warmup: int = 5, batch: int = 1,
                          progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Measured end-to-end latency (ms) of the ``searched`` backbone of each architecture at its search
    input, all timed in interleaved rounds (see :func:`time_modules`)."""
    device = torch.device(device)
    out: list[float] = []
    group = max(1, len(archs))
    with torch_threads(threads):
        for start in range(0, len(archs), group):
            items = []
            for arch in archs[start:start + group]:
                inp = arch["input"]
                items.append((build_searched(arch).to(device).eval(),
                              torch.randn(batch, inp["channels"], inp["img_h"], inp["img_w"], device=device)))
            out += time_modules(items, repeats, warmup, device)
            if progress:
                progress(len(out), len(archs))
    return out


def measure_arch_latency(arch: Mapping[str, Any], device: torch.device | str = "cpu", threads: int = 0,
                         repeats: int = 30, warmup: int = 5, batch: int = 1) -> float:
    """Measured end-to-end latency (ms) of the ``searched`` backbone of ``arch`` at its search input."""
    return measure_archs_latency([arch], device, threads, repeats, warmup, batch)[0]


def validate_lut(model: nn.Module, lut: LatencyTable, n: int = 20, device: torch.device | str = "cpu",
                 threads: int = 0, repeats: int = 30, warmup: int = 5, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> LutValidation:
    """Build ``n`` random sub-networks of the supernet in ``model`` (uniform op per cell) as
    ``searched`` backbones, measure each end to end and compare with the LUT prediction (backbone:
    stem + cells + head; the fixed parts are left out of both sides)."""
    threads = threads or int(lut.meta.get("threads", 0) or 0)
    batch = int(lut.meta.get("batch", 1))
    archs = random_archs(model, n, seed)
    pred = [predict_arch_latency(a, lut) for a in archs]
    ops = [[c["op"] for c in a["cells"]] for a in archs]
    meas = measure_archs_latency(archs, device, threads, repeats, warmup, batch, progress)
    return LutValidation(pred, meas, ops)


def random_archs(model: nn.Module, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` random sub-networks (a uniformly drawn op per cell) of the supernet in ``model``."""
    net = find_supernet(model)
    rng = random.Random(seed)
    return [derive_arch(net, [rng.randrange(len(e)) for e in net.edges()]) for _ in range(n)]


#: Offset of the calibration networks' seed from the validation seed: the two sets never coincide.
CALIBRATION_SEED_OFFSET = 7919


def calibrate_lut(model: nn.Module, lut: LatencyTable, n: int = 5, device: torch.device | str = "cpu",
                  threads: int = 0, repeats: int = 30, warmup: int = 5, seed: int = 0) -> LatencyTable:
    """Fit ``lut.scale`` (least squares, measured ≈ scale · Σ ops) on ``n`` random sub-networks timed end to
    end, drawn with ``seed + CALIBRATION_SEED_OFFSET`` so that :func:`validate_lut` (same ``seed``) checks
    the calibrated table on other networks. Returns ``lut`` (changed in place); ``n = 0`` leaves it as is."""
    if n <= 0:
        return lut
    threads = threads or int(lut.meta.get("threads", 0) or 0)
    archs = random_archs(model, n, seed + CALIBRATION_SEED_OFFSET)
    lut.scale = 1.0
    pred = [predict_arch_latency(a, lut) for a in archs]
    meas = measure_archs_latency(archs, device, threads, repeats, warmup, int(lut.meta.get("batch", 1)))
    fit = LutValidation(pred, meas, [[c["op"] for c in a["cells"]] for a in archs]).scale
    if not math.isfinite(fit) or fit <= 0:
        raise LatencyTableError(f"latency table calibration failed: measured {meas} ms for predicted {pred} ms")
    lut.scale = float(fit)
    lut.meta["calibration"] = {"networks": n, "seed": seed + CALIBRATION_SEED_OFFSET, "predicted_ms": pred,
                               "measured_ms": meas}
    return lut
