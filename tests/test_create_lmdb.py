"""The create_lmdb converter (strkit.cli.create_lmdb, tools/create_lmdb.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import strkit.cli.create_lmdb as cli
from strkit.data.benchmarks import load_benchmark
from strkit.data.lmdb.format import PartialLmdbError
from strkit.data.lmdb.reader import LmdbDataset

REPO = Path(__file__).resolve().parents[1]


def png(value: int) -> bytes:
    return cv2.imencode(".png", np.full((4, 6, 3), value, np.uint8))[1].tobytes()


@pytest.fixture()
def folder(tmp_path) -> Path:
    """5 lines: 3 good images, a text file posing as an image, a missing file."""
    root = tmp_path / "in"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        (root / "images" / f"{i}.png").write_bytes(png(10 * i))
    (root / "images" / "fake.png").write_text("hello")
    (root / "labels.tsv").write_text("images/0.png\ta\nimages/fake.png\tf\nimages/1.png\tb c\n"
                                     "images/gone.png\tg\nimages/2.png\td\n")
    return root


def test_converts_and_reports_skips(folder, tmp_path, capsys):
    out = tmp_path / "out" / "db"
    assert cli.main([str(folder), str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 records" in captured.out and "skipped 2" in captured.out
    assert "fake.png: not a decodable image" in captured.err and "gone.png: file not found" in captured.err
    ds = LmdbDataset(out)
    assert ds.labels == ["a", "b c", "d"]
    assert ds.raw_image(1) == png(10)  # original bytes, not re-encoded
    assert not Path(f"{out}.partial").exists()


def test_refuses_to_overwrite(folder, tmp_path, capsys):
    out = tmp_path / "db"
    assert cli.main([str(folder), str(out), "--quiet"]) == 0
    assert cli.main([str(folder / "labels.tsv"), str(out), "--quiet", "--no-check"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert len(LmdbDataset(out)) == 3
    assert cli.main([str(folder / "labels.tsv"), str(out), "--quiet", "--no-check", "--overwrite"]) == 0
    assert LmdbDataset(out).labels == ["a", "f", "b c", "d"]  # unchecked: the fake image is stored


def test_resume_after_interruption(folder, tmp_path, monkeypatch):
    out = tmp_path / "db"
    real = cli._read_image
    calls = []

    def interrupted(path, *args):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(path, *args)

    monkeypatch.setattr(cli, "_read_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main([str(folder), str(out), "--quiet", "--commit-every", "1"])
    assert LmdbDataset(f"{out}.partial", allow_partial=True).labels == ["a", "b c"]
    for given in (f"{out}.partial", f"{out}.partial/data.mdb"):  # never read as a data source by mistake
        with pytest.raises(PartialLmdbError, match=r"interrupted write: rerun with --resume \(tools/create_lmdb"):
            LmdbDataset(given)
    monkeypatch.setattr(cli, "_read_image", real)
    assert cli.main([str(folder), str(out), "--quiet"]) == 2  # an unfinished run is not silently lost
    assert cli.main([str(folder), str(out), "--quiet", "--resume"]) == 0
    assert LmdbDataset(out).labels == ["a", "b c", "d"]


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing"), str(tmp_path / "db"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.parse_size("4G") == 4 << 30 and cli.parse_size("512MiB") == 512 << 20


def test_tools_wrapper(folder, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "create_lmdb.py"), str(folder),
                           str(tmp_path / "db")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 records" in proc.stdout and "skipped 2" in proc.stdout


def test_real_benchmark_round_trip(shared_benchmarks, tmp_path, capsys):
    out = tmp_path / "IIIT5K_3000"
    assert cli.main([str(shared_benchmarks / "IIIT5K_3000"), str(out), "--quiet"]) == 0
    assert "wrote 3000 records" in capsys.readouterr().out
    ds = load_benchmark("IIIT5K_3000", tmp_path)
    assert len(ds) == 3000 and ds[2999][0].ndim == 3
