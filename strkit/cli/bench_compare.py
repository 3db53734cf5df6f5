"""``tools/bench.py compare``: word readers side by side on the same real crops, one image at a time.

Each reader (see :mod:`strkit.bench.readers`: the bundled models by name, a checkpoint or ``.onnx`` file, and
optional external recognisers such as ``rapidocr``) reads the first ``--count`` crops of a benchmark,
one call per image (decode already done; preprocessing, model and decoding timed), in ``--rounds``
interleaved rounds so that a change of machine load hits every reader alike. Reported per reader: median
ms/image over all rounds and word accuracy under the protocol::

    python tools/bench.py compare --readers default default:torch rapidocr --benchmark IIIT5K_3000 \\
        --count 500 --threads 1 --json runs/bench/compare.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from strkit.cli.bench import BENCH_COMMANDS, report
from strkit.cli.common import fail


@BENCH_COMMANDS.register("compare")
class CompareBench:
    """Readers side by side on real crops: ms/image (batch 1, end to end) and word accuracy."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--readers", nargs="+", default=["default"],
                            help="a bundled model by name (strkit models: default, ...), optionally NAME:torch / "
                                 "NAME:onnx / NAME:int8; a .pt / .onnx path (optionally PATH:torch / "
                                 "PATH:onnx); rapidocr (default: default)")
        parser.add_argument("--benchmark", default="IIIT5K_3000", help="benchmark whose crops are read")
        parser.add_argument("--root", default="../shared/benchmarks", help="benchmark root folder")
        parser.add_argument("--count", type=int, default=300, help="first N crops (0 = all; default 300)")
        parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
        parser.add_argument("--warmup", type=int, default=10, help="untimed reads per reader first")
        parser.add_argument("--threads", type=int, default=1, help="threads per reader (default 1)")
        parser.add_argument("--protocol", choices=["36", "62", "94"], default="36",
                            help="characters compared: 36 case-insensitive alphanumeric (default), 62, 94")
        parser.add_argument("--json", default=None, help="also write the results to this JSON file")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from strkit.data.benchmarks import BenchmarkError
        from strkit.engine.train_timing import load_1min

        if min(args.rounds, args.threads) < 1 or args.count < 0 or args.warmup < 0:
            return fail("--rounds and --threads must be >= 1, --count and --warmup >= 0")
        try:
            crops, labels = _crops(args)
            readers = _readers(args)
        except (BenchmarkError, FileNotFoundError, ImportError, ValueError) as exc:
            return fail(str(exc))
        load = load_1min()
        times: dict[str, list[float]] = {r.name: [] for r in readers}
        texts: dict[str, list[str]] = {}
        for reader in readers:
            for img in crops[:args.warmup]:
                reader.read(img)
        for _ in range(args.rounds):
            for reader in readers:
                out = []
                for img in crops:
                    start = time.perf_counter()
                    out.append(reader.read(img))
                    times[reader.name].append(time.perf_counter() - start)
                texts[reader.name] = out
        results = [_result(r.name, r.info, times[r.name], texts[r.name], labels, args.protocol) for r in readers]
        for res in results:
            res["load_1min_before"] = load
        return report(args, "compare", _table(results, args), [_Row(r) for r in results])


class _Row:
    """A result dict in the shape :func:`strkit.cli.bench.report` writes (``to_dict``)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return self.data


def _crops(args: argparse.Namespace) -> tuple[list[Any], list[str]]:
    """RGB uint8 crops and raw labels of the first ``--count`` images of ``--benchmark``."""
    from strkit.data.benchmarks import load_benchmark

    ds = load_benchmark(args.benchmark, args.root, channels=3)
    n = len(ds) if args.count == 0 else min(args.count, len(ds))
    items = [ds[i] for i in range(n)]
    return [img for img, *_ in items], [str(item[1]) for item in items]


def _readers(args: argparse.Namespace) -> list[Any]:
    from strkit.bench.readers import build_reader

    if len(set(args.readers)) != len(args.readers):
        raise ValueError("--readers: a reader is named twice")
    return [build_reader(spec, threads=args.threads) for spec in args.readers]


def _result(name: str, info: str, seconds: list[float], texts: list[str], labels: list[str],
            protocol: str) -> dict[str, Any]:
    from strkit.charset import protocol_filter

    correct = sum(protocol_filter(t, protocol) == protocol_filter(g, protocol) for t, g in zip(texts, labels,
                                                                                              strict=True))
    return {"reader": name, "info": info, "images": len(labels), "accuracy": 100.0 * correct / max(1, len(labels)),
            "ms_per_image": 1000.0 * statistics.median(seconds), "ms_per_image_min": 1000.0 * min(seconds),
            "protocol": protocol}


def _table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = ["reader", "runs with", f"{args.benchmark} accuracy ({results[0]['images'] if results else 0} crops)",
            "ms/image (batch 1, median)", "min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [f"| {r['reader']} | {r['info']} | {r['accuracy']:.1f} | {r['ms_per_image']:.2f} | "
              f"{r['ms_per_image_min']:.2f} |" for r in results]
    return "\n".join(lines) + f"\n\n{args.threads} thread(s) per reader, {args.rounds} interleaved round(s), " \
                              f"protocol {args.protocol}."
