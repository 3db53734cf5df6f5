"""strkit.atomic: a write is whole or absent, the temporary file is cleaned up, the mode is a new file's."""

from __future__ import annotations

import os
import stat

import pytest

from strkit.atomic import TEMP_SUFFIX, atomic_path, atomic_write, new_file_mode, write_text_atomic


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_atomic_write_replaces_whole_and_makes_the_folder(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as fh:
        fh.write(b"one")
    with atomic_write(target) as fh:
        fh.write(b"two")
        assert target.read_bytes() == b"one"  # the old file stays until the block ends
    assert target.read_bytes() == b"two"
    assert _leftovers(target.parent) == []
    if hasattr(os, "fchmod"):
        assert stat.S_IMODE(target.stat().st_mode) == new_file_mode()


def test_a_failing_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "b.png") as tmp:
        tmp.write_bytes(b"x")
        raise KeyboardInterrupt
    assert not (tmp_path / "b.png").exists()
    assert _leftovers(tmp_path) == []


def test_atomic_path_yields_a_hidden_sibling_then_renames(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.exists()
        tmp.write_bytes(b"graph")
    assert target.read_bytes() == b"graph" and not tmp.exists()


def test_text_mode_and_bad_mode(tmp_path):
    target = tmp_path / "t.csv"
    with atomic_write(target, "w", newline="") as fh:
        fh.write("a,b\r\n")
    assert target.read_bytes() == b"a,b\r\n"
    with pytest.raises(ValueError, match="mode"), atomic_write(target, "a"):
        pass
