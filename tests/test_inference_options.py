"""Reading options of the Recognizer: word confidence modes, ECE, temperature calibration
(checkpoint and ONNX metadata), rotated crops, keep-ratio width for long words, lexicon constraint."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from strkit.api import Recognizer
from strkit.charset import protocol_filter
from strkit.engine.calibration import CalibrationResult, fit_temperature, save_calibrated
from strkit.engine.metrics import RecognitionMetrics, combine, expected_calibration_error
from strkit.greedy_decoding import Prediction
from strkit.inference.metadata import ExportMetadata, MetadataError
from strkit.inference.options import InferenceOptions, prediction_confidence, word_confidence
from strkit.models.pretrained import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def torch_rec(bundled_checkpoint) -> Recognizer:
    return Recognizer.from_checkpoint(bundled_checkpoint, backend="torch")


# -- word confidence ---------------------------------------------------------------------------------
def test_confidence_modes_on_hand_made_char_probs():
    probs = [0.9, 0.5, 0.8]
    assert word_confidence(probs, "product") == pytest.approx(0.36)
    assert word_confidence(probs, "mean") == pytest.approx(2.2 / 3)
    assert word_confidence(probs, "min") == pytest.approx(0.5)
    assert word_confidence(probs, "geomean") == pytest.approx(0.36 ** (1 / 3))
    assert word_confidence([0.7, 0.0], "geomean") == 0.0
    # 'product' is the decoder's own confidence (e.g. times the attention EOS probability); an empty reading
    # keeps the decoder's confidence in every mode
    pred = Prediction("ab", 0.3, [0.9, 0.5])
    assert prediction_confidence(pred, "product") == 0.3
    assert prediction_confidence(pred, "min") == 0.5
    assert prediction_confidence(Prediction("", 0.42, []), "mean") == 0.42
    with pytest.raises(ValueError, match="unknown confidence mode 'median'.*geomean"):
        InferenceOptions(confidence="median")


def test_confidence_option_in_the_api(torch_rec, synth_words):
    img = synth_words.images[0]
    default = torch_rec.recognize(img)[0]
    assert default.confidence == pytest.approx(math.prod(default.char_probs))  # today's behaviour kept
    for mode, expect in (("mean", float(np.mean(default.char_probs))), ("min", min(default.char_probs)),
                         ("geomean", math.prod(default.char_probs) ** (1 / len(default.char_probs)))):
        assert torch_rec.recognize(img, confidence=mode)[0].confidence == pytest.approx(expect)
        assert Recognizer.from_pretrained(backend="torch", confidence=mode).recognize(img)[0].confidence == \
            pytest.approx(expect)


# -- expected calibration error -------------------------------------------------------------------------
def test_ece_on_hand_made_predictions():
    # bins of width 1/15: 0.1 -> bin 1, 0.95 -> bin 14 (twice), 0.5 -> bin 7
    conf, correct = [0.1, 0.95, 0.95, 0.5], [False, True, False, True]
    # |0 - 0.1| * 1 + |0.5 - 0.95| * 2 + |1 - 0.5| * 1 = 1.5, over 4 samples
    assert expected_calibration_error(conf, correct) == pytest.approx(0.375)
    m = RecognitionMetrics("x")
    m.update(["a", "b", "x", "d"], ["z", "b", "c", "d"], conf)
    assert m.ece == pytest.approx(37.5)
    assert m.as_dict()["ece"] == pytest.approx(37.5)
    a, b = RecognitionMetrics("a"), RecognitionMetrics("b")
    a.update(["a", "b"], ["z", "b"], conf[:2])
    b.update(["x", "d"], ["c", "d"], conf[2:])
    assert combine([a, b]).ece == pytest.approx(37.5)  # per-bin totals combine exactly
    # a perfectly calibrated bin: confidence 0.8, 4 of 5 right
    assert expected_calibration_error([0.8] * 5, [1, 1, 1, 1, 0]) == pytest.approx(0.0)


# -- temperature -----------------------------------------------------------------------------------------
def test_fit_temperature_recovers_a_known_temperature():
    """Labels drawn from softmax(z / 2.5): the word confidence max softmax(z / T) is calibrated at T = 2.5."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, (6000, 8))
    p = np.exp(z / 2.5)
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((len(z), 1))).argmax(1)
    correct = labels == z.argmax(1)

    def confidence_at(t: float) -> np.ndarray:
        q = np.exp((z - z.max(1, keepdims=True)) / t)
        return (q / q.sum(1, keepdims=True)).max(1)

    assert fit_temperature(confidence_at, correct) == pytest.approx(2.5, rel=0.08)
    assert fit_temperature(confidence_at, correct, objective="ece") == pytest.approx(2.5, rel=0.15)
    with pytest.raises(ValueError, match="unknown calibration objective"):
        fit_temperature(confidence_at, correct, objective="brier")


def _result(t: float) -> CalibrationResult:
    return CalibrationResult(temperature=t, objective="nll", confidence="product", count=1, accuracy=0.0,
                             ece_before=0.0, ece_after=0.0, nll_before=0.0, nll_after=0.0, source="test")


def test_temperature_is_stored_and_applied_in_checkpoint_and_onnx(bundled_checkpoint, synth_words, tmp_path):
    calibrated = save_calibrated(bundled_checkpoint, tmp_path / "calibrated.pt", _result(2.0))
    model, _ = load_model(calibrated)
    assert model.temperature == 2.0
    assert load_model(bundled_checkpoint)[0].temperature == 1.0
    img = synth_words.images[0]
    raw = Recognizer.from_checkpoint(bundled_checkpoint, backend="torch")
    cal = Recognizer.from_checkpoint(calibrated, backend="torch")
    r_raw, r_cal = raw.recognize(img)[0], cal.recognize(img)[0]
    assert r_cal.text == r_raw.text  # a temperature changes confidences, not greedy readings
    x = raw.transform(img)[None]
    logits = raw.backend.logits(x)
    expect = raw.model.codec.decode(logits / 2.0)[0].confidence
    assert r_cal.confidence == pytest.approx(expect, rel=1e-5)
    assert abs(r_cal.confidence - r_raw.confidence) > 1e-3
    # the ONNX export carries it in its metadata and ONNX Runtime applies it
    onnx = Recognizer.from_checkpoint(calibrated, backend="onnx", threads=1)
    assert onnx.backend.metadata.temperature == 2.0
    r_onnx = onnx.recognize(img)[0]
    assert r_onnx.text == r_cal.text and r_onnx.confidence == pytest.approx(r_cal.confidence, abs=1e-3)
    assert json.loads(onnx.backend.metadata.to_json())["temperature"] == 2.0
    with pytest.raises(ValueError, match="must be a new file"):
        save_calibrated(calibrated, calibrated, _result(1.5))


@pytest.mark.parametrize("value", [0, -1.0, 100.5, "2", True, float("nan")])
def test_metadata_schema_checks_the_temperature(torch_rec, value):
    meta = torch_rec.backend.metadata.to_dict()
    assert ExportMetadata.from_dict({**meta, "temperature": 100}).temperature == 100.0
    assert ExportMetadata.from_dict({k: v for k, v in meta.items() if k != "temperature"}).temperature == 1.0
    with pytest.raises(MetadataError, match="'temperature'"):
        ExportMetadata.from_dict({**meta, "temperature": value})


# -- rotated crops ------------------------------------------------------------------------------------------
def test_rotated_word_is_read_with_the_option_on_only(torch_rec, synth_words):
    index = next(i for i, (img, label) in enumerate(zip(synth_words.images, synth_words.labels, strict=True))
                 if len(label) >= 5 and img.shape[1] > 2 * img.shape[0]
                 and torch_rec.recognize(img)[0].text == label)
    img, label = synth_words.images[index], synth_words.labels[index]
    turned = [np.rot90(img, 1), np.rot90(img, 3)]  # 90° and 270° counter-clockwise
    on = torch_rec.recognize(turned)
    assert [r.text for r in on] == [label, label]
    assert [r.rotation for r in on] == [-90, 90]  # the turn that brought the word upright
    off = torch_rec.recognize(turned, rotate=False)
    assert all(r.text != label and r.rotation == 0 for r in off)
    assert Recognizer.from_pretrained(backend="torch", rotate=False).recognize(turned[0])[0].text != label
    # a crop just below the ratio is not tried rotated
    assert torch_rec.recognize(turned[0], rotate_ratio=img.shape[1] / img.shape[0] + 0.1)[0].text != label
    assert torch_rec.recognize(img)[0].rotation == 0  # a wide crop is read as it is


# -- long words ---------------------------------------------------------------------------------------------
LONG_WORDS = ["internationalization", "counterrevolutionary", "electroencephalograph"]


def _long_word(text: str) -> np.ndarray:
    img = np.full((32, 14 * len(text) + 8, 3), 255, np.uint8)
    cv2.putText(img, text, (4, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    return img


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_long_words_read_with_keep_ratio_width(bundled_checkpoint, backend):
    rec = Recognizer.from_pretrained(backend=backend, threads=1)
    images = [_long_word(w) for w in LONG_WORDS]
    squashed = [r.text for r in rec.recognize(images)]
    wide = [r.text for r in rec.recognize(images, max_width=512)]
    assert wide == LONG_WORDS
    assert all(s != w for s, w in zip(squashed, LONG_WORDS, strict=True))
    # short words read exactly as without the option (they are still resized to the model's width)
    short = np.ascontiguousarray(images[0][:, :100])
    assert rec.recognize(short, max_width=512)[0] == rec.recognize(short)[0]


def test_max_width_needs_a_dynamic_width_backend(torch_rec):
    with pytest.raises(ValueError, match="narrower than the model's input width 128"):
        torch_rec.recognize(_long_word("abc"), max_width=64)

    class FixedWidth:
        name, dynamic_width, temperature = "fixed", False, 1.0
        input_spec, charset = torch_rec.backend.input_spec, torch_rec.backend.charset

    with pytest.raises(ValueError, match="max_width needs a model that accepts any input width"):
        Recognizer(FixedWidth(), max_width=256)


# -- lexicon ------------------------------------------------------------------------------------------------
def test_lexicon_fixes_misreads(torch_rec, synth_words):
    labels = [protocol_filter(t) for t in synth_words.labels]
    plain = [protocol_filter(r.text) for r in torch_rec.recognize(synth_words.images)]
    wrong = [i for i, (p, g) in enumerate(zip(plain, labels, strict=True)) if p != g]
    assert wrong, "the bundled model reads every rendered word: no misread to fix"
    lexicon = sorted(set(labels))
    read = [r.text for r in torch_rec.recognize(synth_words.images, lexicon=lexicon)]
    assert any(t not in lexicon for t in read)  # the case-sensitive model returns the case it read ...
    constrained = [protocol_filter(t) for t in read]
    assert all(t in lexicon for t in constrained)  # ... of a lexicon word
    exact = [r.text for r in torch_rec.recognize(synth_words.images[:16], lexicon=lexicon, lexicon_any_case=False)]
    assert all(t in lexicon for t in exact)  # only the words as written
    with pytest.raises(ValueError, match="lexicon_any_case must be True or False"):
        torch_rec.recognize(synth_words.images[0], lexicon=lexicon, lexicon_any_case="yes")
    fixed = [i for i in wrong if constrained[i] == labels[i]]
    assert fixed, f"no misread fixed: {[(plain[i], labels[i], constrained[i]) for i in wrong]}"
    assert sum(c == g for c, g in zip(constrained, labels, strict=True)) > sum(
        p == g for p, g in zip(plain, labels, strict=True))
    # the constructor option does the same
    rec = Recognizer.from_pretrained(backend="torch", lexicon=lexicon)
    assert protocol_filter(rec.recognize(synth_words.images[wrong[0]])[0].text) == constrained[wrong[0]]
    onnx = Recognizer.from_pretrained(backend="onnx", threads=1, lexicon=lexicon)  # decoding from the metadata
    assert [protocol_filter(r.text) for r in onnx.recognize([synth_words.images[i] for i in wrong])] == \
        [constrained[i] for i in wrong]


def test_lexicon_is_for_ctc_models_only(torch_rec):
    from strkit.inference.decoding import build_lexicon_decode_fn

    meta = replace(torch_rec.backend.metadata, codec_kind="attention", decoder={"name": "attention"})
    with pytest.raises(ValueError, match="CTC models only"):
        build_lexicon_decode_fn(meta, ["word"])
    with pytest.raises(ValueError, match="lexicon is empty"):
        torch_rec.recognize(_long_word("abc"), lexicon=[])
    with pytest.raises(ValueError, match="unknown reading option"):
        torch_rec.recognize(_long_word("abc"), lexicn=["abc"])


def test_temperature_does_not_change_greedy_readings(torch_rec, synth_words):
    x = torch.stack([torch_rec.transform(im) for im in synth_words.images[:16]])
    logits = torch_rec.backend.logits(x)
    codec = torch_rec.model.codec
    assert [p.text for p in codec.decode(logits)] == [p.text for p in codec.decode(logits / 3.0)]


def test_recognize_tool_reading_options(torch_rec, synth_words, tmp_path, capsys):
    from strkit.cli.recognize import main

    index = next(i for i, (img, label) in enumerate(zip(synth_words.images, synth_words.labels, strict=True))
                 if len(label) >= 5 and img.shape[1] > 2 * img.shape[0] and torch_rec.recognize(img)[0].text == label)
    label = synth_words.labels[index]
    turned, long = tmp_path / "turned.png", tmp_path / "long.png"
    cv2.imwrite(str(turned), np.ascontiguousarray(np.rot90(synth_words.images[index], 1))[:, :, ::-1])
    cv2.imwrite(str(long), _long_word(LONG_WORDS[0]))

    def read(*flags: str) -> list[dict]:
        assert main(["default", str(turned), str(long), "--backend", "torch", "--format", "json", *flags]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    on = read("--max-width", "512", "--confidence", "min")
    assert [r["text"] for r in on] == [label, LONG_WORDS[0]] and on[0]["rotation"] == -90
    assert on[1]["confidence"] == pytest.approx(min(on[1]["char_probs"]), abs=1e-4)
    off = read("--no-rotate")
    assert off[0]["text"] != label and off[0]["rotation"] == 0 and off[1]["text"] != LONG_WORDS[0]
    words = tmp_path / "words.txt"
    words.write_text(f"{LONG_WORDS[0]}\n{label}\nzebra\n")
    lex = read("--no-rotate", "--lexicon", str(words))
    assert all(r["text"].lower() in {LONG_WORDS[0], label, "zebra"} for r in lex)  # a word, in some case
    exact = read("--no-rotate", "--lexicon", str(words), "--lexicon-exact-case")
    assert all(r["text"] in {LONG_WORDS[0], label, "zebra"} for r in exact)  # a word as written
    with pytest.raises(SystemExit) as exit_:
        main(["default", str(long), "--max-width", "0"])
    assert exit_.value.code == 2 and "--max-width" in capsys.readouterr().err


@pytest.mark.parametrize("value", [0.0, -2.0, 101.0, "1.5"])
def test_a_bad_stored_temperature_is_refused(value):
    from strkit.models.pretrained import checkpoint_temperature

    assert checkpoint_temperature({}) == 1.0
    assert checkpoint_temperature({"calibration": {"temperature": 1.5}}) == 1.5
    with pytest.raises(ValueError, match=r"temperature .* is not a number in \(0, 100\]"):
        checkpoint_temperature({"calibration": {"temperature": value}})
