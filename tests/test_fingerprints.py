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

    monkeypatch.setattr(fingerprints, "iter_raw_images", no_hashing)
    monkeypatch.setattr(fingerprints, "_set_images", no_hashing)
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
