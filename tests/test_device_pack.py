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
