"""The learning curve of a run: points from metrics.csv + snapshot evaluations (cached), the PNG, the CLI."""

from __future__ import annotations

import json

import pytest

from strkit.cli.plot_curve import main
from strkit.config import load_config
from strkit.engine import learning_curve as lc
from tests.conftest import TINY_BENCHMARK
from tests.test_train_e2e import small_model_config, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def snapshot_run(word_folder, tmp_path_factory):
    from strkit.engine.trainer import Trainer

    out = tmp_path_factory.mktemp("curve") / "run"
    cfg = load_config(small_model_config(), [*tiny_overrides(word_folder, out, steps=6), "train.snapshot_every=3"])
    Trainer(cfg).fit()
    return out


def test_points_pair_validation_and_snapshots_with_cpu_hours(snapshot_run, tiny_benchmarks):
    cache = lc.evaluate_snapshots(snapshot_run, [TINY_BENCHMARK], tiny_benchmarks)
    assert sorted(int(v["step"]) for v in cache.values()) == [3, 6]
    first = lc.load_cache(snapshot_run)
    assert first == cache  # written to RUN/curve.json
    # cached: nothing is evaluated again (a second call must not touch the snapshots)
    for snap in (snapshot_run / "snapshots").iterdir():
        snap.write_bytes(b"not a checkpoint any more")
    assert lc.evaluate_snapshots(snapshot_run, [TINY_BENCHMARK], tiny_benchmarks) == cache
    points = lc.curve_points(snapshot_run, cache, processes=2)
    steps = [p.step for p in points]
    assert steps == sorted(steps) and {3, 6} <= set(steps)
    by_step = {p.step: p for p in points}
    assert "validation" in by_step[6].accuracy and TINY_BENCHMARK in by_step[6].accuracy
    assert by_step[6].accuracy["total"] == by_step[6].accuracy[TINY_BENCHMARK]  # one benchmark: total = it
    elapsed = lc.read_metrics(snapshot_run)["elapsed_s"]
    assert by_step[6].cpu_hours == pytest.approx(elapsed[6] * 1 * 2 / 3600)  # train.threads=1, 2 processes
    assert 0 < by_step[3].cpu_hours < by_step[6].cpu_hours


def test_cli_writes_the_png(snapshot_run, tiny_benchmarks, tmp_path, capsys):
    png = tmp_path / "curve.png"
    assert main([str(snapshot_run), "--out", str(png), "--benchmarks", TINY_BENCHMARK,
                 "--root", str(tiny_benchmarks), "--json", "--reference", "peer total=84.3"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert any(TINY_BENCHMARK in r for r in rows)
    assert lc.load_cache(snapshot_run, [TINY_BENCHMARK], "36") and not lc.load_cache(snapshot_run, ["SVT_647"], "36")
    assert main([str(snapshot_run), "--out", str(png), "--benchmarks", TINY_BENCHMARK, "--no-eval", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == rows  # the same points, from the cache


def test_cli_user_errors(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not a training run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--reference", "no-number"])
    assert exc.value.code == 2
