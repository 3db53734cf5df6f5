"""Folder datasets and gt files."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from strkit.data.folder import FolderDataset, FolderNotFoundError, GtFormatError, read_gt_file
from strkit.data.lmdb.format import CorruptRecordError


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((4, 6, 3), value, np.uint8))


def test_labels_tsv_folder(tmp_path):
    for i in range(3):
        write_png(tmp_path / "images" / f"{i}.png", 10 * i)
    (tmp_path / "labels.tsv").write_text("images/0.png\tAT HIGH\nimages/1.png\tFashi  g\n\nimages/2.png\tx\n")
    ds = FolderDataset(tmp_path, channels=1)
    assert len(ds) == ds.num_records == 3
    assert ds.labels == ["AT HIGH", "Fashi  g", "x"]  # spaces inside labels are kept
    assert ds.paths == [tmp_path / "images" / f"{i}.png" for i in range(3)]
    img, label = ds[2]
    assert img.shape == (4, 6) and img.dtype == np.uint8 and int(img[0, 0]) == 20 and label == "x"
    assert FolderDataset(tmp_path)[0][0].shape == (4, 6, 3)
    again = pickle.loads(pickle.dumps(ds))
    assert again[1][1] == "Fashi  g"


def test_gt_file_forms(tmp_path):
    write_png(tmp_path / "a" / "one.png", 1)
    gt_dir = tmp_path / "a"
    (gt_dir / "tab.txt").write_bytes("\ufeffone.png\tHello World\r\n".encode() + b"/abs/x.png\tAbs\r\n")
    assert read_gt_file(gt_dir / "tab.txt") == [(gt_dir / "one.png", "Hello World"),
                                               (Path("/abs/x.png"), "Abs")]
    (gt_dir / "space.txt").write_text("one.png Hello World\nsub/two.png B\n")
    assert read_gt_file(gt_dir / "space.txt") == [(gt_dir / "one.png", "Hello World"),
                                                 (gt_dir / "sub" / "two.png", "B")]
    (gt_dir / "empty_label.txt").write_text("one.png\t\n")
    assert read_gt_file(gt_dir / "empty_label.txt") == [(gt_dir / "one.png", "")]


def test_gt_format_errors(tmp_path):
    (tmp_path / "mixed.txt").write_text("a.png\tA\nb.png B\n")
    with pytest.raises(GtFormatError, match=r"mixed.txt:2: expected 'path<TAB>label'"):
        read_gt_file(tmp_path / "mixed.txt")
    (tmp_path / "nosep.txt").write_text("a.png\n")
    with pytest.raises(GtFormatError, match="nosep.txt:1"):
        read_gt_file(tmp_path / "nosep.txt")
    (tmp_path / "latin1.txt").write_bytes("a.png\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(GtFormatError, match="UTF-8"):
        read_gt_file(tmp_path / "latin1.txt")


def test_missing_inputs(tmp_path):
    with pytest.raises(FolderNotFoundError, match="labels.tsv"):
        FolderDataset(tmp_path)
    with pytest.raises(FolderNotFoundError, match="does not exist"):
        FolderDataset(tmp_path / "nope.txt")


def test_bad_images_skipped_or_strict(tmp_path):
    write_png(tmp_path / "images" / "good.png", 5)
    (tmp_path / "images" / "bad.png").write_text("not an image")
    (tmp_path / "labels.tsv").write_text("images/missing.png\tm\nimages/bad.png\tb\nimages/good.png\tg\n")
    ds = FolderDataset(tmp_path)
    assert ds[0][1] == "g" and ds[1][1] == "g"
    assert ds.num_corrupt == 2
    with pytest.raises(CorruptRecordError, match="missing.png"):
        FolderDataset(tmp_path, strict=True)[0]


def test_label_filter(tmp_path):
    for i in range(3):
        write_png(tmp_path / "images" / f"{i}.png", i)
    (tmp_path / "labels.tsv").write_text("images/0.png\tAb\nimages/1.png\t!!\nimages/2.png\tCd\n")
    ds = FolderDataset(tmp_path, label_filter=lambda s: s.lower() if s.isalnum() else None)
    assert ds.labels == ["ab", "cd"] and ds.num_records == 3 and ds.num_filtered == 1
    assert ds.paths[1].name == "2.png" and ds[1][1] == "cd"


def test_symlink_stored_as_text_file(tmp_path):
    """A copy without symbolic links stores ``images -> ../full/images`` as a small text file."""
    write_png(tmp_path / "full" / "images" / "1.png", 9)
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "images").write_text("../full/images")
    (subset / "labels.tsv").write_text("images/1.png\tword\n")
    ds = FolderDataset(subset, strict=True)
    assert int(ds[0][0][0, 0, 0]) == 9


def test_real_benchmark_folder(shared_benchmarks):
    ds = FolderDataset(shared_benchmarks / "IC13_857")  # images/ links to ../IC13_1095/images
    assert len(ds) == 857
    img, label = ds[856]
    assert img.ndim == 3 and img.shape[2] == 3 and label
