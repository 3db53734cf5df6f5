"""Decompression bombs are refused from the image header, before decoding, wherever strkit decodes images;
extreme aspect ratios give a warning in the recognition result."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import strkit.api
import strkit.data.lmdb.format
import strkit.inference.images
from strkit.api import Recognizer, load_image
from strkit.bench.data_loading import PilBaselineDataset
from strkit.cli import create_lmdb, recognize
from strkit.data.folder import FolderDataset
from strkit.data.image_limits import ImageTooLargeError, aspect_warning, check_encoded, header_size
from strkit.data.lmdb.format import CorruptRecordError, decode_image
from strkit.data.lmdb.reader import LmdbDataset
from strkit.data.lmdb.writer import LmdbWriter

pytestmark = pytest.mark.usefixtures("one_thread")


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of ``width × height`` black pixels: a few KB on disk, width × height bytes (or
    three times that in RGB) once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """``over``: 8000×8000 (64 MP: over strkit's 40 MP default, under PIL's own limit); ``pil``: 20000×20000
    (400 MP: PIL itself raises DecompressionBombError on opening it)."""
    folder = tmp_path_factory.mktemp("bombs")
    return {"over": bomb_png(folder / "over.png", 8000, 8000), "pil": bomb_png(folder / "pil.png", 20000, 20000)}


@pytest.fixture
def word_png(tmp_path) -> Path:
    img = np.full((32, 100), 255, np.uint8)
    cv2.putText(img, "abc", (5, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 0, 2)
    path = tmp_path / "word.png"
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture(scope="module")
def rec() -> Recognizer:
    return Recognizer.from_pretrained(threads=1)


@pytest.fixture
def no_decoding_of_large_images(monkeypatch):
    """Fail the test if OpenCV is asked to decode anything of more than a million pixels."""
    real = cv2.imdecode

    def guarded(buf, flags):
        size = header_size(np.asarray(buf).tobytes())
        assert size is None or size[0] * size[1] <= 1_000_000, f"decoded a {size} image"
        return real(buf, flags)

    for module in (strkit.inference.images, strkit.data.lmdb.format):
        monkeypatch.setattr(module.cv2, "imdecode", guarded)


def test_the_crafted_files_are_small_and_really_that_large(bombs):
    assert bombs["over"].stat().st_size < 20_000 and bombs["pil"].stat().st_size < 100_000
    with Image.open(bombs["over"]) as im:
        assert im.size == (8000, 8000)
    assert header_size(bombs["over"].read_bytes()) == (8000, 8000)


def test_recognize_refuses_bombs_per_item_without_decoding(rec, bombs, word_png, no_decoding_of_large_images):
    results = rec.recognize([bombs["over"], word_png, bombs["pil"]])
    assert results[1].ok and results[1].text
    for r, path in ((results[0], bombs["over"]), (results[2], bombs["pil"])):
        assert not r.ok and str(path) in r.error and "pixels" in r.error and "decompression bomb" in r.error
    assert "8000×8000 = 64,000,000 pixels exceeds the limit of 40,000,000" in results[0].error


def test_limit_is_configurable_and_pil_limits_refuse_the_same_way(rec, bombs, word_png, tmp_path):
    r = rec.recognize(word_png, max_pixels=1000)[0]  # 100×32 = 3200 pixels
    assert not r.ok and "3,200 pixels exceeds the limit of 1,000" in r.error
    # no limit of strkit's own: PIL's decompression-bomb limit (its warning level, 89 MP) still refuses
    for path in (bomb_png(tmp_path / "10k.png", 10000, 10000), bombs["pil"]):
        r = rec.recognize(path, max_pixels=None)[0]
        assert not r.ok and "exceeds PIL's decompression-bomb limit of 89,478,485 pixels" in r.error
    # a format read by PIL: its DecompressionBombError (2 × 89 MP) becomes the same per-item error
    bmp = tmp_path / "huge.bmp"
    Image.new("L", (8, 8)).save(bmp)
    data = bytearray(bmp.read_bytes())
    data[18:26] = (20000).to_bytes(4, "little") + (20000).to_bytes(4, "little")  # width, height
    bmp.write_bytes(bytes(data))
    r = rec.recognize(bmp, max_pixels=None)[0]
    assert not r.ok and str(bmp) in r.error and "PIL refused the header as a decompression bomb" in r.error


def test_pil_images_and_arrays_are_checked_before_loading(rec, bombs):
    lazy = Image.open(bombs["over"])  # header read, pixels not
    r = rec.recognize(lazy)[0]
    assert not r.ok and "64,000,000 pixels" in r.error
    with pytest.raises(ImageTooLargeError, match="array"):
        load_image(np.zeros((10, 20), np.uint8), max_pixels=100)


def test_decode_image_and_check_encoded_refuse_from_the_header(bombs, no_decoding_of_large_images):
    data = bombs["over"].read_bytes()
    with pytest.raises(ImageTooLargeError, match="64,000,000 pixels"):
        decode_image(data, channels=1)
    with pytest.raises(ImageTooLargeError, match="over.png"):
        check_encoded(data, where=str(bombs["over"]))
    check_encoded(b"not an image")  # unknown formats are left to the decoder


def test_create_lmdb_skips_bombs_with_a_message(bombs, word_png, tmp_path, capsys, no_decoding_of_large_images):
    gt = tmp_path / "gt.txt"
    gt.write_text(f"{word_png}\tabc\n{bombs['over']}\tbomb\n{bombs['pil']}\tbigger\n", encoding="utf-8")
    assert create_lmdb.main([str(gt), str(tmp_path / "db"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "wrote 1 records" in out and "skipped 2 (2 image too large)" in out
    assert f"skipped {bombs['over']}: " in err and "64,000,000 pixels exceeds the limit" in err
    assert LmdbDataset(tmp_path / "db").labels == ["abc"]
    # without the decoding check too (reading a header decodes nothing)
    assert create_lmdb.main([str(gt), str(tmp_path / "db2"), "--quiet", "--no-check"]) == 0
    assert "wrote 1 records" in capsys.readouterr().out
    # --max-pixels sets the limit
    assert create_lmdb.main([str(gt), str(tmp_path / "db3"), "--quiet", "--max-pixels", "1000"]) == 0
    assert "wrote 0 records" in capsys.readouterr().out


def test_max_pixels_option_rejects_negative_numbers(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        create_lmdb.main([str(tmp_path), str(tmp_path / "db"), "--max-pixels", "-1"])
    assert info.value.code == 2 and "must be at least 0" in capsys.readouterr().err


def test_folder_dataset_skips_or_refuses_bombs(bombs, word_png, tmp_path, no_decoding_of_large_images):
    gt = tmp_path / "gt.txt"
    gt.write_text(f"{bombs['over']}\tbomb\n{word_png}\tabc\n", encoding="utf-8")
    ds = FolderDataset(gt, channels=1)
    img, label = ds[0]  # the bomb is skipped: the next usable item comes back
    assert label == "abc" and img.shape == (32, 100) and ds.num_corrupt == 1
    with pytest.raises(CorruptRecordError, match="64,000,000 pixels"):
        FolderDataset(gt, channels=1, strict=True)[0]


def test_lmdb_records_are_checked_too(bombs, word_png, tmp_path, no_decoding_of_large_images):
    with LmdbWriter(tmp_path / "db") as writer:  # an LMDB written by another tool, holding a bomb
        writer.put(bombs["over"].read_bytes(), "bomb")
        writer.put(word_png.read_bytes(), "abc")
    ds = LmdbDataset(tmp_path / "db", channels=1)
    assert ds[0][1] == "abc" and ds.num_corrupt == 1
    with pytest.raises(CorruptRecordError, match="64,000,000 pixels"):
        LmdbDataset(tmp_path / "db", channels=1, strict=True)[0]
    baseline = PilBaselineDataset(tmp_path / "db", channels=1)  # the benchmark's PIL loader
    assert baseline[1][1] == "abc"
    with pytest.raises(ImageTooLargeError, match="record 1: image of 8000×8000"):
        baseline[0]


def test_recognize_cli_reports_bombs_and_aspect_warnings(bombs, word_png, tmp_path, capsys):
    strip = tmp_path / "strip.png"
    cv2.imwrite(str(strip), np.full((20, 2000), 200, np.uint8))  # 100 times as wide as high
    code = recognize.main(["default", str(word_png), str(bombs["over"]), str(strip), "--format", "json",
                           "--threads", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # exit status 1: some images could not be read (the bomb), the others were
    assert code == 1 and [r["image"] for r in rows] == [str(word_png), str(bombs["over"]), str(strip)]
    assert rows[0]["error"] is None and rows[0]["warning"] is None
    assert "64,000,000 pixels" in rows[1]["error"]
    assert rows[2]["error"] is None and "extreme aspect ratio" in rows[2]["warning"]
    assert recognize.main(["default", str(strip), "--threads", "1"]) == 0
    assert "\twarning: extreme aspect ratio: 2000×20" in capsys.readouterr().out
    assert recognize.main(["default", str(word_png), "--threads", "1", "--max-pixels", "1000"]) == 1
    assert "exceeds the limit of 1,000 pixels" in capsys.readouterr().out


def test_aspect_warning_in_results(rec):
    wide, tall, word = (np.full(shape, 128, np.uint8) for shape in ((20, 2000), (800, 20), (32, 100)))
    results = rec.recognize([wide, tall, word])
    assert all(r.ok for r in results)
    assert "100 times as wide as high" in results[0].warning
    assert "40 times as tall as wide" in results[1].warning
    assert results[2].warning is None
    assert aspect_warning(20, 500) is None and aspect_warning(20, 501) is not None  # the limit is 25


@pytest.mark.parametrize("fmt,options", [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}),
                                         ("JPEG", {"exif": b"Exif\0\0" + b"\0" * 300}), ("BMP", {}),
                                         ("GIF", {}), ("WEBP", {}), ("TIFF", {})])
def test_header_size_matches_pil(fmt, options):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (123, 45), (10, 20, 30)).save(buf, format=fmt, **options)
    assert header_size(buf.getvalue()) == (123, 45)
    assert header_size(buf.getvalue()[:30]) in (None, (123, 45))  # a truncated file: unknown, never a crash


def test_a_jpeg_announcing_a_huge_frame_is_refused():
    import io

    buf = io.BytesIO()
    Image.new("L", (64, 64)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")  # height, width
    with pytest.raises(ImageTooLargeError, match="60000×60000"):
        check_encoded(bytes(data))


@pytest.mark.parametrize("kind", ["lmdb", "folder"])
def test_data_max_pixels_reaches_training_sources(kind, bombs, word_png, tmp_path, no_decoding_of_large_images):
    from strkit.config import SourceConfig, load_config
    from strkit.data.sources import build_source

    if kind == "lmdb":
        path = tmp_path / "db"
        with LmdbWriter(path) as writer:
            writer.put(word_png.read_bytes(), "abc")  # 100×32 = 3,200 pixels
    else:
        path = tmp_path / "gt.txt"
        path.write_text(f"{word_png}\tabc\n", encoding="utf-8")
    cfg = load_config(None, ["data.max_pixels=1000"])
    src = SourceConfig(path=str(path), kind=kind)
    small = build_source(src, None, 1, None, purpose="eval", max_pixels=cfg.data.max_pixels)
    with pytest.raises(CorruptRecordError, match="3,200 pixels exceeds the limit of 1,000"):
        small.strict = True
        small[0]
    unlimited = build_source(src, None, 1, None, purpose="eval", max_pixels=0)  # 0 = no limit of strkit's own
    assert unlimited[0][1] == "abc"


def test_data_max_pixels_is_range_checked():
    from strkit.config import ConfigError, load_config

    assert load_config(None).data.max_pixels == 40_000_000
    with pytest.raises(ConfigError, match="data.max_pixels.*must be at least 0"):
        load_config(None, ["data.max_pixels=-5"])
