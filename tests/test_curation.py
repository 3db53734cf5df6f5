"""Teacher-assisted curation (filter, audit, pseudo-label) with the bundled model as a real teacher."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import render_word

from strkit.charset import Charset
from strkit.cli.curate import main as curate_main
from strkit.data.folder import FolderDataset
from strkit.data.lmdb.reader import LmdbDataset
from strkit.data.lmdb.writer import LmdbWriter
from strkit.engine import curation
from strkit.inference.teachers import build_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["hello", "world", "table", "river", "stone", "music", "paper", "green"]
MODEL = Path(str(resources.files("strkit") / "assets")) / "default.pt"
CHARSET = Charset.preset("36_lowercase")


@pytest.fixture(scope="module")
def teacher():
    return build_teacher("strkit", path=MODEL, batch_size=8)


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()


@pytest.fixture(scope="module")
def synth_lmdb(tmp_path_factory) -> tuple[Path, list[str]]:
    """8 readable words, 3 of them mislabelled, plus one blank crop; record 2 carries a 'geom' key."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("synth") / "db"
    labels = []
    with LmdbWriter(path) as w:
        for i, word in enumerate(WORDS):
            label = word if i % 3 else "wrong"
            labels.append(label)
            w.put(_png(render_word(word, rng)), label, {"geom": b'{"x": 1}'} if i == 2 else None)
        w.put(_png(np.full((32, 100, 3), 128, np.uint8)), "blank")
        labels.append("blank")
    return path, labels


def test_filter_keeps_what_the_teacher_reads_and_copies_extras(tmp_path, synth_lmdb, teacher):
    src, labels = synth_lmdb
    report = curation.filter_lmdb(src, tmp_path / "kept", teacher, CHARSET, batch_size=4)
    expected = [w for i, w in enumerate(WORDS) if i % 3]
    kept = LmdbDataset(tmp_path / "kept", extra_keys=())
    assert kept.labels == expected
    assert (report.seen, report.kept, report.dropped_disagree) == (9, len(expected), 9 - len(expected))
    assert kept.get_extra(expected.index("table"), "geom") == b'{"x": 1}'
    assert "dropped 4 (44.4 %" in report.summary()


def test_filter_min_confidence_drops_more(tmp_path, synth_lmdb, teacher):
    src, _ = synth_lmdb
    report = curation.filter_lmdb(src, tmp_path / "kept", teacher, CHARSET, min_confidence=1.01)
    assert report.kept == 0 and report.dropped_low_confidence == 5


class _Crashing:
    """A teacher that fails on its n-th call (an interrupted run)."""

    def __init__(self, inner, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.name, self.classes = inner.name, inner.classes

    def predict(self, images):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner.predict(images)


def test_filter_resume_equals_an_uninterrupted_run(tmp_path, synth_lmdb, teacher):
    src, _ = synth_lmdb
    whole = curation.filter_lmdb(src, tmp_path / "whole", teacher, CHARSET, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        curation.filter_lmdb(src, tmp_path / "cut", _Crashing(teacher, 3), CHARSET, batch_size=2)
    assert (tmp_path / "cut.partial").is_dir() and not (tmp_path / "cut").exists()
    with pytest.raises(FileExistsError):
        curation.filter_lmdb(src, tmp_path / "cut", teacher, CHARSET, batch_size=2)
    resumed = curation.filter_lmdb(src, tmp_path / "cut", teacher, CHARSET, batch_size=2, resume=True)
    assert resumed == whole
    assert LmdbDataset(tmp_path / "cut").labels == LmdbDataset(tmp_path / "whole").labels


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory) -> Path:
    rng = np.random.default_rng(2)
    root = tmp_path_factory.mktemp("real")
    (root / "images").mkdir()
    lines = []
    for i, word in enumerate(WORDS):
        cv2.imwrite(str(root / "images" / f"{i}.png"), render_word(word, rng)[:, :, ::-1])
        lines.append(f"images/{i}.png\t{'Stone' if word == 'stone' else word if i != 1 else 'wrld'}")
    (root / "labels.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_audit_lists_only_disagreements(labelled_folder, teacher, tmp_path):
    report = curation.audit_labels(labelled_folder, teacher, CHARSET)
    assert (report.seen, report.agree) == (8, 7)  # 'Stone' agrees under the 36 protocol
    assert [(r.item, r.label, r.teacher, r.distance) for r in report.rows] == [("images/1.png", "wrld", "world", 1)]
    out = curation.write_audit_tsv(report, tmp_path / "audit.tsv")
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["item", "label", "teacher", "min_conf", "mean_conf", "distance"]
    assert lines[1].split("\t")[:3] == ["images/1.png", "wrld", "world"]


def test_pseudo_label_writes_a_trainable_folder(tmp_path, teacher):
    rng = np.random.default_rng(3)
    crops = tmp_path / "crops" / "sub"
    crops.mkdir(parents=True)
    for i, word in enumerate(WORDS[:4]):
        cv2.imwrite(str(crops / f"{i}.jpg"), render_word(word, rng)[:, :, ::-1])
    cv2.imwrite(str(crops / "blank.png"), np.full((32, 100), 200, np.uint8))
    report = curation.pseudo_label(tmp_path / "crops", tmp_path / "out", teacher, CHARSET, min_confidence=0.5)
    assert (report.seen, report.labelled) == (5, 4)
    ds = FolderDataset(tmp_path / "out")
    assert sorted(ds.labels) == sorted(WORDS[:4])
    assert ds[0][0].ndim == 3  # the relative paths resolve
    assert len((tmp_path / "out" / "readings.tsv").read_text().splitlines()) == 6
    with pytest.raises(FileExistsError):
        curation.pseudo_label(tmp_path / "crops", tmp_path / "out", teacher, CHARSET)


def test_cli_audit_and_errors(labelled_folder, tmp_path, capsys):
    out = tmp_path / "a.tsv"
    args = ["audit", str(labelled_folder), "--out", str(out), "--teacher", "strkit", "--teacher-model", str(MODEL),
            "--quiet"]
    assert curate_main(args) == 0
    assert "agrees with 7 of 8" in capsys.readouterr().out and out.is_file()
    with pytest.raises(SystemExit) as exists:  # usage errors: argparse's exit, one line
        curate_main(args)
    with pytest.raises(SystemExit) as no_model:
        curate_main(["audit", str(labelled_folder), "--out", str(tmp_path / "b.tsv"), "--teacher", "strkit"])
    assert exists.value.code == no_model.value.code == 2
    assert curate_main(["filter", "/nonexistent", str(tmp_path / "f"), "--teacher", "strkit", "--teacher-model",
                        str(MODEL)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("Traceback" not in e for e in err)
    assert "--overwrite" in err[0] and "--teacher-model" in err[1]
