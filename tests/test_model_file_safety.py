"""Model files from elsewhere cannot make strkit read other files or run another model, and model files are
written with the permissions of other outputs."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import stat
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from strkit.api import Recognizer
from strkit.checkpoint import save_checkpoint
from strkit.config import load_config
from strkit.data.lmdb.writer import LmdbWriter
from strkit.export import cached_onnx_export, write_onnx_metadata
from strkit.inference.metadata import METADATA_KEY, ExportMetadata, MetadataError
from strkit.inference.onnx_backend import read_onnx_metadata
from strkit.inference.onnx_cache import OnnxCacheError, file_sha256
from strkit.models.recognizer import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ONNX = Path(str(resources.files("strkit") / "assets" / "default.onnx"))
TINY = ["model.backbone.width_mult=0.25", "model.backbone.out_channels=48", "model.sequence.hidden_size=24",
        "data.img_h=32", "data.img_w=100"]


@pytest.fixture(scope="module")
def default_metadata() -> dict:
    return read_onnx_metadata(DEFAULT_ONNX).to_dict()


def with_metadata(tmp_path: Path, meta: dict, name: str = "crafted.onnx") -> Path:
    """The bundled default model with ``meta`` as its strkit metadata, written unchecked (as an attacker
    would)."""
    proto = onnx.load(str(DEFAULT_ONNX))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps(meta)
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


# ----------------------------------------------------------------------------------------------
# Item 1: metadata cannot name a file to read
# ----------------------------------------------------------------------------------------------
def test_lexicon_path_in_onnx_metadata_is_refused(default_metadata, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("topsecret\n", encoding="utf-8")
    meta = copy.deepcopy(default_metadata)
    meta["decoder"] = {"name": "ctc", "lexicon": str(secret)}
    crafted = with_metadata(tmp_path, meta)
    with pytest.raises(MetadataError, match=r"field 'decoder.lexicon' must be an inline list of words"):
        Recognizer.from_onnx(crafted)
    with pytest.raises(MetadataError, match="decoder.lexicon"):
        read_onnx_metadata(crafted)


def test_an_inline_lexicon_still_decodes(default_metadata, tmp_path):
    meta = copy.deepcopy(default_metadata)
    meta["decoder"] = {"name": "ctc", "lexicon": ["hello"]}
    rec = Recognizer.from_onnx(with_metadata(tmp_path, meta), threads=1)
    assert rec.recognize(np.full((32, 100), 255, np.uint8))[0].text.lower() == "hello"  # the only word, any case
    meta["decoder"]["lexicon_any_case"] = False  # the model's own decoder option, a boolean
    exact = Recognizer.from_onnx(with_metadata(tmp_path, meta, "exact.onnx"), threads=1)
    assert exact.recognize(np.full((32, 100), 255, np.uint8))[0].text == "hello"  # as written


BAD_FIELDS = [  # (where in the metadata, value, field named in the error)
    (("decoder", "lexicon"), "/etc/passwd", "decoder.lexicon"),
    (("decoder", "lexicon"), ["ok", 3], "decoder.lexicon[1]"),
    (("decoder", "lexicon"), {"path": "/etc/passwd"}, "decoder.lexicon"),
    (("decoder", "lexicon"), ["x" * 1000], "decoder.lexicon[0]"),
    (("decoder", "beam_width"), "5", "decoder.beam_width"),
    (("decoder", "vocabulary_file"), "/etc/passwd", "decoder.vocabulary_file"),
    (("decoder", "name"), ["ctc"], "decoder.name"),
    (("decoder",), "ctc", "decoder"),
    (("charset", "chars"), "0123456789", "charset.chars"),
    (("charset", "chars"), [], "charset.chars"),
    (("codec", "kind"), "transducer", "codec.kind"),
    (("codec", "num_classes"), "37", "codec.num_classes"),
    (("codec", "max_length"), 10**9, "codec.max_length"),
    (("codec", "special_ids", "blank"), 999, "codec.special_ids.blank"),
    (("input", "img_h"), 10**7, "input.img_h"),
    (("input", "img_w"), 1.5, "input.img_w"),
    (("input", "channels"), 2, "input.channels"),
    (("input", "keep_ratio"), "yes", "input.keep_ratio"),
    (("input", "pad_value"), float("nan"), "input.pad_value"),
    (("extra",), ["x"], "extra"),
    (("pipeline",), {"a": 1}, "pipeline"),
]


@pytest.mark.parametrize(("keys", "value", "name"), BAD_FIELDS,
                         ids=[f"{'.'.join(k)}={v!r:.20}" for k, v, _ in BAD_FIELDS])
def test_every_metadata_field_is_checked(default_metadata, keys, value, name):
    meta = copy.deepcopy(default_metadata)
    node = meta
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    with pytest.raises(MetadataError) as info:
        ExportMetadata.from_json(json.dumps(meta), where="m.onnx")
    message = str(info.value)
    assert message.startswith("m.onnx: ") and f"'{name}'" in message and "\n" not in message


def test_missing_fields_and_oversized_metadata(default_metadata):
    meta = copy.deepcopy(default_metadata)
    del meta["codec"]["num_classes"]
    with pytest.raises(MetadataError, match="incomplete: field 'codec.num_classes' is missing"):
        ExportMetadata.from_dict(meta)
    with pytest.raises(MetadataError, match="larger than"):
        ExportMetadata.from_json(" " * (64 << 20) + "{}")
    assert ExportMetadata.from_json(json.dumps(default_metadata)).to_dict() == default_metadata


# ----------------------------------------------------------------------------------------------
# Item 2: the ONNX cache cannot be used to swap the model
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    cfg = load_config(REPO / "configs" / "models" / "mbv2-ctc.yaml", TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels).eval()
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, config=cfg.to_dict(), charset=model.charset.to_dict(), state_dict=model.state_dict())
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch, tiny_checkpoint) -> Path:
    """A copy of the tiny checkpoint; the per-user cache and the system temporary folder under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "systmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))
    (tmp_path / "run").mkdir()
    return Path(shutil.copy(tiny_checkpoint, tmp_path / "run" / "best.pt"))


def plant(path: Path, source_checkpoint: dict) -> Path:
    """Another model (the bundled default, a different pipeline) claiming to be the export of a checkpoint."""
    meta = read_onnx_metadata(DEFAULT_ONNX).with_extra(source_checkpoint=source_checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_onnx_metadata(onnx.load(str(DEFAULT_ONNX)), meta, path)


def test_a_model_planted_in_the_shared_temp_folder_is_not_run(isolated, tmp_path):
    ckpt = isolated
    st = ckpt.stat()
    old_stamp = {"path": str(ckpt.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    key = hashlib.sha1(old_stamp["path"].encode()).hexdigest()[:16]  # the former, predictable location
    planted = plant(tmp_path / "systmp" / "strkit-onnx" / f"{key}-{ckpt.name}.onnx", old_stamp)
    got = cached_onnx_export(ckpt)
    assert got != planted and got == Path(f"{ckpt}.onnx")
    assert read_onnx_metadata(got).pipeline != read_onnx_metadata(planted).pipeline
    assert read_onnx_metadata(got).extra["source_checkpoint"]["sha256"] == file_sha256(ckpt)
    assert Recognizer.from_checkpoint(ckpt, threads=1).backend.path == got


def test_an_export_beside_the_checkpoint_must_match_its_content(isolated):
    ckpt = isolated
    st = ckpt.stat()  # a file beside it whose size and mtime stamp match, but not the content hash
    planted = plant(Path(f"{ckpt}.onnx"), {"path": str(ckpt.resolve()), "size": st.st_size,
                                           "mtime_ns": st.st_mtime_ns, "sha256": "0" * 64})
    pipeline = read_onnx_metadata(planted).pipeline
    got = cached_onnx_export(ckpt)
    assert got == planted and read_onnx_metadata(got).pipeline != pipeline  # replaced by a real export


def test_read_only_checkpoint_folder_uses_a_private_per_user_cache(isolated, tmp_path):
    ckpt = isolated
    Path(f"{ckpt}.onnx").mkdir()  # the export cannot be written beside the checkpoint
    digest = file_sha256(ckpt)
    got = cached_onnx_export(ckpt)
    folder = tmp_path / "cache" / "strkit" / "onnx"
    assert got == folder / f"{digest}.onnx"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
    stamp = got.stat().st_mtime_ns
    assert cached_onnx_export(ckpt) == got and got.stat().st_mtime_ns == stamp  # reused, keyed by content
    # a cache folder others can write to is refused, with a one-line message
    folder.chmod(0o777)
    with pytest.raises(OnnxCacheError, match="writable by group or others") as info:
        cached_onnx_export(ckpt)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(OnnxCacheError):
        Recognizer.from_checkpoint(ckpt)  # not silently run from there
    folder.chmod(0o700)
    got.chmod(0o666)
    with pytest.raises(OnnxCacheError, match="file .* is writable by group or others"):
        cached_onnx_export(ckpt)
    got.chmod(0o644)
    assert cached_onnx_export(ckpt) == got


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_cache_files_of_another_user_are_refused(isolated, tmp_path):
    ckpt = isolated
    Path(f"{ckpt}.onnx").mkdir()
    got = cached_onnx_export(ckpt)
    os.chown(got, 65534, 65534)  # as if another user had put it there
    with pytest.raises(OnnxCacheError, match="belongs to user id 65534"):
        cached_onnx_export(ckpt)
    os.chown(got, 0, 0)
    os.chown(got.parent, 65534, 65534)
    with pytest.raises(OnnxCacheError, match=r"folder .* belongs to user id 65534"):
        cached_onnx_export(ckpt)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_an_export_beside_the_checkpoint_from_another_user_is_not_trusted(isolated):
    ckpt = isolated  # e.g. a checkpoint in /tmp, where anyone may create <checkpoint>.onnx
    st = ckpt.stat()  # the right hash (and the size and mtime the former cache trusted)
    planted = plant(Path(f"{ckpt}.onnx"), {"sha256": file_sha256(ckpt), "path": str(ckpt.resolve()),
                                           "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    os.chown(planted, 65534, 65534)
    pipeline = read_onnx_metadata(planted).pipeline
    assert read_onnx_metadata(cached_onnx_export(ckpt)).pipeline != pipeline


# ----------------------------------------------------------------------------------------------
# Item 15: model files get the permissions of other outputs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_checkpoints_onnx_files_and_lmdbs_follow_the_umask(tmp_path, mask):
    before = os.umask(mask)
    try:
        (tmp_path / "plain.txt").write_text("x")
        ckpt = save_checkpoint(tmp_path / "best.pt", config={}, charset={"name": "x", "chars": ["a"]},
                               state_dict={"w": torch.zeros(1)})
        exported = write_onnx_metadata(onnx.load(str(DEFAULT_ONNX)), read_onnx_metadata(DEFAULT_ONNX),
                                       tmp_path / "model.onnx")
        with LmdbWriter(tmp_path / "db") as writer:
            writer.put(b"x", "a")
    finally:
        os.umask(before)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~mask
    for path in (ckpt, exported, tmp_path / "db" / "data.mdb"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
