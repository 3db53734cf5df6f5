"""The markdown tables of ``tools/bench.py train`` and ``infer``.
"""

from __future__ import annotations

from collections.abc import Sequence

from strkit.bench.infer_speed import InferResult
from strkit.engine.train_timing import TrainResult


def fmt_params(n: int) -> str:
    return f"{n:,}"


def fmt_busy(busy: float | None) -> str:
    return "–" if busy is None else f"{busy:.2f}"


def train_table(results: Sequence[TrainResult]) -> str:
    """A markdown table of training results, one row per case."""
    with_data = any(r.data_wait_fraction is not None for r in results)
    head = ["model", "pipeline", "params", "precision", "channels-last", "compile", "batch", "threads",
            "images/s (median)", "windows min–max", "ms/step", "peak RSS (GiB)"]
    if with_data:
        head.append("data wait")
    head += ["load (1 min)", "busy cores before"]
    rows = []
    for r in results:
        c = r.case
        precision = f"{c.precision} + bf16 LSTM" if c.lstm_autocast and c.precision == "bf16" else c.precision
        row = [c.model, r.pipeline, fmt_params(r.params), precision, "on" if c.channels_last else "off",
               c.compile, str(c.batch_size), str(r.threads), f"{r.images_per_s:.1f}",
               f"{min(r.window_images_per_s):.1f}–{max(r.window_images_per_s):.1f}", f"{r.step_ms:.0f}",
               f"{r.peak_rss_mib / 1024:.2f}"]
        if with_data:
            row.append("–" if r.data_wait_fraction is None else f"{100 * r.data_wait_fraction:.1f}%")
        row += [f"{r.load_1min:.2f}", fmt_busy(r.busy_cores)]
        rows.append(row)
    return markdown_table(head, rows)


def infer_table(results: Sequence[InferResult]) -> str:
    """A markdown table of inference results, one row per case."""
    batch = results[0].case.batch if results else 64
    head = ["model", "params", "levers", "threads", "ms/image (batch 1, median)", "min",
            f"images/s (batch {batch})", "peak RSS (GiB)", "load (1 min)", "busy cores before"]
    rows = [[r.case.model, fmt_params(r.params), r.case.levers, str(r.threads), f"{r.ms_per_image:.2f}",
             f"{r.ms_per_image_min:.2f}", f"{r.images_per_s:.0f}", f"{r.peak_rss_mib / 1024:.2f}",
             f"{r.load_1min:.2f}", fmt_busy(r.busy_cores)] for r in results]
    return markdown_table(head, rows)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
