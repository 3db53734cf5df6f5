"""The search report: probability tables, chosen ops, latency figures and a probability heat-map.

Everything here works on plain data (lists of probabilities, cell descriptions, numbers), so a
report can be rebuilt from a checkpoint without the model. :func:`write_report` writes

- ``report.md``: per-cell probability tables at the start and the end of the search (rows = cells,
  columns = candidate ops, the chosen op in bold, as the STR-NAS paper shows them; with a searched
  rectifier every row is labelled with its part, ``backbone`` or ``rectifier``), the chosen ops,
  predicted vs measured latency, parameter count and the LUT's accuracy on random sub-networks;
- ``report.json``: the same numbers;
- ``probabilities.png``: one heat-map per cell of p(op) over the search steps (matplotlib, Agg).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from strkit.models.backbones.searched import arch_sections
from strkit.nas.proxyless import mixed_edges, probabilities


def cell_descriptions(model: nn.Module) -> list[dict[str, Any]]:
    """One mapping per mixed edge (in :func:`~strkit.nas.proxyless.mixed_edges` order, the order of the
    probabilities): its ``meta`` (part, index, kind, stage, c_in, c_out, stride, in_hw) plus
    ``candidates`` (op names in α order)."""
    return [{**e.meta, "candidates": list(e.candidates)} for e in mixed_edges(model)]


def _part(cell: Mapping[str, Any]) -> str:
    return str(cell.get("part", "backbone"))


def _multi_part(cells: Sequence[Mapping[str, Any]]) -> bool:
    return any(_part(c) != "backbone" for c in cells)


def chosen_indices(cells: Sequence[Mapping[str, Any]], arch: Mapping[str, Any]) -> list[int]:
    """The candidate index of the op ``arch`` chose for each of ``cells`` (any order of parts: the
    cells of a part are matched in order with that part's section of ``arch``)."""
    queues = {part: [c["op"] for c in sec["cells"]] for part, sec in arch_sections(arch).items()}
    out = []
    for c in cells:
        queue = queues.get(_part(c))
        if not queue:
            raise ValueError(f"the architecture has no {_part(c)} cell left for cell {c.get('index')}: it was not "
                             "derived from these cells")
        out.append(list(c["candidates"]).index(queue.pop(0)))
    return out


@dataclass
class ProbabilityHistory:
    """p(op) of every cell, recorded at some steps of the search.

    Attributes:
        steps: the recorded steps, increasing.
        probs: ``probs[t][cell][op]``, aligned with ``steps``.
    """

    steps: list[int] = field(default_factory=list)
    probs: list[list[list[float]]] = field(default_factory=list)

    def record(self, step: int, model: nn.Module) -> None:
        """Append the current p of ``model`` at ``step`` (a repeated step replaces the last row)."""
        if self.steps and self.steps[-1] == step:
            self.probs[-1] = probabilities(model)
            return
        self.steps.append(int(step))
        self.probs.append(probabilities(model))

    def to_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "probs": [[list(c) for c in t] for t in self.probs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ProbabilityHistory:
        if not data:
            return cls()
        return cls([int(s) for s in data["steps"]], [[list(map(float, c)) for c in t] for t in data["probs"]])


def _op_columns(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for c in cells:
        for op in c["candidates"]:
            if op not in cols:
                cols.append(op)
    return cols


def probability_table(cells: Sequence[Mapping[str, Any]], probs: Sequence[Sequence[float]],
                      chosen: Sequence[int] | None = None) -> str:
    """Markdown table: one row per cell (index, kind, stride, widths), one column per op, p in %;
    ``·`` where the op is not a candidate; the chosen op (argmax unless given) in bold."""
    cols = _op_columns(cells)
    multi = _multi_part(cells)  # a "part" column only when the rectifier is searched too
    head = ("| part " if multi else "") + "| cell | kind | stride | c_in→c_out | " + " | ".join(cols) + " |"
    sep = ("|---" if multi else "") + "|---:|---|---|---|" + "---:|" * len(cols)
    rows = [head, sep]
    for i, (c, p) in enumerate(zip(cells, probs, strict=True)):
        pick = chosen[i] if chosen is not None else max(range(len(p)), key=lambda j: p[j])
        vals = []
        for op in cols:
            if op not in c["candidates"]:
                vals.append("·")
                continue
            j = c["candidates"].index(op)
            txt = f"{100 * p[j]:.1f}"
            vals.append(f"**{txt}**" if j == pick else txt)
        stride = "×".join(str(s) for s in c.get("stride", (1, 1)))
        rows.append((f"| {_part(c)} " if multi else "") + f"| {c.get('index', i)} | {c.get('kind', '')} | {stride} | "
                    f"{c.get('c_in', '')}→{c.get('c_out', '')} | " + " | ".join(vals) + " |")
    return "\n".join(rows)


def plot_probability_heatmap(history: ProbabilityHistory, cells: Sequence[Mapping[str, Any]],
                             path: str | Path, ncols: int = 4) -> Path:
    """Write a PNG with one heat-map per cell: rows = candidate ops, columns = recorded steps,
    colour = p(op) in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    if not history.steps:
        raise ValueError("no probabilities were recorded: nothing to plot")
    n = len(cells)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    max_ops = max(len(c["candidates"]) for c in cells)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, (0.22 * max_ops + 0.9) * nrows),
                             squeeze=False, constrained_layout=True)
    steps = np.asarray(history.steps, dtype=float)
    if len(steps) > 1:  # column edges halfway between recorded steps (they need not be evenly spaced)
        mid = (steps[1:] + steps[:-1]) / 2
        x_edges = np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])
    else:
        x_edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
    image = None
    for i, c in enumerate(cells):
        ax = axes[i // ncols][i % ncols]
        data = np.array([t[i] for t in history.probs], dtype=float).T  # ops × time
        y_edges = np.arange(len(c["candidates"]) + 1) - 0.5
        image = ax.pcolormesh(x_edges, y_edges, data, vmin=0.0, vmax=1.0, cmap="viridis", shading="flat")
        ax.invert_yaxis()
        ax.set_xlabel("step", fontsize=6, labelpad=1)
        ax.set_yticks(range(len(c["candidates"])))
        ax.set_yticklabels(c["candidates"], fontsize=6)
        ax.tick_params(axis="x", labelsize=6)
        stride = "×".join(str(s) for s in c.get("stride", (1, 1)))
        label = f"{_part(c)} " if _multi_part(cells) else ""
        ax.set_title(f"{label}cell {c.get('index', i)} ({c.get('kind', '')}, s {stride})", fontsize=7)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="p(op)")
    fig.suptitle("architecture probabilities over search steps", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_report(out_dir: str | Path, *, cells: Sequence[Mapping[str, Any]], history: ProbabilityHistory,
                 arch: Mapping[str, Any], figures: Mapping[str, Any] | None = None,
                 lut_validation: Mapping[str, Any] | None = None, title: str = "Architecture search report",
                 plot: bool = True) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and (``plot``) ``probabilities.png`` into ``out_dir``.

    Args:
        cells: :func:`cell_descriptions` of the supernet.
        history: probabilities over the search (the first row is the start, the last the end).
        arch: the derived architecture (its cells' ops are the chosen ops).
        figures: named numbers (predicted / measured latency, parameter count, expected cost...).
        lut_validation: :meth:`LutValidation.to_dict` of the LUT check, if run.

    Returns:
        ``{"markdown": ..., "json": ..., "heatmap": ...}`` paths (``heatmap`` only when plotted).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not history.steps:
        raise ValueError("the probability history is empty: record at least the start and the end")
    figures = dict(figures or {})
    sections = arch_sections(arch)
    chosen_ops = [c["op"] for c in arch["cells"]]
    chosen_idx = chosen_indices(cells, arch)
    lines = [f"# {title}", ""]
    if figures:
        lines += ["| figure | value |", "|---|---:|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in figures.items()]
        lines.append("")
    lines += ["## Chosen architecture", "",
              "| part | cell | kind | stage | stride | c_in→c_out | op |", "|---|---:|---|---:|---|---|---|"]
    for part, sec in sections.items():
        for i, c in enumerate(sec["cells"]):
            stride = "×".join(str(s) for s in c["stride"])
            lines.append(f"| {part} | {i} | {c.get('kind', '')} | {c.get('stage', '')} | {stride} | "
                         f"{c['c_in']}→{c['c_out']} | {c['op']} |")
    lines += [""] + [f"Ops ({part}): `{' '.join(c['op'] for c in sec['cells'])}`" if part != "backbone"
                     else f"Ops: `{' '.join(chosen_ops)}`" for part, sec in sections.items()] + [""]
    lines += [f"## Probabilities at the start (step {history.steps[0]}), %", "",
              probability_table(cells, history.probs[0]), "",
              f"## Probabilities at the end (step {history.steps[-1]}), %", "",
              probability_table(cells, history.probs[-1], chosen_idx), ""]
    if lut_validation:
        lines += ["## Latency table accuracy", "",
                  f"{lut_validation['n']} random sub-networks, backbone latency predicted by the table vs "
                  f"measured end to end: mean absolute error **{lut_validation['mae_pct']:.1f}%** "
                  f"(mean signed error {lut_validation['bias_pct']:+.1f}%; Pearson correlation "
                  f"{lut_validation.get('correlation', float('nan')):.3f}; after one common scale factor "
                  f"{lut_validation.get('scale', float('nan')):.3f}: "
                  f"{lut_validation.get('scaled_mae_pct', float('nan')):.1f}%).", "",
                  "| # | predicted ms | measured ms | error % |", "|---:|---:|---:|---:|"]
        for i, (p, m) in enumerate(zip(lut_validation["predicted_ms"], lut_validation["measured_ms"],
                                       strict=True)):
            lines.append(f"| {i} | {p:.3f} | {m:.3f} | {100 * (p - m) / m:+.1f} |")
        lines.append("")
    paths: dict[str, Path] = {}
    if plot:
        paths["heatmap"] = plot_probability_heatmap(history, cells, out / "probabilities.png")
        lines += ["## Probabilities over time", "", "![p(op) per cell over the search](probabilities.png)", ""]
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(lines))
    paths["json"] = out / "report.json"
    paths["json"].write_text(json.dumps({
        "figures": figures, "chosen_ops": chosen_ops,
        "chosen_ops_by_part": {part: [c["op"] for c in sec["cells"]] for part, sec in sections.items()},
        "cells": [dict(c) for c in cells],
        "start": {"step": history.steps[0], "probs": history.probs[0]},
        "end": {"step": history.steps[-1], "probs": history.probs[-1]},
        "history": history.to_dict(), "lut_validation": dict(lut_validation or {}),
    }, indent=1) + "\n")
    return paths
