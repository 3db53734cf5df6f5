"""Teachers: CTC decoding, the teacher -> student class map, the strkit and RapidOCR teachers."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import render_word

from strkit.charset import Charset
from strkit.inference.teachers import TEACHERS, ClassMap, TeacherError, build_teacher, fold_char, greedy_ctc

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["hello", "world", "table", "river", "stone", "music"]


def test_greedy_ctc_merges_repeats_drops_blanks_and_keeps_peak_confidence():
    classes = ["", "a", "b"]
    #          a    a    blank a    b
    probs = np.array([[0.1, 0.6, 0.3], [0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]],
                     np.float32)
    text, conf = greedy_ctc(probs, classes)
    assert text == "aab"
    np.testing.assert_allclose(conf, [0.8, 0.7, 0.7])
    assert greedy_ctc(np.zeros((0, 3), np.float32), classes)[0] == ""


def test_fold_char_full_width_accents_and_ligatures():
    assert fold_char("Ａ") == "A"
    assert fold_char("à") == "a"
    assert fold_char("Â") == "A"
    assert fold_char("ﬁ") == "fi"
    assert fold_char("中") == "中"


def test_class_map_sums_case_variants_and_sends_unmapped_mass_to_blank():
    teacher = ["", "a", "A", "à", "Ｂ", "中", " ", "1", "ﬁ"]
    cs = Charset.preset("36_lowercase")
    cm = ClassMap(teacher, cs)
    a, b, one = cs.index("a") + 1, cs.index("b") + 1, cs.index("1") + 1
    assert cm.index.tolist() == [0, a, a, a, b, 0, 0, one, 0]
    assert cm.unmapped == 3  # 中, space and the two-letter ligature
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.05, 0.1, 0.1, 0.05, 0.05, 0.05]])
    folded = cm.fold_probs(probs)
    assert folded.shape == (1, 37)
    assert folded[0, a].item() == pytest.approx(0.55)
    assert folded[0, b].item() == pytest.approx(0.1)
    assert folded[0, one].item() == pytest.approx(0.05)
    assert folded[0, 0].item() == pytest.approx(0.1 + 0.1 + 0.05 + 0.05)  # blank + 中 + space + ﬁ
    assert folded.sum().item() == pytest.approx(1.0)
    assert cm.fold_text("Âb 中1") == "ab1"


def test_class_map_keeps_case_for_a_cased_student():
    cm = ClassMap(["", "a", "A"], Charset.preset("62_mixed"))
    assert cm.index[1] != cm.index[2] and 0 not in cm.index[1:]
    assert cm.fold_text("Ａa") == "Aa"


@pytest.mark.parametrize(("name", "classes"), [("fast.pt", 37), ("fast.onnx", 37), ("default.pt", 95),
                                              ("default.onnx", 95)])
def test_strkit_teacher_reads_rendered_words(name, classes):
    teacher = build_teacher("strkit", path=Path(str(resources.files("strkit") / "assets")) / name)
    rng = np.random.default_rng(0)
    out = teacher.predict([render_word(w, rng) for w in WORDS])
    assert out.texts == WORDS  # the bundled models read these clean crops; a broken path would not
    assert teacher.classes[0] == "" and len(teacher.classes) == classes  # blank + 36 or 94 characters
    for p, text, conf in zip(out.probs, out.texts, out.char_confidences, strict=True):
        assert p.ndim == 2 and p.shape[1] == classes
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
        assert len(conf) == len(text) and (conf > 0.5).all()


def test_teacher_errors():
    with pytest.raises(TeacherError, match="not a file"):
        build_teacher("strkit", path="/nonexistent/model.pt")
    assert set(TEACHERS.names()) >= {"rapidocr", "strkit"}


@pytest.mark.skipif(importlib.util.find_spec("rapidocr") is None, reason="optional extra 'teacher' not installed")
def test_rapidocr_teacher_reads_rendered_words_with_valid_frames():
    teacher = build_teacher("rapidocr", threads=1)
    rng = np.random.default_rng(1)
    images = [render_word(w, rng, w=100 if i % 2 else 160) for i, w in enumerate(WORDS)]
    out = teacher.predict(images)
    cm = ClassMap(teacher.classes, Charset.preset("36_lowercase"))
    assert sum(cm.fold_text(t) == w for t, w in zip(out.texts, WORDS, strict=True)) >= len(WORDS) - 1
    for image, p in zip(images, out.probs, strict=True):
        width = teacher.width(image)
        assert p.shape == (int(np.ceil(width / 8)), len(teacher.classes))  # only frames covering the crop
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-3)
