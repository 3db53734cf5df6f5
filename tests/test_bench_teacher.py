"""``tools/bench.py teacher`` with the bundled model as teacher on generated crops (no timing asserts)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from strkit.cli.bench import main as bench_main

MODEL = Path(str(resources.files("strkit") / "assets")) / "default.pt"


def test_teacher_bench_reports_speed_and_cache_size(word_folder, tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = bench_main(["teacher", "--teacher", "strkit", "--teacher-model", str(MODEL), "--source", str(word_folder),
                     "--count", "24", "--batch-size", "8", "--json", str(out)])
    assert rc == 0
    assert "| strkit:default.pt | 24 |" in capsys.readouterr().out
    r = json.loads(out.read_text())["results"][0]
    assert r["accuracy"] >= 80  # the bundled model reads these rendered words (folded, protocol 36)
    assert r["crops"] == 24 and r["teacher_crops_per_s"] > 0 and r["cache_read_per_s"] > 0
    # a 32x128 student has 32 frames x 37 classes in float16 (+ key, header, text)
    assert 32 * 37 * 2 < r["bytes_per_view"] < 32 * 37 * 2 + 200


def test_teacher_bench_needs_a_model_for_strkit(capsys):
    assert bench_main(["teacher", "--teacher", "strkit"]) == 2
    assert "--teacher-model" in capsys.readouterr().err
