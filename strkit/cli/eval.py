"""``tools/eval.py CHECKPOINT [--benchmarks ...]``: benchmark tables (markdown, CSV, JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from strkit.cli.common import add_model_overrides, fail, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__)
    p.add_argument("checkpoints", nargs="+", help="one or more checkpoints (best.pt / last.pt)")
    p.add_argument("--benchmarks", nargs="+", default=None,
                   help="benchmark names or groups (default: the checkpoint's eval.benchmarks); "
                        "groups: benchmark_7248, benchmark_7672, available")
    p.add_argument("--root", default=None, help="folder holding the benchmarks (default: data.benchmark_root)")
    p.add_argument("--protocol", choices=["36", "62", "94"], default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--no-speed", action="store_true", help="skip the timing (ms/image, images/s)")
    p.add_argument("--wrong", action="store_true", help="also write every wrong prediction")
    p.add_argument("--out", default=None, help="folder for results.{md,csv,json} (default: beside the checkpoint)")
    p.add_argument("--name", default=None, help="model name in the table (default: the run folder name)")
    add_model_overrides(p, "; the name and the default output folder get the settings appended")
    return p


def _suffix(overrides: list[str]) -> str:
    """``model.decoder.iterations=1`` -> ``decoder.iterations=1`` (for names and folders)."""
    return ",".join(o.removeprefix("model.") for o in overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    from strkit.checkpoint import CheckpointError
    from strkit.data.benchmarks import BenchmarkError
    from strkit.engine.evaluator import evaluate_benchmarks
    from strkit.models.pretrained import load_model

    tables = []
    for ckpt in args.checkpoints:
        try:
            model, cfg = load_model(ckpt, args.device, args.overrides)
        except CheckpointError as exc:
            return fail(str(exc))
        except ValueError as exc:  # a bad --set (ConfigError is one too)
            return fail(f"{ckpt}: {exc}")
        name = args.name or Path(ckpt).resolve().parent.name
        if args.overrides and not args.name:
            name = f"{name} ({_suffix(args.overrides)})"
        try:
            report = evaluate_benchmarks(
                model, cfg, args.benchmarks or cfg.eval.benchmarks, args.root or cfg.data.benchmark_root,
                protocol=args.protocol or cfg.eval.protocol, batch_size=args.batch_size, workers=args.workers,
                device=torch.device(args.device), precision=args.precision, keep_wrong=args.wrong,
                speed=not args.no_speed, model_name=name)
        except BenchmarkError as exc:
            return fail(str(exc))
        default_out = "eval" + (f"_{_suffix(args.overrides)}" if args.overrides else "")
        out = Path(args.out) if args.out else Path(ckpt).resolve().parent / default_out
        if len(args.checkpoints) > 1 and args.out:
            out = out / name
        report.write(out)
        tables.append(report.to_markdown())
        print(report.to_markdown())
        print(f"written: {out}/results.md, results.csv, results.json")
    return 0
