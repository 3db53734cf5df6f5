"""``tools/bench.py rotation MODEL``: word accuracy on benchmark crops turned by 90/180/270 degrees, read
with the Recognizer's rotation option off and on (tall crops also read at ±90°, the more confident
reading kept)::

    python tools/bench.py rotation default --benchmarks IIIT5K_3000 --angles 0 90 270 --json runs/bench/rotation.json
"""

from __future__ import annotations

import argparse
import time

from strkit.cli.bench import BENCH_COMMANDS, report
from strkit.cli.common import positive_float, positive_int, threads_arg

ANGLES = (0, 90, 180, 270)


class RotationRow:
    """Accuracy of one benchmark at one input angle, rotation option off and on."""

    def __init__(self, benchmark: str, angle: int, count: int, off: float, on: float, tried: int,
                 seconds_off: float, seconds_on: float) -> None:
        self.benchmark, self.angle, self.count = benchmark, angle, count
        self.off, self.on, self.tried = off, on, tried
        self.seconds_off, self.seconds_on = seconds_off, seconds_on

    def to_dict(self) -> dict[str, float | int | str]:
        return dict(vars(self))


def table(rows: list[RotationRow], protocol: str) -> str:
    lines = ["| benchmark | input turned by | images | tall (tried at ±90°) | accuracy, rotate off | "
             "accuracy, rotate on | s off / on |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.benchmark} | {r.angle}° | {r.count} | {r.tried} | {r.off:.2f} | {r.on:.2f} | "
              f"{r.seconds_off:.1f} / {r.seconds_on:.1f} |" for r in rows]
    return "\n".join(lines) + f"\n\nWord accuracy (%), protocol {protocol}; crops turned counter-clockwise.\n"


@BENCH_COMMANDS.register("rotation")
class RotationBench:
    """Accuracy on benchmark crops turned by 90/180/270 degrees, with the rotation option off and on."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="a bundled model name ('default'), a checkpoint or an .onnx file")
        parser.add_argument("--benchmarks", nargs="+", default=["IIIT5K_3000"], help="benchmarks (default IIIT5K_3000)")
        parser.add_argument("--root", default="../shared/benchmarks", help="folder holding the benchmarks")
        parser.add_argument("--angles", nargs="+", type=int, choices=ANGLES, default=[0, 90, 270],
                            help="input rotations in degrees, counter-clockwise (default: 0 90 270)")
        parser.add_argument("--rotate-ratio", type=positive_float, default=1.5,
                            help="height/width ratio above which a crop is tried rotated (default 1.5)")
        parser.add_argument("--limit", type=positive_int, default=None, help="first N crops of each benchmark")
        parser.add_argument("--protocol", choices=["36", "62", "94"], default="36", help="evaluation protocol")
        parser.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto", help="inference backend")
        parser.add_argument("--threads", type=threads_arg, default=1, help="threads (default 1)")
        parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
        parser.add_argument("--json", default=None, help="also write the results to this JSON file")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import numpy as np

        from strkit.api import Recognizer
        from strkit.charset import protocol_filter
        from strkit.data.benchmarks import expand_benchmarks, load_benchmark
        from strkit.inference.options import is_tall
        from strkit.models.zoo import resolve_model_arg

        if args.model.endswith(".onnx"):
            rec = Recognizer.from_onnx(args.model, threads=args.threads or None)
        else:
            ckpt, name, bundled = resolve_model_arg(args.model)
            rec = (Recognizer.from_pretrained(name, threads=args.threads or None, backend=args.backend) if bundled
                   else Recognizer.from_checkpoint(ckpt, threads=args.threads or None, backend=args.backend))
        rows: list[RotationRow] = []
        for bench in expand_benchmarks(args.benchmarks):
            ds = load_benchmark(bench, args.root, channels=3)
            n = len(ds) if args.limit is None else min(args.limit, len(ds))
            items = [ds[i] for i in range(n)]
            labels = [protocol_filter(label, args.protocol) for _, label in items]
            for angle in args.angles:
                images = [np.ascontiguousarray(np.rot90(img, angle // 90)) for img, _ in items]
                tried = sum(is_tall(im.shape[0], im.shape[1], args.rotate_ratio) for im in images)
                acc, secs = {}, {}
                for on in (False, True):
                    start = time.perf_counter()
                    reads = rec.recognize(images, batch_size=args.batch_size, rotate=on, rotate_ratio=args.rotate_ratio)
                    secs[on] = time.perf_counter() - start
                    acc[on] = 100.0 * sum(protocol_filter(r.text, args.protocol) == g
                                          for r, g in zip(reads, labels, strict=True)) / max(1, n)
                row = RotationRow(bench, angle, n, acc[False], acc[True], tried, secs[False], secs[True])
                print(f"{bench} turned {angle}°: rotate off {row.off:.2f}%, on {row.on:.2f}% ({tried} tall crops)",
                      flush=True)
                rows.append(row)
        return report(args, "rotation", table(rows, args.protocol), rows)
