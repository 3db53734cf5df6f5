"""strkit-eval CHECKPOINT [CHECKPOINT ...] [--benchmarks ...]: benchmark tables (markdown, CSV, JSON).

A CHECKPOINT is a best.pt / last.pt, a run folder (its best.pt) or the name of a model bundled with
strkit ('default'). Each benchmark's word accuracy is printed as soon as it is scored, then the table.
Results go to --out; without it, beside a checkpoint (RUN/eval) or, for a bundled model, to
./eval_NAME in the current directory.
Exit status: 0 done, 2 on a user error (checkpoint, benchmark, argument), printed as one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from strkit.cli.common import (
    Parser,
    add_model_overrides,
    add_progress_flag,
    check_device,
    non_negative_int,
    positive_int,
    progress_enabled,
    setup_logging,
    threads_arg,
    user_errors,
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="strkit-eval", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+",
                   help="checkpoints (best.pt / last.pt), run folders, or 'default' (the bundled model)")
    p.add_argument("--benchmarks", nargs="+", default=None,
                   help="benchmark names or groups (default: the checkpoint's eval.benchmarks); "
                        "groups: benchmark_7248, benchmark_7672, available")
    p.add_argument("--root", default=None, help="folder holding the benchmarks (default: data.benchmark_root)")
    p.add_argument("--protocol", choices=["36", "62", "94"], default=None,
                   help="characters compared: 36 (case-insensitive alphanumeric), 62 (case-sensitive), "
                        "94 (with punctuation) (default: the checkpoint's eval.protocol)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="data loader processes (default 0: load in the main process)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=threads_arg, default=0, help="torch threads (0 = default)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="inference precision")
    p.add_argument("--no-speed", action="store_true", help="skip the timing (ms/image, images/s)")
    p.add_argument("--wrong", action="store_true", help="also write every wrong prediction")
    p.add_argument("--out", default=None,
                   help="folder for results.{md,csv,json} (default: RUN/eval beside a checkpoint, ./eval_NAME "
                        "for a bundled model)")
    p.add_argument("--name", default=None,
                   help="model name in the table (default: the run folder name, or the bundled model's name)")
    add_model_overrides(p, "; the name and the default output folder get the settings appended")
    add_progress_flag(p)
    return p


def _suffix(overrides: list[str]) -> str:
    """``model.decoder.iterations=1`` -> ``decoder.iterations=1`` (for names and folders)."""
    return ",".join(o.removeprefix("model.") for o in overrides)


def resolve_model(arg: str) -> tuple[Path, str, bool]:
    """(checkpoint file, default name, whether it is bundled with the package) of a command-line argument:
    a bundled model's name, a run folder (its best.pt) or a checkpoint file."""
    from strkit.checkpoint import resolve_checkpoint_path
    from strkit.models.pretrained import bundled_models, in_package

    bundled = bundled_models()
    if arg in bundled and not Path(arg).exists():
        return bundled[arg], arg, True
    path = resolve_checkpoint_path(arg)
    if in_package(path):
        return path, path.stem, True
    return path, path.resolve().parent.name, False


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    check_device(args.device)
    models = [resolve_model(arg) for arg in args.checkpoints]  # every path checked before any work
    import torch

    from strkit.data.benchmarks import BenchmarkNotFoundError
    from strkit.engine.evaluator import evaluate_benchmarks
    from strkit.models.pretrained import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = progress_enabled(args.progress)
    for ckpt, default_name, bundled in models:
        try:
            model, cfg = load_model(ckpt, args.device, args.overrides)
        except ValueError as exc:  # a bad --set (ConfigError is one too); CheckpointError names the file
            raise ValueError(str(exc) if str(ckpt) in str(exc) else f"{ckpt}: {exc}") from None
        name = args.name or default_name
        if args.overrides and not args.name:
            name = f"{name} ({_suffix(args.overrides)})"
        root = args.root or cfg.data.benchmark_root
        try:
            report = evaluate_benchmarks(
                model, cfg, args.benchmarks or cfg.eval.benchmarks, root,
                protocol=args.protocol or cfg.eval.protocol, batch_size=args.batch_size, workers=args.workers,
                device=torch.device(args.device), precision=args.precision, keep_wrong=args.wrong,
                speed=not args.no_speed, model_name=name, progress=progress,
                on_result=lambda m, name=name: print(f"{name}: {m.name} {m.accuracy:.2f}% word accuracy, "
                                          f"{m.count} images", flush=True))
        except BenchmarkNotFoundError as exc:
            hint = "; give the folder holding the benchmarks with --root" if f"under {root}" in str(exc) else ""
            raise BenchmarkNotFoundError(f"{str(exc).rstrip('.')}{hint}") from None
        suffix = f"_{_suffix(args.overrides)}" if args.overrides else ""
        if args.out:
            out = Path(args.out) / name if len(models) > 1 else Path(args.out)
        elif bundled:
            out = Path.cwd() / f"eval_{default_name}{suffix}"
        else:
            out = ckpt.resolve().parent / f"eval{suffix}"
        report.write(out)
        print(report.to_markdown())
        print(f"written: {out}/results.md, results.csv, results.json")
    return 0
