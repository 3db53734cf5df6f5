"""LMDB reader and writer: round trip, growth, resume, corrupt records, pickling, workers."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import torch.utils.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strkit.data.lmdb.discovery import find_lmdbs, open_lmdb_tree
from strkit.data.lmdb.format import CorruptRecordError, LmdbError, LmdbNotFoundError, PartialLmdbError, decode_image
from strkit.data.lmdb.reader import ENV_CACHE, LmdbDataset
from strkit.data.lmdb.writer import LmdbWriter


def png(value: int, h: int = 4, w: int = 6) -> bytes:
    """A tiny gray PNG whose pixels all equal ``value``."""
    ok, buf = cv2.imencode(".png", np.full((h, w), value, np.uint8))
    assert ok
    return buf.tobytes()


def write_lmdb(path: Path, labels: list[str], images: list[bytes] | None = None, **kw) -> Path:
    with LmdbWriter(path, **kw) as w:
        for i, label in enumerate(labels):
            w.put(images[i] if images else png(i % 256), label)
    return path


def write_raw_lmdb(path: Path, entries: dict[bytes, bytes]) -> Path:
    """An LMDB written with the plain lmdb API, as other codebases do."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in entries.items():
            txn.put(k, v)
    env.close()
    return path


SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- round trip (property) --------------------------------------------------------------------
@SETTINGS
@given(records=st.lists(st.tuples(st.binary(max_size=64), st.text(max_size=12),
                                  st.binary(max_size=8)), max_size=12),
       commit_every=st.integers(1, 5))
def test_round_trip_bytes_labels_and_extras(records, commit_every):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db"
        with LmdbWriter(path, commit_every=commit_every) as w:
            for k, (image, label, extra) in enumerate(records):
                assert w.put(image, label, extra={"meta": extra}) == k + 1
            w.put_meta("note", b"hello")
            assert len(w) == len(records)
        assert not Path(f"{path}.partial").exists()
        ds = LmdbDataset(path)
        assert len(ds) == ds.num_records == len(records)
        assert ds.labels == [label for _, label, _ in records]
        for i, (image, label, extra) in enumerate(records):
            assert ds.raw_image(i) == image
            assert ds.label(i) == label
            assert ds.get_extra(i, "meta") == extra
            assert ds.get_extra(i, "absent") is None
        assert ds.get_meta("note") == b"hello"
        if records:
            assert len(LmdbDataset(path, extra_keys=["meta"])) == len(records)
            with pytest.raises(LmdbError, match="'absent-%09d'"):
                LmdbDataset(path, extra_keys=["absent"])


def _killed_writer(path: str, n: int, commit_every: int) -> None:
    """Child process: write ``n`` records, then die without closing the writer."""
    w = LmdbWriter(path, commit_every=commit_every)
    for i in range(n):
        w.put(f"first-{i}".encode(), f"a{i}", extra={"x": bytes([i % 256])})
    os._exit(0)


@SETTINGS
@given(n=st.integers(0, 12), commit_every=st.integers(1, 5), more=st.integers(0, 6))
def test_resume_after_killed_writer(n, commit_every, more):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db"
        child = multiprocessing.get_context("fork").Process(target=_killed_writer,
                                                             args=(str(path), n, commit_every))
        child.start()
        child.join()
        committed = (n // commit_every) * commit_every
        partial = Path(f"{path}.partial")
        assert not path.exists()
        # a killed writer leaves a readable DB (opened here on purpose: sources refuse it)
        assert LmdbDataset(partial, allow_partial=True).num_records == committed
        with pytest.raises(FileExistsError, match="resume"):
            LmdbWriter(path)
        with LmdbWriter(path, resume=True) as w:
            assert len(w) == committed
            for j in range(more):
                assert w.put(f"second-{j}".encode(), f"b{j}") == committed + j + 1
        ds = LmdbDataset(path)
        expected = [f"a{i}" for i in range(committed)] + [f"b{j}" for j in range(more)]
        assert ds.labels == expected
        for i in range(committed):
            assert ds.raw_image(i) == f"first-{i}".encode()
            assert ds.get_extra(i, "x") == bytes([i % 256])
        for j in range(more):
            assert ds.raw_image(committed + j) == f"second-{j}".encode()
            assert ds.get_extra(committed + j, "x") is None


def test_exception_keeps_partial_work(tmp_path):
    path = tmp_path / "db"
    with pytest.raises(RuntimeError, match="boom"), LmdbWriter(path, commit_every=100) as w:
        w.put(png(1), "one")
        w.put(png(2), "two")
        raise RuntimeError("boom")
    assert not path.exists()
    assert LmdbDataset(f"{path}.partial", allow_partial=True).labels == ["one", "two"]
    with LmdbWriter(path, resume=True) as w:
        w.put(png(3), "three")
    assert LmdbDataset(path).labels == ["one", "two", "three"]


def test_map_size_grows(tmp_path):
    big = os.urandom(40_000)
    with LmdbWriter(tmp_path / "db", map_size=1 << 16, commit_every=3) as w:
        for i in range(10):
            w.put(big, str(i))
    ds = LmdbDataset(tmp_path / "db")
    assert len(ds) == 10 and ds.raw_image(9) == big


def test_existing_output_needs_overwrite(tmp_path):
    path = write_lmdb(tmp_path / "db", ["old"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        LmdbWriter(path)
    assert LmdbDataset(path).labels == ["old"]  # opens the cached env; overwrite must still work
    with LmdbWriter(path, overwrite=True) as w:
        w.put(png(5), "new")
    assert LmdbDataset(path).labels == ["new"]
    assert list(tmp_path.iterdir()) == [path]
    other = tmp_path / "not_lmdb"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an LMDB"):
        LmdbWriter(other, overwrite=True)
    assert (other / "precious.txt").exists()


def test_empty_writer_gives_empty_dataset(tmp_path):
    LmdbWriter(tmp_path / "db").close()
    ds = LmdbDataset(tmp_path / "db")
    assert len(ds) == 0 and ds.labels == []


# -- reading ----------------------------------------------------------------------------------
def test_items_are_decoded_images(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 255  # red in RGB order
    ok, buf = cv2.imencode(".png", rgb[..., ::-1])
    path = write_lmdb(tmp_path / "db", ["red"], [buf.tobytes()])
    img, label = LmdbDataset(path, channels=3)[0]
    assert label == "red" and img.shape == (5, 7, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [255, 0, 0]
    gray, _ = LmdbDataset(path, channels=1)[0]
    assert gray.shape == (5, 7)
    assert decode_image(png(9), channels=3).shape == (4, 6, 3)


def test_foreign_lmdb_loads_as_is(tmp_path):
    """The layout the four-stage benchmark and PARSeq write: num-samples, image-%09d, label-%09d."""
    path = write_raw_lmdb(tmp_path / "IIIT5k_3000", {
        b"num-samples": b"2",
        b"image-000000001": png(10), b"label-000000001": b"Hello",
        b"image-000000002": png(20), b"label-000000002": "café".encode(),
    })
    ds = LmdbDataset(path / "data.mdb")
    assert ds.labels == ["Hello", "café"]
    assert int(ds[1][0][0, 0, 0]) == 20


def test_label_filter_keeps_cleaned_labels(tmp_path):
    path = write_lmdb(tmp_path / "db", ["Ab", "", "cD", "toolongword"])
    ds = LmdbDataset(path, label_filter=lambda s: s.lower() if 0 < len(s) < 5 else None)
    assert ds.labels == ["ab", "cd"]
    assert ds.num_records == 4 and ds.num_filtered == 2
    assert [ds.record_index(i) for i in range(len(ds))] == [1, 3]
    assert ds[1][1] == "cd" and int(ds[1][0][0, 0, 0]) == 2  # the image of record 3


def test_corrupt_records_are_skipped_and_counted(tmp_path):
    truncated = png(7, 20, 20)[:30]
    path = write_lmdb(tmp_path / "db", ["a", "b", "c", "d"], [png(1), b"not an image", truncated, png(4)])
    ds = LmdbDataset(path)
    img, label = ds[1]
    assert label == "d" and int(img[0, 0, 0]) == 4
    assert ds.num_corrupt == 2
    assert ds[3][1] == "d" and ds[0][1] == "a"
    strict = LmdbDataset(path, strict=True)
    with pytest.raises(CorruptRecordError, match=r"db record 2.*strict=False"):
        strict[1]


def test_missing_and_undecodable_labels(tmp_path):
    path = write_raw_lmdb(tmp_path / "db", {
        b"num-samples": b"4",
        b"image-000000001": png(1), b"label-000000001": b"ok",
        b"image-000000002": png(2), b"label-000000002": b"\xff\xfe",
        b"image-000000003": png(3),  # label missing
        b"label-000000004": b"no image",  # image missing
    })
    ds = LmdbDataset(path)
    assert ds.labels == ["ok", "no image"] and ds.num_corrupt == 2
    assert ds[1][1] == "ok"  # record 4 has no image: wraps round to the first valid record
    assert ds.num_corrupt == 3
    with pytest.raises(CorruptRecordError, match="not UTF-8"):
        LmdbDataset(path, strict=True)


def test_truncated_data_file_is_refused(tmp_path):
    """Reading past the end of a truncated data.mdb would crash with SIGBUS; it must be an error."""
    path = write_lmdb(tmp_path / "db", ["a", "b"], [os.urandom(30_000), os.urandom(30_000)])
    data = path / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(LmdbError, match="truncated"):
        LmdbDataset(path)


def test_all_records_corrupt_raises(tmp_path):
    ds = LmdbDataset(write_lmdb(tmp_path / "db", ["a", "b"], [b"x", b"y"]))
    with pytest.raises(CorruptRecordError, match="none of its 2 records"):
        ds[0]


def test_bad_paths_and_formats(tmp_path):
    with pytest.raises(LmdbNotFoundError, match="does not exist"):
        LmdbDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmdbNotFoundError, match="data.mdb"):
        LmdbDataset(tmp_path / "empty")
    write_raw_lmdb(tmp_path / "other", {b"key": b"value"})
    with pytest.raises(LmdbError, match="num-samples"):
        LmdbDataset(tmp_path / "other")
    with pytest.raises(IndexError):
        LmdbDataset(write_lmdb(tmp_path / "db", ["a"]))[1]


def test_open_lmdb_tree(tmp_path):
    write_lmdb(tmp_path / "training" / "MJ" / "MJ_train", ["m1", "m2"])
    write_lmdb(tmp_path / "training" / "MJ" / "MJ_test", ["t"])
    write_lmdb(tmp_path / "training" / "ST", ["s1", "s2", "s3"])
    unfinished = LmdbWriter(tmp_path / "training" / "unfinished")
    unfinished.put(png(0), "x")
    unfinished.abandon()
    assert [p.name for p in find_lmdbs(tmp_path)] == ["MJ_test", "MJ_train", "ST"]
    tree = open_lmdb_tree(tmp_path / "training", channels=1)
    assert isinstance(tree, torch.utils.data.ConcatDataset) and len(tree) == 6
    assert [tree[i][1] for i in range(6)] == ["t", "m1", "m2", "s1", "s2", "s3"]
    single = open_lmdb_tree(tmp_path / "training" / "ST")
    assert isinstance(single, LmdbDataset) and len(single) == 3
    with pytest.raises(PartialLmdbError, match="incomplete output of an interrupted write: rerun with --resume"):
        open_lmdb_tree(tmp_path / "training" / "unfinished.partial")


@pytest.mark.parametrize("tool", ["tools/create_lmdb.py", "tools/synth.py", None])
def test_partial_output_is_refused_by_any_path(tmp_path, tool):
    """The folder, its data.mdb, its lock.mdb and a symbolic link to it: all refused, naming the tool."""
    writer = LmdbWriter(tmp_path / "out", commit_every=1, tool=tool)
    writer.put(png(0), "x")
    writer.abandon()
    partial = tmp_path / "out.partial"
    (tmp_path / "link").symlink_to(partial)
    named = tool or "tools/create_lmdb.py or tools/synth.py"
    for where in (partial, partial / "data.mdb", partial / "lock.mdb", tmp_path / "link",
                  tmp_path / "link" / "data.mdb"):
        for opener in (LmdbDataset, open_lmdb_tree):
            with pytest.raises(PartialLmdbError) as err:
                opener(where)
            msg = str(err.value)
            assert msg.startswith(str(where)) and named in msg and str(tmp_path / "out") in msg
            assert "incomplete output of an interrupted write: rerun with --resume" in msg
    assert LmdbDataset(partial, allow_partial=True).labels == ["x"]  # inspecting it on purpose


def test_unfinished_lmdb_in_a_tree_names_its_tool(tmp_path, caplog):
    write_lmdb(tmp_path / "tree" / "done", ["a"])
    writer = LmdbWriter(tmp_path / "tree" / "synth_out", tool="tools/synth.py")
    writer.put(png(0), "x")
    writer.abandon()
    with caplog.at_level("WARNING"):
        assert find_lmdbs(tmp_path / "tree") == [tmp_path / "tree" / "done"]
    assert "synth_out.partial (finish it with tools/synth.py --resume)" in caplog.text


# -- processes --------------------------------------------------------------------------------
def test_pickle_before_and_after_first_use(tmp_path):
    ds = LmdbDataset(write_lmdb(tmp_path / "db", ["x", "y"]), label_filter=str.upper)
    before = pickle.loads(pickle.dumps(ds))
    assert before[1][1] == "Y" and len(before) == 2
    ds[0]
    after = pickle.loads(pickle.dumps(ds))
    assert after[0][1] == "X" and after.labels == ["X", "Y"]
    assert int(after[1][0][0, 0, 0]) == 1


def _first_label(ds: LmdbDataset, queue) -> None:
    """Child process: report the first label and whether this process opened its own environment."""
    label = ds[0][1]
    queue.put((label, ENV_CACHE.pid == os.getpid() and len(ENV_CACHE.envs) == 1))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers(tmp_path, method):
    labels = [f"w{i}" for i in range(8)]
    ds = LmdbDataset(write_lmdb(tmp_path / "db", labels), channels=1)
    ds[0]  # the parent has the environment open before the workers start
    if method == "fork":  # spawned DataLoader workers cost seconds each; one spawned child is enough
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=list,
                                             multiprocessing_context="fork")
        seen = [label for batch in loader for _, label in batch]
        assert seen == labels
        assert ds[7][1] == "w7"  # the parent still reads after its children closed their copies
    # one more child, without DataLoader start-up cost: it must not use the parent's handle
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    proc = ctx.Process(target=_first_label, args=(ds, queue))
    proc.start()
    assert queue.get(timeout=60) == ("w0", True)
    proc.join()


# -- a writer grows the map under an open reader (issue 20, item 9) ----------------------------
_GROW = """
import os, sys, lmdb
env = lmdb.open(sys.argv[1], map_size=256 << 20)
with env.begin(write=True) as txn:
    for i in range(5000):
        txn.put(b"pad-%09d" % i, os.urandom(4000))
env.close()
"""


def test_reader_reopens_after_another_process_grew_the_map(tmp_path):
    """A long-lived reader whose memory map is smaller than the DB another process grew reopens it."""
    import subprocess
    import sys

    path = write_lmdb(tmp_path / "db", ["a", "b", "c"], map_size=1 << 16)
    ds = LmdbDataset(path)
    assert ds[0][1] == "a"  # the environment is now open (and mapped) in this process
    subprocess.run([sys.executable, "-c", _GROW, str(path)], check=True, timeout=120)  # ~20 MB more
    assert ds[1][1] == "b" and int(ds[2][0][0, 0, 0]) == 2
    assert ds.num_corrupt == 0


def test_map_that_keeps_growing_is_a_clear_error(tmp_path, monkeypatch):
    """If the reopened environment still reports MAP_RESIZED, the error is an LmdbError naming the path."""
    path = write_lmdb(tmp_path / "db", ["a"])
    ds = LmdbDataset(path)

    class Resized:
        def begin(self, **kw):
            raise lmdb.MapResizedError("mdb_txn_begin: MDB_MAP_RESIZED")

    monkeypatch.setattr(ENV_CACHE, "get", lambda p: Resized())
    with pytest.raises(LmdbError, match=r"db keeps growing.*another process is writing it"):
        ds[0]
