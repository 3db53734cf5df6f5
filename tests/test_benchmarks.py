"""Benchmark registry: names, groups, finding, count checks and the leak guard."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from strkit.config import SourceConfig
from strkit.data.benchmarks import (
    BENCHMARKS,
    GROUPS,
    BenchmarkCountError,
    BenchmarkLeakError,
    BenchmarkNotFoundError,
    assert_not_benchmark,
    available_benchmarks,
    expand_benchmarks,
    find_benchmark,
    load_benchmark,
)
from strkit.data.lmdb.reader import LmdbDataset
from strkit.data.lmdb.writer import LmdbWriter
from strkit.data.sources import SOURCES, build_source

TINY_PNG = cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes()


def make_lmdb(path: Path, n: int) -> Path:
    with LmdbWriter(path, commit_every=500) as w:
        for i in range(n):
            w.put(TINY_PNG, f"w{i}")
    return path


def make_folder(path: Path, n: int) -> Path:
    (path / "images").mkdir(parents=True)
    (path / "images" / "1.png").write_bytes(TINY_PNG)
    (path / "labels.tsv").write_text("".join(f"images/1.png\tw{i}\n" for i in range(n)))
    return path


def test_registry_counts_and_groups():
    assert BENCHMARKS["IIIT5K_3000"] == 3000 and BENCHMARKS["SVT_647"] == 647
    assert BENCHMARKS["SVTP_645"] == 645 and BENCHMARKS["CUTE80_288"] == 288
    assert sum(BENCHMARKS[n] for n in GROUPS["benchmark_7248"]) == 7248
    assert sum(BENCHMARKS[n] for n in GROUPS["benchmark_7672"]) == 7672
    assert set(GROUPS["available"]) <= set(BENCHMARKS)
    with pytest.raises(TypeError):
        BENCHMARKS["X"] = 1  # type: ignore[index]


def test_expand_benchmarks():
    assert expand_benchmarks(["benchmark_7672", "svt", "IIIT5k", "IC13_1095"]) == [
        "IIIT5K_3000", "SVT_647", "IC13_1015", "IC15_2077", "SVTP_645", "CUTE80_288", "IC13_1095"]
    with pytest.raises(BenchmarkNotFoundError, match="unknown benchmark 'IC99'"):
        expand_benchmarks(["IC99"])
    with pytest.raises(BenchmarkNotFoundError, match="give the count"):
        expand_benchmarks(["IC13"])


def test_find_in_other_layouts(tmp_path):
    clova = make_lmdb(tmp_path / "data_lmdb_release" / "evaluation" / "IIIT5k_3000", 3)
    parseq = make_lmdb(tmp_path / "data" / "test" / "CUTE80", 288)
    ours = make_folder(tmp_path / "SVT_647", 2)
    assert find_benchmark("IIIT5K_3000", tmp_path) == clova
    assert find_benchmark("cute80", tmp_path) == parseq
    assert find_benchmark("SVT_647", tmp_path) == ours
    assert available_benchmarks(tmp_path) == ["IIIT5K_3000", "SVT_647", "CUTE80_288"]
    ds = load_benchmark("CUTE80_288", tmp_path, channels=1, label_filter=lambda s: s if s != "w0" else None)
    assert isinstance(ds, LmdbDataset) and len(ds) == 287 and ds.num_records == 288
    assert ds[0][0].shape == (1, 1)


def test_count_mismatch_and_missing(tmp_path):
    make_lmdb(tmp_path / "evaluation" / "IIIT5k_3000", 3)
    make_folder(tmp_path / "SVT_647", 2)
    with pytest.raises(BenchmarkCountError, match=r"IIIT5k_3000 has 3 records, expected 3000"):
        load_benchmark("IIIT5K_3000", tmp_path)
    with pytest.raises(BenchmarkCountError, match="SVT_647 has 2 records, expected 647"):
        load_benchmark("SVT", tmp_path)
    with pytest.raises(BenchmarkNotFoundError, match=f"not found under {tmp_path}; put it at "
                                                     f"{tmp_path / 'SVTP_645'}"):
        load_benchmark("SVTP_645", tmp_path)


@pytest.mark.parametrize("name", ["IIIT5k_3000", "SVT", "IC13_857", "ic15_1811", "IC15_2077", "svtp",
                                  "CUTE80", "IC03_867"])
def test_guard_refuses_benchmark_names(tmp_path, name):
    path = make_folder(tmp_path / "evaluation" / name, 1)
    with pytest.raises(BenchmarkLeakError, match=f"{name}.*evaluation only"):
        assert_not_benchmark(path)
    with pytest.raises(BenchmarkLeakError):
        assert_not_benchmark(path / "labels.tsv")  # a gt file inside it
    with pytest.raises(BenchmarkLeakError):
        assert_not_benchmark(tmp_path)  # a tree holding it


def test_guard_allows_training_data(tmp_path):
    for name in ["MJ_train", "ST", "IIIT5K_train", "my_svt_crops"]:
        assert_not_benchmark(make_folder(tmp_path / "training" / name, 1))
    assert_not_benchmark(tmp_path / "training")
    assert_not_benchmark("synth-default")  # a name that is not a path


def test_guard_parseq_val_layout(tmp_path):
    """PARSeq's data/val/IIIT5k holds IIIT5K *training* images (2000); a 3000-record one is the test set."""
    assert_not_benchmark(make_lmdb(tmp_path / "val" / "IIIT5k", 5))
    with pytest.raises(BenchmarkLeakError, match="288 records"):
        assert_not_benchmark(make_lmdb(tmp_path / "train" / "CUTE80", 288))
    with pytest.raises(BenchmarkLeakError):
        assert_not_benchmark(make_lmdb(tmp_path / "val" / "IC13_857", 2))  # a sized name is always a test set


def test_guard_benchmark_root(tmp_path):
    root = tmp_path / "benchmarks"
    train = make_folder(root / "IIIT5K_train", 1)
    other = make_folder(root / "Mystery", 1)
    assert_not_benchmark(train, root)
    with pytest.raises(BenchmarkLeakError, match="not a \\*_train split"):
        assert_not_benchmark(other, root)
    with pytest.raises(BenchmarkLeakError, match="is or contains the benchmark root"):
        assert_not_benchmark(tmp_path, root)
    link = tmp_path / "innocent"
    link.symlink_to(other)
    with pytest.raises(BenchmarkLeakError):
        assert_not_benchmark(link, root)


def test_build_source(tmp_path):
    assert {"lmdb", "folder"} <= set(SOURCES.names())
    make_lmdb(tmp_path / "train" / "MJ", 4)
    ds = build_source(SourceConfig(path=str(tmp_path / "train"), kind="lmdb"), label_filter=str.upper,
                      channels=1, benchmark_root=str(tmp_path / "benchmarks"))
    assert len(ds) == 4 and ds[3][1] == "W3"
    bench = make_folder(tmp_path / "benchmarks" / "SVT_647", 647)
    with pytest.raises(BenchmarkLeakError):
        build_source(SourceConfig(path=str(bench), kind="folder"), None, 3, None, purpose="val")
    with pytest.raises(BenchmarkLeakError, match="evaluation only"):
        build_source(SourceConfig(path="SVT_647", kind="benchmark"), None, 3, str(tmp_path / "benchmarks"))
    ev = build_source(SourceConfig(path="SVT_647", kind="benchmark"), None, 3, str(tmp_path / "benchmarks"),
                      purpose="eval")
    assert len(ev) == 647
    folder = build_source(SourceConfig(path=str(bench), kind="folder"), None, 3, None, purpose="eval")
    assert len(folder) == 647


def test_real_benchmarks(shared_benchmarks):
    assert available_benchmarks(shared_benchmarks) == list(GROUPS["available"])
    for name in GROUPS["available"]:
        assert load_benchmark(name, shared_benchmarks).num_records == BENCHMARKS[name]
    with pytest.raises(BenchmarkNotFoundError, match="put it at"):
        find_benchmark("SVTP_645", shared_benchmarks)
    assert_not_benchmark(shared_benchmarks / "IIIT5K_train", shared_benchmarks)
    assert_not_benchmark(shared_benchmarks / "IC15_train" / "labels.tsv", shared_benchmarks)
    for name in GROUPS["available"]:
        with pytest.raises(BenchmarkLeakError):
            assert_not_benchmark(shared_benchmarks / name, shared_benchmarks)
