"""strkit plot-curve: the learning curve of a long run (validation and benchmark accuracy against CPU-hours).

RUN is a training run folder (metrics.csv with elapsed_s, config.yaml, and snapshots/ from
train.snapshot_every). Snapshots not yet scored are evaluated on the benchmarks (each result is cached in
RUN/curve.json, so the curve of a campaign grows piece by piece); --no-eval plots what is cached.

    python tools/plot_curve.py runs/campaign_v2/train --out docs/default_v2_curve.png \\
        --reference "PP-OCRv4 total=84.3"

Exit status: 0, 2 on a user error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from strkit.cli.common import Parser, user_errors


def _reference(text: str) -> tuple[str, float]:
    label, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not label or not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"expected LABEL=ACCURACY with ACCURACY in [0, 100], got {text!r}")
    return label, number


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="strkit-plot-curve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="training run folder (metrics.csv, config.yaml, snapshots/)")
    p.add_argument("--out", default=None, help="PNG to write (default: RUN/learning_curve.png)")
    p.add_argument("--benchmarks", nargs="+", default=None,
                   help="benchmarks to score the snapshots on (default: the run config's eval.benchmarks)")
    p.add_argument("--protocol", default=None, help="36, 62 or 94 (default: the run config's eval.protocol)")
    p.add_argument("--root", default=None, help="folder holding the benchmarks (default: data.benchmark_root)")
    p.add_argument("--processes", type=int, default=1, help="DDP processes the run used (CPU-hours scale; default 1)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for the evaluation (default: torch's)")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate new snapshots; plot what is cached")
    p.add_argument("--reference", nargs="*", type=_reference, default=[], metavar="LABEL=ACCURACY",
                   help="dashed reference lines, e.g. 'PP-OCRv4 total=84.3'")
    p.add_argument("--json", action="store_true", help="also print the curve points as JSON")
    p.add_argument("--title", default=None, help="plot title (default: the run folder and the protocol)")
    return p


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = Path(args.run)
    if not (run / "metrics.csv").is_file() or not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run}: not a training run folder (needs metrics.csv and config.yaml)")
    if args.processes < 1:
        raise ValueError(f"--processes must be >= 1, got {args.processes}")
    from strkit.config import load_config
    from strkit.engine import learning_curve as lc

    cfg = load_config(run / "config.yaml")
    benchmarks = args.benchmarks or list(cfg.eval.benchmarks)
    protocol = args.protocol or cfg.eval.protocol
    if args.no_eval:
        cache = lc.load_cache(run, benchmarks, protocol)
    else:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        cache = lc.evaluate_snapshots(
            run, benchmarks, args.root or cfg.data.benchmark_root, protocol=protocol,
            on_done=lambda name, r: print(f"{name}: total {r['total']:.2f}%", file=sys.stderr, flush=True))
    points = lc.curve_points(run, cache, processes=args.processes)
    out = lc.plot_curve(points, args.out or run / "learning_curve.png",
                        title=args.title or f"{run} (benchmarks: {protocol} protocol)", references=dict(args.reference))
    print(f"wrote {out} ({len(points)} points, {len(cache)} snapshots scored)")
    if args.json:
        print(json.dumps([{"step": p.step, "cpu_hours": round(p.cpu_hours, 4), **p.accuracy} for p in points]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
