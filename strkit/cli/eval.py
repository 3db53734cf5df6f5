"""strkit-eval CHECKPOINT [CHECKPOINT ...] [--benchmarks ...]: benchmark tables (markdown, CSV, JSON).

A CHECKPOINT is a best.pt / last.pt, a run folder (its best.pt) or the name of a model bundled with
strkit ('default'; 'strkit models' lists them). Each benchmark's word accuracy is printed as soon as it is
scored, then the table (word accuracy, 1-NED, and the expected calibration error (ECE) of the word
confidence). Results go to --out; without it, beside a checkpoint (RUN/eval) or, for a bundled model, to
./eval_NAME in the current directory. --data PATH adds your own test sets (folder datasets or LMDBs);
--protocol 36 62 94 scores one reading of every image under each protocol (OUT/protocol_P/).

Calibration: --fit-temperature --val-source run|PATH fits a temperature on held-out training crops (the
checkpoint's own validation split, or a folder dataset or LMDB; never a benchmark), evaluates the
benchmarks before (T=1) and after it and prints the ECE of both (also in calibration.md/.json);
--save-calibrated OUT.pt writes a copy of the checkpoint that carries the temperature.
Exit status: 0 done, 2 on a user error (checkpoint, benchmark, argument), printed as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
                   help="checkpoints (best.pt / last.pt), run folders, or bundled model names ('default'; "
                        "see: strkit models)")
    p.add_argument("--benchmarks", nargs="+", default=None,
                   help="benchmark names or groups (default: the checkpoint's eval.benchmarks); "
                        "groups: benchmark_7248, benchmark_7672, available")
    p.add_argument("--root", default=None, help="folder holding the benchmarks (default: data.benchmark_root)")
    p.add_argument("--data", nargs="+", default=[], metavar="PATH",
                   help="your own test sets: LMDBs (data.mdb) or folder datasets (labels.tsv), each a row named "
                        "by its folder; with --data and no --benchmarks only these are evaluated")
    p.add_argument("--protocol", choices=["36", "62", "94"], nargs="+", default=None,
                   help="characters compared: 36 (case-insensitive alphanumeric), 62 (case-sensitive), "
                        "94 (with punctuation) (default: the checkpoint's eval.protocol); several (36 62 94) "
                        "score one reading of each image under each, written to OUT/protocol_P/")
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
    p.add_argument("--confidence", choices=["product", "mean", "min", "geomean"], default="product",
                   help="word confidence from the character probabilities: product (default), mean, min, geomean")
    p.add_argument("--fit-temperature", action="store_true",
                   help="fit a calibration temperature on --val-source and report the ECE before and after it")
    p.add_argument("--val-source", default=None,
                   help="held-out training crops for --fit-temperature: 'run' (the checkpoint's own validation "
                        "split: what training held out of its sources, rebuilt from its config), or a folder "
                        "dataset (labels.tsv) or an LMDB the model did not train on; benchmark test sets are refused")
    p.add_argument("--val-count", type=non_negative_int, default=0,
                   help="crops of --val-source used for the fit (default 0 = all)")
    p.add_argument("--calibration-objective", choices=["nll", "ece"], default="nll",
                   help="what the temperature minimises on --val-source: nll (default) or ece")
    p.add_argument("--save-calibrated", default=None, metavar="OUT.pt",
                   help="with --fit-temperature: write a copy of the checkpoint carrying the temperature (one "
                        "checkpoint only; loading it, and its ONNX export, apply the temperature)")
    add_model_overrides(p, "; the name and the default output folder get the settings appended")
    add_progress_flag(p)
    return p


def _suffix(overrides: list[str]) -> str:
    """``model.decoder.iterations=1`` -> ``decoder.iterations=1`` (for names and folders)."""
    return ",".join(o.removeprefix("model.") for o in overrides)


#: ``--val-source run``: the checkpoint's own validation data (what training held out of its sources).
RUN_VALIDATION = "run"


def resolve_model(arg: str) -> tuple[Path, str, bool]:
    """(checkpoint file, default name, whether it is bundled with the package) of a command-line argument:
    a zoo model's name (:mod:`strkit.models.zoo`), a run folder (its best.pt) or a checkpoint file."""
    from strkit.models.zoo import resolve_model_arg

    return resolve_model_arg(arg)


def _fit_temperature(args: argparse.Namespace, model: Any, cfg: Any, name: str) -> Any:
    """Fit the model's temperature on ``--val-source`` (held-out training crops; benchmarks refused)."""
    import torch

    from strkit.config import SourceConfig
    from strkit.data.mixing import build_eval_loader
    from strkit.data.sources import build_source
    from strkit.engine.calibration import fit_model_temperature, run_validation_split
    from strkit.engine.run_data import eval_transform

    if args.val_source == RUN_VALIDATION:
        ds, names = run_validation_split(cfg, model.charset, args.root)
        where = f"the run's validation split ({', '.join(names)})"
    else:
        path = Path(args.val_source)
        kind = "folder" if (path / "labels.tsv").is_file() else "lmdb"
        ds = build_source(SourceConfig(path=str(path), kind=kind, name=path.name), None, cfg.data.channels,
                          args.root or cfg.data.benchmark_root, purpose="val")
        where = str(path)
    loader = build_eval_loader(ds, eval_transform(cfg), batch_size=args.batch_size, num_workers=args.workers)
    result = fit_model_temperature(model, loader, protocol=args.protocol or cfg.eval.protocol,
                                   device=torch.device(args.device), objective=args.calibration_objective,
                                   confidence=args.confidence, limit=args.val_count or None, source=where)
    print(f"{name}: {result.summary()}", flush=True)
    return result


def _calibration_table(name: str, before: Any, after: Any, temperature: float) -> str:
    """Markdown: per benchmark, accuracy and ECE at T = 1 and at the fitted T."""
    lines = [f"| {name} | accuracy | ECE (T=1) | ECE (T={temperature:.3f}) | confidence (T=1) | "
             f"confidence (T={temperature:.3f}) |", "|---|---|---|---|---|---|"]
    for b, a in zip([*before.results, before.total], [*after.results, after.total], strict=True):
        lines.append(f"| {b.name} | {b.accuracy:.2f} | {b.ece:.2f} | {a.ece:.2f} | {b.mean_confidence:.3f} | "
                     f"{a.mean_confidence:.3f} |")
    return "\n".join(lines) + ("\n\nExpected calibration error (%, 15 bins) of the word confidence before and "
                              "after the temperature.\n")


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    check_device(args.device)
    if (args.val_source or args.save_calibrated) and not args.fit_temperature:
        raise ValueError("--val-source and --save-calibrated go with --fit-temperature")
    if args.fit_temperature and not args.val_source:
        raise ValueError("--fit-temperature needs --val-source PATH (held-out training crops; never a benchmark)")
    if args.val_source and args.val_source != RUN_VALIDATION and not Path(args.val_source).exists():
        raise FileNotFoundError(f"--val-source {args.val_source}: no such folder or LMDB")
    if args.save_calibrated and len(args.checkpoints) > 1:
        raise ValueError("--save-calibrated writes one checkpoint: give one CHECKPOINT")
    if args.save_calibrated and Path(args.save_calibrated).exists():
        raise FileExistsError(f"--save-calibrated {args.save_calibrated} exists; remove it or give a new file")
    models = [resolve_model(arg) for arg in args.checkpoints]  # every path checked before any work
    from strkit.data.benchmarks import test_set_kind

    for path in args.data:
        test_set_kind(path, "--data")
    import torch

    from strkit.data.benchmarks import BenchmarkNotFoundError
    from strkit.engine.evaluator import evaluate_protocols
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

        protocols = list(dict.fromkeys(args.protocol or [cfg.eval.protocol]))

        def run(speed: bool, tag: str = "", name: str = name, cfg: Any = cfg, model: Any = model,
                root: str = root, protocols: list[str] = protocols) -> list[Any]:
            def show(protocol: str, m: Any) -> None:
                label = f" [{protocol}]" if len(protocols) > 1 else ""
                print(f"{name}{tag}{label}: {m.name} {m.accuracy:.2f}% word accuracy, ECE {m.ece:.2f}%, "
                      f"{m.count} images", flush=True)

            try:
                return evaluate_protocols(
                    model, cfg, args.benchmarks or ([] if args.data else cfg.eval.benchmarks), root, protocols,
                    batch_size=args.batch_size, workers=args.workers, device=torch.device(args.device),
                    precision=args.precision, keep_wrong=args.wrong, speed=speed, model_name=name,
                    progress=progress, confidence=args.confidence, data=args.data, on_result=show)
            except BenchmarkNotFoundError as exc:
                hint = "; give the folder holding the benchmarks with --root" if f"under {root}" in str(exc) else ""
                raise BenchmarkNotFoundError(f"{str(exc).rstrip('.')}{hint}") from None

        calibration = None
        befores: list[Any] = []
        if args.fit_temperature:
            calibration = _fit_temperature(args, model, cfg, name)
            model.temperature = 1.0
            befores = run(speed=False, tag=" (T=1)")
            model.temperature = calibration.temperature
            reports = run(speed=not args.no_speed, tag=f" (T={calibration.temperature:.3f})")
        else:
            reports = run(speed=not args.no_speed)
        suffix = f"_{_suffix(args.overrides)}" if args.overrides else ""
        if args.out:
            base = Path(args.out) / name if len(models) > 1 else Path(args.out)
        elif bundled:
            base = Path.cwd() / f"eval_{default_name}{suffix}"
        else:
            base = ckpt.resolve().parent / f"eval{suffix}"
        for i, report in enumerate(reports):
            out = base / f"protocol_{report.protocol}" if len(reports) > 1 else base
            report.write(out)
            print(report.to_markdown())
            print(f"written: {out}/results.md, results.csv, results.json")
            if calibration is not None:
                before = befores[i]
                table = _calibration_table(name, before, report, calibration.temperature)
                (out / "calibration.md").write_text(table)
                (out / "calibration.json").write_text(json.dumps(
                    {"fit": calibration.to_dict(), "before": before.to_dict(), "after": report.to_dict()}, indent=2))
                print(table)
                print(f"written: {out}/calibration.md, calibration.json")
        if calibration is not None and args.save_calibrated:
            from strkit.engine.calibration import save_calibrated

            written = save_calibrated(ckpt, args.save_calibrated, calibration)
            print(f"written: {written} (the checkpoint with temperature {calibration.temperature:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
