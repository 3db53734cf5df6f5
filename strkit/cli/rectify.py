"""strkit-rectify CHECKPOINT [CHECKPOINT ...]: benchmark crops before and after each model's rectifier.

One row per crop, one column for the model input and one per checkpoint (its rectified image; for a
scrn rectifier its predicted upper / lower boundaries and centre line are drawn on the input too).
By default the crops are the --count of the first --scan images of --benchmark that the rectifiers
change the most (mean absolute change, largest over the checkpoints): on a trained TPS or ScRN those
are the curved and slanted words. --indices picks them by hand instead. A CHECKPOINT may be a run
folder (its best.pt). Exit status: 0 done, 2 on a user error, printed as one line.

example:
    strkit-rectify runs/abl_tps/last.pt runs/abl_scrn/last.pt --names tps scrn \\
        --benchmark IC15_2077 --count 10 --out docs/rectification.png
"""

from __future__ import annotations

import argparse

import torch

from strkit.cli.common import Parser, fail, positive_int, setup_logging, threads_arg, user_errors


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="strkit-rectify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints (best.pt / last.pt) with the same input size")
    p.add_argument("--names", nargs="+", default=None, help="column titles (default: the run folder names)")
    p.add_argument("--benchmark", default="IC15_2077", help="benchmark to take the crops from")
    p.add_argument("--root", default=None, help="folder holding the benchmarks (default: data.benchmark_root)")
    p.add_argument("--count", type=positive_int, default=10, help="number of crops (rows)")
    p.add_argument("--scan", type=positive_int, default=600, help="score the first N crops of the benchmark")
    p.add_argument("--indices", type=int, nargs="+", default=None, help="crop indices instead of scoring")
    p.add_argument("--threads", type=threads_arg, default=0, help="torch threads (0 = default)")
    p.add_argument("--out", default="docs/rectification.png", help="PNG to write")
    return p


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    from strkit.checkpoint import resolve_checkpoint_path
    from strkit.data.benchmarks import BenchmarkNotFoundError, load_benchmark
    from strkit.engine.rectification import (
        Column,
        boundary_polylines,
        load_crops,
        movement_scores,
        rectify,
        save_figure,
        to_uint8,
    )
    from strkit.engine.run_data import eval_transform
    from strkit.models.pretrained import load_model

    if args.names is not None and len(args.names) != len(args.checkpoints):
        return fail(f"--names gives {len(args.names)} names for {len(args.checkpoints)} checkpoints")
    models = [load_model(ckpt) for ckpt in args.checkpoints]
    shapes = {(cfg.data.img_h, cfg.data.img_w, cfg.data.channels, cfg.data.keep_ratio) for _, cfg in models}
    if len(shapes) > 1:
        return fail(f"the checkpoints take different inputs (img_h, img_w, channels, keep_ratio): {sorted(shapes)}; "
                    "compare models trained at the same input size")
    first_cfg = models[0][1]
    transform = eval_transform(first_cfg)
    root = args.root or first_cfg.data.benchmark_root
    try:
        dataset = load_benchmark(args.benchmark, root, channels=3)
    except BenchmarkNotFoundError as exc:
        hint = "; give the folder holding the benchmarks with --root" if f"under {root}" in str(exc) else ""
        raise BenchmarkNotFoundError(f"{str(exc).rstrip('.')}{hint}") from None
    if args.indices:
        bad = [i for i in args.indices if not 0 <= i < len(dataset)]
        if bad:
            return fail(f"--indices {bad} outside {args.benchmark} (0 .. {len(dataset) - 1})")
        indices = list(args.indices)
    else:
        pool = list(range(min(args.scan, len(dataset))))
        images, _ = load_crops(dataset, transform, pool)
        scores = torch.stack([movement_scores(model, images) for model, _ in models]).amax(dim=0)
        indices = [pool[i] for i in scores.argsort(descending=True)[:args.count].tolist()]
    images, labels = load_crops(dataset, transform, indices)
    h, w = images.shape[2:]
    input_col = Column(f"input {args.benchmark}", to_uint8(images))
    columns = [input_col]
    names = args.names or [resolve_checkpoint_path(c).resolve().parent.name for c in args.checkpoints]
    for name, (model, cfg) in zip(names, models, strict=True):
        out, points = rectify(model, images)
        rect_name = str(cfg.model.rectifier.get("name", "?"))
        columns.append(Column(f"{name} ({rect_name})", to_uint8(out)))
        if points is not None:
            columns.insert(len(columns) - 1, Column(f"{name}: boundaries", to_uint8(images),
                                                    boundary_polylines(points, h, w)))
    path = save_figure(columns, [f"{i}: {lab}" for i, lab in zip(indices, labels, strict=True)], args.out)
    print(f"wrote {path} ({len(indices)} crops of {args.benchmark}: {indices})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
