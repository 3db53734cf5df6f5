"""tools/jobs/device_pack.py: what travels to a lent machine must give the run the same data."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "jobs"))
import device_pack  # noqa: E402

from strkit.data.folder import FolderDataset  # noqa: E402
from strkit.data.transforms import ImageTransform  # noqa: E402


def test_real_splits_travel_as_the_pixels_the_transform_resizes_to(word_folder, tmp_path):
    packed = tmp_path / "real.tar.xz"
    device_pack.pack_real([("words", word_folder)], packed, 32, 128, 1)
    with tarfile.open(packed) as tar:
        tar.extractall(tmp_path / "there", filter="data")
    here, there = FolderDataset(word_folder, channels=1), FolderDataset(tmp_path / "there" / "words", channels=1)
    assert len(here) == len(there) == 96 and here.labels == there.labels
    transform = ImageTransform(32, 128, 1)
    for i in range(len(here)):
        expected = transform._resize(here._load(i)[0])
        got = there._load(i)[0]
        assert got.shape == (32, 128) and np.array_equal(got, expected), i
        assert np.array_equal(transform._resize(got), expected)  # and the loader resizes nothing more


def _draw(path: Path, size: int) -> np.ndarray:
    font = ImageFont.truetype(str(path), size)
    image = Image.new("L", (420, 48), 0)
    ImageDraw.Draw(image).text((4, 4), "Hello, World! 0123 #$%&'(){}~ Qj", font=font, fill=255)
    return np.asarray(image)


def test_a_subset_font_draws_the_printable_characters_as_the_whole_file(tmp_path):
    import matplotlib

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    dst = tmp_path / "sub" / "DejaVuSans.ttf"
    device_pack.subset_font(src, dst)
    assert dst.stat().st_size < src.stat().st_size / 4
    for size in (14, 23, 40):
        assert np.array_equal(_draw(src, size), _draw(dst, size)), size


def test_snapshots_narrow_to_16_bits_and_widen_back(tmp_path):
    snaps = tmp_path / "run" / "snapshots"
    snaps.mkdir(parents=True)
    weights = {"w": torch.randn(64, 32), "running_var": torch.full((8,), 1234.5), "count": torch.tensor(7)}
    torch.save({"step": 20000, "model": weights}, snaps / "step_0020000.pt")
    size = (snaps / "step_0020000.pt").stat().st_size
    assert device_pack.main(["--narrow-snapshots", str(tmp_path)]) == 0
    narrowed = torch.load(snaps / "step_0020000.pt", weights_only=False)
    assert narrowed["model"]["w"].dtype == torch.float16 and narrowed["model"]["count"].dtype == torch.int64
    assert (snaps / "step_0020000.pt").stat().st_size < size
    assert not device_pack.retype_snapshot(snaps / "step_0020000.pt", narrow=True)  # once only
    assert device_pack.main(["--widen-snapshots", str(tmp_path)]) == 0
    back = torch.load(snaps / "step_0020000.pt", weights_only=False)
    assert back["step"] == 20000 and back["model"]["w"].dtype == torch.float32
    assert torch.allclose(back["model"]["w"], weights["w"], rtol=1e-3, atol=1e-3)
    assert torch.allclose(back["model"]["running_var"], weights["running_var"], rtol=1e-3)  # float16 steps


@pytest.mark.parametrize("argv, message", [
    (["/nonexistent/run", "/tmp/x"], "last.pt not found"),
    ([], "name the run folder"),
])
def test_pack_refuses_with_one_line(argv, message):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "jobs" / "device_pack.py"), *argv],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and message in done.stderr
    assert done.stderr.count("\n") == 1


def test_the_piece_refuses_without_its_pack(tmp_path):
    done = subprocess.run(["bash", str(REPO / "tools" / "jobs" / "device_piece.sh")], capture_output=True,
                          text=True, cwd=REPO, env={"OUT": str(tmp_path / "out"), "PACK": str(tmp_path / "none"),
                                                    "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "device_pack.py" in done.stderr and done.stderr.count("\n") == 1


def _run_folder(root: Path, step: int) -> Path:
    run = root / "campaign_v2" / "train"
    (run / "snapshots").mkdir(parents=True)
    (run / "metrics.csv").write_text("".join(f"{s},loss,1.0\n" for s in range(100, step + 1, 100)))
    torch.save({"step": step, "model": {"w": torch.randn(16, 8)}, "train_state": {"optimizer": {}}},
               run / "last.pt")
    return run


def test_take_back_puts_the_piece_in_place_and_keeps_the_local_run(tmp_path):
    import carry

    there = _run_folder(tmp_path / "there", 300)
    torch.save({"model": {"w": torch.randn(16, 8)}}, there / "snapshots" / "step_0000200.pt")
    back = tmp_path / "back"
    carry.save(tmp_path / "there", back)
    device_pack.main(["--narrow-snapshots", str(back)])
    blob = tmp_path / "piece.tar"
    with tarfile.open(blob, "w") as tar:
        tar.add(back, arcname=".")
    data, parts = blob.read_bytes(), tmp_path / "files"
    parts.mkdir()
    for i in range(0, len(data), 4096):  # parts, as split(1) cuts them
        (parts / f"piece.tar.part-{i // 4096:03d}").write_bytes(data[i:i + 4096])
    runs = tmp_path / "runs"
    _run_folder(runs, 200)
    assert device_pack.main(["--take-back", str(parts), str(runs)]) == 0
    run = runs / "campaign_v2" / "train"
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 300
    assert torch.load(run / "last.pt", weights_only=False)["model"]["w"].dtype == torch.float32  # widened
    snap = torch.load(run / "snapshots" / "step_0000200.pt", weights_only=False)
    assert snap["model"]["w"].dtype == torch.float32 and "carry_narrowed" not in snap
    aside = runs / "campaign_v2" / "train.before_piece"
    assert torch.load(aside / "last.pt", weights_only=False)["step"] == 200  # the local run is kept
    carry.save(runs, tmp_path / "carried")  # ... on this machine only
    assert not [p for p in (tmp_path / "carried").rglob("*") if "before_piece" in str(p)]
    assert (tmp_path / "carried" / "campaign_v2" / "train" / "last.pt").is_file()
    # a local run further on than the piece is not replaced
    assert device_pack.main(["--take-back", str(parts), str(runs)]) == 2
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 300


def test_take_back_without_parts_says_where_to_look(tmp_path, capsys):
    assert device_pack.main(["--take-back", str(tmp_path), str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "piece.tar.part-" in err
