"""``tools/bench.py train``: training throughput (images/s) and peak memory per model and setting.

Every combination of ``--models`` × ``--precision`` × ``--channels-last`` runs in a fresh process and
times the trainer's own ``train_step`` (see :mod:`strkit.engine.train_timing`)::

    flock /tmp/strkit-timing.lock python tools/bench.py train --models crnn trba mbv2-ctc \\
        --precision fp32 bf16 --channels-last off on --json runs/bench/train.json
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from strkit.cli.bench import BENCH_COMMANDS, report
from strkit.cli.common import fail
from strkit.config import COMPILE_MODES


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected 'on' or 'off', got {value!r}")
    return value == "on"


def add_common_arguments(parser: argparse.ArgumentParser, default_models: list[str]) -> None:
    """Options shared by ``train`` and ``infer``: models, precision, layout, threads, image size,
    the load gate and the JSON output."""
    parser.add_argument("--models", nargs="+", default=default_models,
                        help="model config names (configs/models/) or model YAML paths; for infer also "
                             "trained checkpoints (.pt) and exported .onnx files "
                             f"(default: {' '.join(default_models)})")
    parser.add_argument("--channels-last", nargs="+", type=_on_off, default=[False, True],
                        metavar="{on,off}", help="channels-last layout settings to measure (default: off on)")
    parser.add_argument("--lstm-bf16", nargs="+", type=_on_off, default=[False], metavar="{on,off}",
                        help="with bf16: let bilstm sequence stages follow autocast "
                             "(model.sequence.autocast=true) instead of running in fp32 (default: off)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--img-h", type=int, default=32, help="input height in pixels (default 32)")
    parser.add_argument("--img-w", type=int, default=100, help="input width in pixels (default 100)")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1 = gray (default), 3 = RGB")
    parser.add_argument("--max-busy", type=float, default=0.5,
                        help="before each case, wait while more than this many cores are busy with other "
                             "work (default 0.5)")
    parser.add_argument("--retries", type=int, default=3,
                        help="at most this many waits of --wait-s seconds per case (default 3)")
    parser.add_argument("--wait-s", type=float, default=30.0,
                        help="seconds of each wait for a quiet machine (default 30)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the cases in this process (peak memory is then not per case)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def check_common_arguments(args: argparse.Namespace) -> str | None:
    """A message for the first invalid option value, else None."""
    from strkit.config import ConfigError
    from strkit.engine.train_timing import model_config_path

    if args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    for model in args.models:
        try:
            model_config_path(model)
        except ConfigError as exc:
            return str(exc)
    return None


@BENCH_COMMANDS.register("train")
class TrainBench:
    """Training speed: images/s (median over windows) and peak RSS of real optimisation steps."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_common_arguments(parser, ["crnn", "trba", "mbv2-ctc"])
        parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                            help="precisions to measure (bf16 = autocast; default: both)")
        parser.add_argument("--batch-size", type=int, default=32, help="images per training step (default 32)")
        parser.add_argument("--steps", type=int, default=20,
                            help="timed optimisation steps per case, after --warmup (default 20)")
        parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
        parser.add_argument("--windows", type=int, default=5,
                            help="the timed steps are split into this many windows; the median window "
                                 "rate is reported (default 5)")
        parser.add_argument("--with-data", nargs="?", const="../shared/benchmarks/IIIT5K_train", default=None,
                            metavar="SOURCE",
                            help="load batches with the real training loader from this LMDB or folder "
                                 "dataset (default when given without a value: "
                                 "../shared/benchmarks/IIIT5K_train) and report the time spent waiting; "
                                 "'config': the training config's own data section (its sources, mixing, "
                                 "augmentation and distillation targets), the speed that run gets — give "
                                 "training configs as --models, e.g. configs/train/default_model.yaml")
        parser.add_argument("--workers", type=int, default=2, help="loader workers with --with-data (default 2)")
        parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                            help="after the timed steps, profile this many more with torch.profiler and print "
                                 "the operators' shares of the CPU time (default 0: no profile)")
        parser.add_argument("--start-step", type=int, default=0,
                            help="with --with-data: the training step the loader starts at, e.g. past a "
                                 "curriculum's first phase to time its steady mix (default 0)")
        parser.add_argument("--compile", nargs="+", default=["off"], metavar="MODE",
                            help="train.compile settings to measure: off or a torch.compile mode "
                                 "(default, max-autotune-no-cudagraphs, ...); the warm-up steps include "
                                 "the compilation (default: off)")
        parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                            help="further config overrides for every case, e.g. train.grad_clip=0")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from strkit.bench import tables
        from strkit.config import ConfigError
        from strkit.engine import train_timing

        error = check_common_arguments(args)
        if error is None and min(args.batch_size, args.steps) < 1:
            error = "--batch-size and --steps must be >= 1"
        if error is None and args.profile < 0:
            error = f"--profile must be >= 0, got {args.profile}"
        if error is None and args.start_step < 0:
            error = f"--start-step must be >= 0, got {args.start_step}"
        bad = [m for m in args.compile if m not in COMPILE_MODES]
        if error is None and bad:
            error = f"--compile {bad[0]!r}: use one of {', '.join(COMPILE_MODES)}"
        data_kind = "folder"
        if error is None and args.with_data is not None and args.with_data != "config":
            data_kind, error = _data_kind(Path(args.with_data))
        if error is not None:
            return fail(error)
        cases = [train_timing.TrainCase(model=m, precision=p, channels_last=cl, lstm_autocast=lb,
                                 batch_size=args.batch_size, img_h=args.img_h, img_w=args.img_w,
                                 channels=args.channels, threads=args.threads, steps=args.steps,
                                 warmup=args.warmup, windows=args.windows, data=args.with_data,
                                 data_kind=data_kind, workers=args.workers, compile=cm, start_step=args.start_step,
                                 profile_steps=args.profile,
                                 overrides=tuple(args.override))
                 for m, p, cl, lb, cm in itertools.product(args.models, args.precision, args.channels_last,
                                                           args.lstm_bf16, args.compile)
                 if not (lb and p == "fp32")]
        gate = train_timing.LoadGate(args.max_busy, args.retries, args.wait_s)
        results = []
        for case in cases:
            print(f"train: {case.model} {case.precision}{' + bf16 LSTM' if case.lstm_autocast else ''} "
                  f"channels-last={'on' if case.channels_last else 'off'} compile={case.compile} "
                  f"batch {case.batch_size}, "
                  f"{case.steps} steps ...", flush=True)
            try:
                result = train_timing.run_case(train_timing.measure_train, case, gate, isolate=not args.in_process)
            except (ConfigError, FileNotFoundError) as exc:
                return fail(str(exc))
            print(f"  {result.images_per_s:.1f} images/s, peak RSS {result.peak_rss_mib / 1024:.2f} GiB",
                  flush=True)
            for name, share in (result.profile or {}).items():
                print(f"    {share:5.1f} %  {name}", flush=True)
            results.append(result)
        return report(args, "train", tables.train_table(results), results)


def _data_kind(path: Path) -> tuple[str, str | None]:
    """(source kind, error message or None) of a ``--with-data`` path."""
    if (path / "labels.tsv").is_file() or path.is_file():
        return "folder", None
    if path.is_dir():
        return "lmdb", None
    return "folder", (f"--with-data: {path} does not exist; give an LMDB folder or a folder dataset "
                      f"(images/ + labels.tsv)")
