"""``tools/bench.py SUBCOMMAND ...``: speed benchmarks (results go to ``docs/benchmarks.md``).

Subcommands live in :data:`BENCH_COMMANDS`. Each is a class with a docstring (its help line), a
static ``add_arguments(parser)`` and a static ``run(args) -> int`` (the exit status). This module
defines ``data``; other subcommands go in their own modules named ``strkit/cli/bench_<name>.py``,
which are imported (and so registered) the first time the registry is used::

    from strkit.cli.bench import BENCH_COMMANDS

    @BENCH_COMMANDS.register("infer")
    class InferBench:
        \"\"\"Batch-1 and batched inference latency.\"\"\"

        @staticmethod
        def add_arguments(parser: argparse.ArgumentParser) -> None: ...

        @staticmethod
        def run(args: argparse.Namespace) -> int: ...
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from strkit.cli.common import Parser, fail, setup_logging, user_errors
from strkit.registry import Registry


def _import_subcommand_modules() -> None:
    """Import every ``strkit.cli.bench_<name>`` module so that its subcommand registers itself."""
    import strkit.cli

    for info in pkgutil.iter_modules(strkit.cli.__path__):
        if info.name.startswith("bench_"):
            importlib.import_module(f"strkit.cli.{info.name}")


#: Subcommands of ``tools/bench.py``: classes with ``add_arguments(parser)`` and ``run(args) -> int``.
BENCH_COMMANDS: Registry[Any] = Registry("bench subcommand", loader=_import_subcommand_modules)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def report(args: argparse.Namespace, benchmark: str, table: str, results: list[Any]) -> int:
    """Print the markdown ``table`` and, with ``--json``, write the command and ``r.to_dict()`` of every
    result; returns 0 (the command's exit status)."""
    print()
    print(table)
    if args.json:
        write_json(args.json, {"benchmark": benchmark,
                               "command": " ".join(["python tools/bench.py", *args.argv]),
                               "results": [r.to_dict() for r in results]})
    return 0


@BENCH_COMMANDS.register("data")
class DataBench:
    """Data loading: images/s from an LMDB to normalised batch tensors."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--lmdb", default=None,
                            help="LMDB to read (default: a temporary one built from --source crops)")
        parser.add_argument("--source", default=None,
                            help="folder dataset (labels.tsv) to build the temporary LMDB from (default: "
                                 "IIIT5K_train, else IC15_train, under --benchmark-root; generated images "
                                 "if neither exists)")
        parser.add_argument("--benchmark-root", default="../shared/benchmarks",
                            help="where the default sources live")
        parser.add_argument("--records", type=int, default=0,
                            help="records in the temporary LMDB (default: all images of the source once)")
        parser.add_argument("--count", type=int, default=3200, help="images timed per configuration")
        parser.add_argument("--repeat", type=int, default=3,
                            help="rounds over all configurations; each keeps its fastest (default 3)")
        parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
        parser.add_argument("--quick", action="store_true",
                            help="only 32×100 gray, no augmentation, 0 workers (a smoke test)")
        parser.add_argument("--augment-order", action="store_true",
                            help="also time augmenting before vs after the resize (per image, no loader)")
        parser.add_argument("--json", default=None, help="also write the results to this JSON file")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from strkit.bench import data_loading as bench
        from strkit.data.lmdb.format import LmdbError

        cases = bench.default_cases(args.batch_size)
        if args.quick:
            cases = [bench.LoaderCase(32, 100, 1, 0, "none", args.batch_size)]
        load_before = bench.load_average()
        with tempfile.TemporaryDirectory(prefix="strkit-bench-") as tmp:
            if args.lmdb:
                path = Path(args.lmdb)
                origin = f"LMDB {path}"
            else:
                source = Path(args.source) if args.source else bench.find_default_source(
                    Path(args.benchmark_root))
                if source is not None:
                    records = bench.folder_records(source)
                    origin = f"{source.name} crops ({len(records)} real images, training split)"
                else:
                    records = bench.generated_records(2000)
                    origin = "2000 generated images (no real training crops found)"
                path = Path(tmp) / "bench_lmdb"
                bench.write_benchmark_lmdb(path, records, args.records or len(records))
            try:
                n = bench.check_lmdb_readable(path)
            except (LmdbError, ValueError) as exc:
                return fail(str(exc))
            print(f"data benchmark: {origin}, {n} records; load average before "
                  f"{' '.join(f'{v:.2f}' for v in load_before)}", flush=True)
            results = bench.run_data_benchmark(path, cases, images=args.count, repeat=args.repeat)
            order: dict[str, dict[str, float]] = {}
            if args.augment_order:
                from strkit.data.lmdb.reader import LmdbDataset

                raw = LmdbDataset(path, channels=1)
                records = [(raw.get_extra(i, "image") or b"", "") for i in range(min(len(raw), 1000))]
                for channels in (1, 3):
                    order["gray" if channels == 1 else "RGB"] = bench.augment_order_costs(
                        records, channels=channels)
        load_after = bench.load_average()
        print()
        print(bench.markdown_table(results))
        for name, costs in order.items():
            print(f"\naugmentation 'strong', 32×128 {name}, µs/image: "
                  + ", ".join(f"{k.removesuffix('_us').replace('_', ' ')} {v:.0f}" for k, v in costs.items()))
        print(f"\nload average after: {' '.join(f'{v:.2f}' for v in load_after)}")
        if args.json:
            command = " ".join(["python tools/bench.py", *args.argv])
            write_json(args.json, {"benchmark": "data", "command": command, "data": origin, "records": n,
                                   "repeat": args.repeat, "augment_order_us": order,
                                   "load_average_before": load_before, "load_average_after": load_after,
                                   "results": [r.to_dict() for r in results]})
        return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered subcommand."""
    parser = Parser(prog="strkit-bench", description="strkit speed benchmarks (results go to docs/benchmarks.md); "
                                                     "each subcommand has its own --help")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name in BENCH_COMMANDS.names():
        command = BENCH_COMMANDS.get(name)
        doc = (command.__doc__ or name).strip().splitlines()[0]
        command.add_arguments(sub.add_parser(name, help=doc, description=doc))
    return parser


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Run one benchmark subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line, for result files
    setup_logging()
    return int(BENCH_COMMANDS.get(args.command).run(args))


if __name__ == "__main__":
    raise SystemExit(main())
