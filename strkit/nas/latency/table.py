"""The latency lookup table: one measured time per candidate op at each cell's input shape.

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
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from strkit.atomic import write_text_atomic
from strkit.models.backbones.searched import arch_sections
from strkit.nas.arch import find_supernet, searched_parts
from strkit.nas.proxyless import MixedEdge
from strkit.nas.search_space import SuperNet, op_info, standalone_op

LUT_FORMAT = "strkit-latency-lut"


LUT_VERSION = 1


class LatencyTableError(ValueError):
    """A latency table is unreadable, or lacks an entry the model needs."""


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
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

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
