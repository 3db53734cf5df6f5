"""The benchmark guard by content (issue 20, item 4): test crops under another name are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_folder_dataset

from strkit.config import SourceConfig, load_config
from strkit.data import fingerprints
from strkit.data.benchmarks import BenchmarkLeakError
from strkit.data.fingerprints import assert_no_benchmark_images, benchmark_fingerprints
from strkit.data.folder import read_gt_file
from strkit.data.lmdb.reader import LmdbDataset
from strkit.data.lmdb.writer import LmdbWriter
from strkit.data.sources import build_source

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STRKIT_CACHE_DIR", str(tmp_path / "cache"))


def fake_root(root: Path) -> Path:
    """A benchmark root with a 6-image SVT_647 test set and an SVT_train split (rendered words)."""
    write_folder_dataset(root / "SVT_647", 6, seed=1)
    write_folder_dataset(root / "SVT_train", 5, seed=2)
    return root


def lmdb_of(path: Path, files: list[Path], label: str = "word") -> Path:
    """An LMDB of these image files' bytes, as tools/create_lmdb.py stores them."""
    with LmdbWriter(path) as w:
        for f in files:
            w.put(f.read_bytes(), label)
    return path


def train_config(source: Path, kind: str, out: Path, root: Path, *extra: str):
    return load_config(REPO / "configs" / "models" / "mbv2-ctc.yaml", [
        f"data.train=[{{path: {source}, kind: {kind}, name: renamed}}]", f"data.benchmark_root={root}",
        "data.val_fraction=0", "data.workers=0", "data.augment=none", "train.steps=1", "train.batch_size=4",
        "train.progress=false", "train.tensorboard=false", "train.threads=1", f"train.out_dir={out}", *extra])


def test_renamed_test_crops_are_refused_at_training_setup(tmp_path):
    from strkit.engine.trainer import Trainer

    root = fake_root(tmp_path / "bench")
    test_images = [p for p, _ in read_gt_file(root / "SVT_647" / "labels.tsv")]
    other = write_folder_dataset(tmp_path / "mine", 8, seed=3)
    mixed = lmdb_of(tmp_path / "data" / "my_words", [*test_images[:3], *sorted((other / "images").glob("*.png"))])
    with pytest.raises(BenchmarkLeakError, match=r"source 'renamed' contains 3 images of the benchmark test "
                                                 r"sets \(3 of SVT_647"):
        Trainer(train_config(mixed, "lmdb", tmp_path / "run", root)).fit()
    assert not (tmp_path / "run" / "last.pt").exists()
    # the *_train split and unrelated data train; without the benchmark root nothing is compared
    allowed = lmdb_of(tmp_path / "data" / "svt_train_copy",
                      [p for p, _ in read_gt_file(root / "SVT_train" / "labels.tsv")])
    Trainer(train_config(allowed, "lmdb", tmp_path / "run2", root)).fit()
    assert (tmp_path / "run2" / "last.pt").is_file()
    Trainer(train_config(mixed, "lmdb", tmp_path / "run3", tmp_path / "no_root")).fit()


def test_folder_and_validation_sources_are_checked_too(tmp_path):
    root = fake_root(tmp_path / "bench")
    copy = tmp_path / "crops"
    (copy / "pics").mkdir(parents=True)
    lines = []
    for i, (image, label) in enumerate(read_gt_file(root / "SVT_647" / "labels.tsv")[:2]):
        (copy / "pics" / f"x{i}.png").write_bytes(image.read_bytes())
        lines.append(f"pics/x{i}.png\t{label}")
    (copy / "labels.tsv").write_text("\n".join(lines) + "\n")
    src = SourceConfig(path=str(copy), kind="folder", name="extra")
    for purpose in ("train", "val", "search"):
        with pytest.raises(BenchmarkLeakError, match=f"'extra' contains 2 images.*cannot be {purpose} data"):
            build_source(src, None, 3, str(root), purpose=purpose)
    assert len(build_source(src, None, 3, str(root), purpose="eval")) == 2  # evaluating on it is fine


def test_fingerprints_and_lmdb_counts_are_cached(tmp_path, monkeypatch):
    root = fake_root(tmp_path / "bench")
    prints = benchmark_fingerprints(root)
    assert prints is not None and len(prints) == 6 and set(prints.sets.values()) == {"SVT_647"}
    cached = list((tmp_path / "cache" / "benchmark_fingerprints").iterdir())
    assert len(cached) == 1 and oct(cached[0].parent.stat().st_mode & 0o777) == "0o700"
    test_images = [p for p, _ in read_gt_file(root / "SVT_647" / "labels.tsv")]
    db = lmdb_of(tmp_path / "db", test_images[:2])
    ds = LmdbDataset(db)
    with pytest.raises(BenchmarkLeakError, match="contains 2 images"):
        assert_no_benchmark_images(ds, "db", root)

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed again although nothing changed")

    monkeypatch.setattr(fingerprints, "iter_raw_records", no_hashing)
    monkeypatch.setattr(fingerprints, "_set_records", no_hashing)
    assert benchmark_fingerprints(root).sets == prints.sets  # from the cache
    with pytest.raises(BenchmarkLeakError, match="contains 2 images"):  # the LMDB's count, from the cache
        assert_no_benchmark_images(ds, "db", root)
    monkeypatch.undo()
    monkeypatch.setenv("STRKIT_CACHE_DIR", str(tmp_path / "cache"))
    # a changed benchmark root is fingerprinted again: one more test image
    write_folder_dataset(tmp_path / "more", 1, seed=9, words=["new"])
    (root / "SVT_647" / "images" / "extra.png").write_bytes((tmp_path / "more" / "images" / "00000.png").read_bytes())
    with (root / "SVT_647" / "labels.tsv").open("a") as fh:
        fh.write("images/extra.png\tnew\n")
    assert len(benchmark_fingerprints(root)) == 7
    # a changed LMDB is hashed again
    with LmdbWriter(db, overwrite=True) as w:
        w.put(test_images[0].read_bytes(), "a")
    os.utime(db / "data.mdb", ns=(1, 1))
    with pytest.raises(BenchmarkLeakError, match="contains 1 image of"):
        assert_no_benchmark_images(LmdbDataset(db), "db", root)


def test_re_encoded_copies_with_the_same_label_are_refused(tmp_path):
    """A test crop saved as JPEG or resized is caught when it keeps its label; the same word in another
    image, or the same image under another label, is not."""
    import cv2
    import numpy as np

    root = fake_root(tmp_path / "bench")
    prints = benchmark_fingerprints(root)
    (image, label), (other_image, other_label) = read_gt_file(root / "SVT_647" / "labels.tsv")[:2]
    grey = cv2.imdecode(np.frombuffer(image.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    jpeg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    resized = cv2.imencode(".png", cv2.resize(grey, (100, 32), interpolation=cv2.INTER_CUBIC))[1].tobytes()
    assert prints.find(jpeg, label) == "SVT_647" and prints.find(resized, label.upper() + "!") == "SVT_647"
    assert prints.find(jpeg, label + "x") is None  # another label: not compared
    other = cv2.imdecode(np.frombuffer(other_image.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    other_jpeg = cv2.imencode(".jpg", other, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    assert other_label != label and prints.find(other_jpeg, label) is None  # another image with this label
    assert prints.find(other_image.read_bytes(), label) == "SVT_647"  # a byte copy, whatever its label
    assert prints.find(b"not an image", label) is None
    import io

    from PIL import Image

    bomb = io.BytesIO()
    Image.new("L", (10_000, 5_000)).save(bomb, "PNG")  # 50 M pixels: over the default limit of 40 M
    assert fingerprints.thumbnail(bomb.getvalue()) is None  # refused from its header, never decoded
    db = tmp_path / "db"
    with LmdbWriter(db) as w:
        w.put(jpeg, label)
        w.put(other_jpeg, "unrelated")
    with pytest.raises(BenchmarkLeakError, match=r"contains 1 image of .*re-encoded copies with the same label"):
        assert_no_benchmark_images(LmdbDataset(db), "db", root)


def test_real_training_splits_pass_the_re_encoded_copy_check(shared_benchmarks):
    """No crop of the real training splits reaches LOOK_MIN against a same-label test crop (IIIT5K_train
    holds near-duplicates of IIIT5K_3000 crops up to 0.968: the threshold must stay above them)."""
    prints = benchmark_fingerprints(shared_benchmarks)
    for split in ("IIIT5K_train", "SVT_train", "IC15_train"):
        gt = shared_benchmarks / split / "labels.tsv"
        assert not fingerprints._count(fingerprints.folder_records(gt), prints), split


def test_real_svt_test_crops_under_another_name(shared_benchmarks, tmp_path):
    from strkit.engine.distributed import DistInfo
    from strkit.engine.run_data import build_run_data
    from strkit.models.recognizer import build_model

    svt = [p for p, _ in read_gt_file(shared_benchmarks / "SVT_647" / "labels.tsv")][:5]
    train = [p for p, _ in read_gt_file(shared_benchmarks / "IIIT5K_train" / "labels.tsv")][:20]
    db = lmdb_of(tmp_path / "street_words", [*train, *svt])
    cfg = train_config(db, "lmdb", tmp_path / "run", shared_benchmarks)
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels)
    with pytest.raises(BenchmarkLeakError, match=r"'renamed' contains 5 images of the benchmark test sets "
                                                 r"\(5 of SVT_647"):
        build_run_data(cfg, model.charset, DistInfo(rank=0, world_size=1, local_rank=0))
