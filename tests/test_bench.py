"""Tests of the benchmark CLI skeleton and the data benchmark (tiny runs; no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strkit.bench import data_loading as bench
from strkit.cli.bench import BENCH_COMMANDS, build_parser, main


def test_data_subcommand_is_registered() -> None:
    assert "data" in BENCH_COMMANDS.names()
    args = build_parser().parse_args(["data", "--quick", "--count", "64"])
    assert args.command == "data" and args.quick and args.count == 64


def test_unknown_subcommand_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["nosuch"])
    assert "invalid choice" in capsys.readouterr().err


def test_data_benchmark_on_generated_lmdb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lmdb_path = bench.write_benchmark_lmdb(tmp_path / "lmdb", bench.generated_records(20), count=40)
    out_json = tmp_path / "out" / "data.json"
    assert main(["data", "--lmdb", str(lmdb_path), "--quick", "--count", "64", "--batch-size", "8",
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "| strkit | 32×100, batch 8 | gray | 0 | none |" in printed
    payload = json.loads(out_json.read_text())
    assert payload["records"] == 40
    (result,) = payload["results"]
    assert result["images"] == 64 and result["images_per_s"] > 0


@pytest.mark.parametrize("case", [bench.LoaderCase(32, 64, 3, 0, "strong", 8),
                                  bench.LoaderCase(32, 64, 1, 0, "none", 8, loader="pil-baseline")])
def test_measure_cases(tmp_path: Path, case: bench.LoaderCase) -> None:
    path = bench.write_benchmark_lmdb(tmp_path / "lmdb", bench.generated_records(10), count=10)
    result = bench.measure(path, case, images=16, warmup_batches=1)
    assert result.images == 16 and result.seconds > 0
    assert "images/s" in bench.markdown_table([result])


def test_missing_lmdb_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "--lmdb", str(tmp_path / "absent"), "--quick"]) == 2
    assert "absent" in capsys.readouterr().err


def test_augment_order_costs() -> None:
    costs = bench.augment_order_costs(bench.generated_records(4), channels=3, limit=4)
    assert set(costs) == {"resize_only_us", "augment_then_resize_us", "resize_then_augment_us"}
    assert all(v > 0 for v in costs.values())
