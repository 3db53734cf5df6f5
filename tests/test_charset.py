import logging
import math
import pickle
import string
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strkit.charset import PRESETS, PROTOCOLS, Charset, LabelFilter, protocol_filter
from strkit.codecs import CODECS, AttentionCodec, CTCCodec, build_codec
from strkit.greedy_decoding import Prediction
from strkit.registry import RegistryError

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "charsets"
FAST = settings(max_examples=100, deadline=None)

C36 = Charset.from_spec("36_lowercase")
C62 = Charset.from_spec("62_mixed")
C94 = Charset.from_spec("94_full")


# -- charsets ----------------------------------------------------------------------------------------
def test_presets_sizes_and_order():
    assert PRESETS == ("36_lowercase", "62_mixed", "94_full")
    assert (len(C36), len(C62), len(C94)) == (36, 62, 94)
    assert "".join(C36.chars) == string.digits + string.ascii_lowercase
    assert " " not in C94 and all(ch in C94 for ch in string.punctuation)
    assert C36.case_insensitive and not C62.case_insensitive and not C94.case_insensitive


@pytest.mark.parametrize("name", PRESETS)
def test_shipped_files_equal_code_presets(name):
    from_file = Charset.from_spec(str(DATA_DIR / f"{name}.txt"))
    assert from_file.chars == Charset.from_spec(name).chars
    assert from_file.name == name


def test_file_loading_space_blank_lines_and_duplicates(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("a\n\nb\n \nc\r\n\n", encoding="utf-8")
    cs = Charset.from_spec(str(f))
    assert cs.chars == ("a", "b", " ", "c")
    assert cs.name == "mine" and " " in cs and len(cs) == 4

    dup = tmp_path / "dup.txt"
    dup.write_text("a\nb\na\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'a'.*lines 1 and 3"):
        Charset.from_spec(str(dup))

    multi = tmp_path / "multi.txt"
    multi.write_text("a\nbc\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        Charset.from_spec(str(multi))

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no character"):
        Charset.from_spec(str(empty))


def test_unknown_spec_names_presets():
    with pytest.raises(FileNotFoundError, match="36_lowercase"):
        Charset.from_spec("37_lowercase")


def test_constructor_rejects_bad_entries():
    with pytest.raises(ValueError, match="twice"):
        Charset("x", ("a", "a"))
    with pytest.raises(ValueError, match="NFKC"):
        Charset("x", ("ﬁ",))
    with pytest.raises(ValueError, match="one character"):
        Charset("x", ("ab",))
    with pytest.raises(ValueError, match="empty"):
        Charset("x", ())


def test_case_insensitive_rule():
    assert Charset("x", tuple("abc1")).case_insensitive
    assert not Charset("x", tuple("abcA")).case_insensitive
    assert not Charset("x", tuple("0123")).case_insensitive  # no letters at all


def test_dict_round_trip_and_pickle(tmp_path):
    cs = Charset("odd", tuple("zé 1!"))
    back = Charset.from_dict(cs.to_dict())
    assert back == cs and back.chars == cs.chars and back.name == "odd"
    assert pickle.loads(pickle.dumps(cs)) == cs
    cs.to_file(tmp_path / "odd.txt")
    assert Charset.from_file(tmp_path / "odd.txt").chars == cs.chars
    with pytest.raises(ValueError, match="charset record"):
        Charset.from_dict({"name": "x"})


# -- normalisation -----------------------------------------------------------------------------------
def test_normalize_nfkc_case_and_counts():
    assert C36.normalize("ﬁne") == ("fine", 0)
    assert C36.normalize("ＡＢｃ１") == ("abc1", 0)  # full-width letters and digit
    assert C36.normalize("Hello, World!") == ("helloworld", 3)
    assert C62.normalize("Hello, World!") == ("HelloWorld", 3)  # case kept: charset has capitals
    assert C94.normalize("Hello, World!") == ("Hello,World!", 1)  # only the space goes
    assert C36.normalize("") == ("", 0)
    assert C36.normalize("日本") == ("", 2)


def test_adapt_maps_onto_smaller_charset():
    assert C36.adapt("Hello-World9") == "helloworld9"
    assert C62.adapt("Hello-World9") == "HelloWorld9"
    assert C94.adapt("a b") == "ab"


def test_label_filter_counts_and_warning(caplog):
    lf = LabelFilter(C36, max_length=5)
    assert lf("Hello") == "hello"
    assert lf("a-b") == "ab"
    assert lf("!!!") is None
    assert lf("abcdef") is None
    assert lf("ab-cdef") is None  # stripped, then too long
    assert lf.stats == {"seen": 5, "kept": 2, "chars_stripped": 5, "labels_with_stripped_chars": 3,
                        "skipped_empty": 1, "skipped_too_long": 2}
    assert lf.stripped_chars["!"] == 3 and lf.stripped_chars["-"] == 2
    line = lf.report()
    assert "\n" not in line and "5 seen" in line and "2 kept" in line
    with caplog.at_level(logging.WARNING, logger="strkit"):
        assert lf.warn_if_needed()
    assert any("5 seen" in r.getMessage() for r in caplog.records)

    other = LabelFilter(C36, max_length=5)
    other("ok")
    lf.merge(other)
    assert lf.stats["seen"] == 6 and lf.stats["kept"] == 3

    clean = LabelFilter(C36, max_length=5)
    clean("abc")
    assert not clean.warn_if_needed()
    with pytest.raises(ValueError):
        LabelFilter(C36, max_length=0)


# -- CTC ---------------------------------------------------------------------------------------------
def one_hot(ids: list[int], num_classes: int, scale: float = 30.0) -> torch.Tensor:
    """T×K logits whose argmax is ``ids``."""
    out = torch.zeros(len(ids), num_classes)
    out[torch.arange(len(ids)), torch.tensor(ids, dtype=torch.long)] = scale
    return out


def ctc_frames(targets: list[int], repeats: list[int], blanks: list[int]) -> list[int]:
    """A valid CTC alignment of ``targets``: each id repeated, blanks between (and required between
    equal neighbours)."""
    frames: list[int] = [0] * blanks[0]
    for i, t in enumerate(targets):
        if i and targets[i - 1] == t and (not frames or frames[-1] != 0):
            frames.append(0)
        frames.extend([t] * repeats[i])
        frames.extend([0] * blanks[i + 1])
    return frames


def test_ctc_encode_and_manual_decode():
    codec = CTCCodec(C36)
    assert codec.num_classes == 37 and codec.blank == 0
    enc = codec.encode(["ab", "", "a"])
    assert enc["targets"].tolist() == [11, 12, 11] and enc["targets"].dtype == torch.long
    assert enc["target_lengths"].tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="'A'"):
        codec.encode(["aAb"])

    a, b = 11, 12
    logits = one_hot([a, a, 0, a, b, b], 37)
    logits[1, a] = 1.0  # second frame of the first run less sure than the first
    logits[4, b] = 2.0  # first frame of the b run less sure than the second
    (pred,) = codec.decode(logits[None])
    assert pred.text == "aab" and len(pred.char_probs) == 3
    probs = logits.softmax(-1)
    assert pred.char_probs[0] == pytest.approx(probs[0, a].item())
    assert pred.char_probs[2] == pytest.approx(probs[5, b].item())
    assert pred.confidence == pytest.approx(math.prod(pred.char_probs))

    empty = codec.decode(one_hot([0, 0, 0], 37)[None])[0]
    assert empty == Prediction("", 1.0, [])
    assert codec.decode(logits[None], lengths=[3])[0].text == "a"
    assert codec.decode_ids([11, 0, 11, 12]) == "aab"
    with pytest.raises(ValueError, match="classes"):
        codec.decode(torch.zeros(1, 4, 40))


@FAST
@given(data=st.data(), charset=st.sampled_from([C36, C62, C94, Charset("tiny", ("a", "b"))]))
def test_ctc_round_trip(data, charset):
    codec = CTCCodec(charset)
    labels = data.draw(st.lists(st.text(alphabet=charset.chars, max_size=12), min_size=1, max_size=4))
    enc = codec.encode(labels)
    assert enc["target_lengths"].tolist() == [len(s) for s in labels]
    seqs = []
    start = 0
    for n in enc["target_lengths"].tolist():
        targets = enc["targets"][start:start + n].tolist()
        start += n
        repeats = data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
        blanks = data.draw(st.lists(st.integers(0, 2), min_size=n + 1, max_size=n + 1))
        seqs.append(ctc_frames(targets, repeats, blanks))
    width = max(len(s) for s in seqs) or 1
    logits = torch.stack([one_hot(s + [0] * (width - len(s)), codec.num_classes) for s in seqs])
    preds = codec.decode(logits)
    assert [p.text for p in preds] == labels
    for p in preds:
        assert len(p.char_probs) == len(p.text)
        assert p.confidence == pytest.approx(1.0, abs=1e-6)


@FAST
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), frames=st.integers(1, 20),
       scale=st.floats(0.1, 10.0))
def test_ctc_decode_random_logits_is_consistent(seed, batch, frames, scale):
    codec = CTCCodec(Charset("abc", tuple("abc")))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, codec.num_classes, generator=gen) * scale
    for pred in codec.decode(logits):
        assert len(pred.char_probs) == len(pred.text) <= frames
        assert all(1 / codec.num_classes <= p <= 1.0 for p in pred.char_probs)
        if pred.text:
            assert pred.confidence == pytest.approx(math.prod(pred.char_probs))
        else:  # empty reading: as sure as its least sure blank frame
            assert 1 / codec.num_classes <= pred.confidence <= 1.0


def test_ctc_empty_reading_confidence_is_the_weakest_blank_frame():
    codec = CTCCodec(Charset("abc", tuple("abc")))
    probs = torch.tensor([[[0.9, 0.05, 0.03, 0.02], [0.6, 0.2, 0.1, 0.1]]])
    (pred,) = codec.decode(probs.log())
    assert pred.text == "" and pred.confidence == pytest.approx(0.6)


# -- attention ---------------------------------------------------------------------------------------
def test_attention_encode_layout_and_errors():
    codec = AttentionCodec(C36, max_length=4)
    assert codec.num_classes == 39 and (codec.eos, codec.bos, codec.pad) == (0, 1, 2)
    enc = codec.encode(["ab", "", "abcd"])
    a, b, c, d = (3 + C36.index(ch) for ch in "abcd")
    assert enc["tokens"].tolist() == [[1, a, b, 0, 2, 2], [1, 0, 2, 2, 2, 2], [1, a, b, c, d, 0]]
    assert enc["lengths"].tolist() == [3, 1, 5]
    with pytest.raises(ValueError, match="max_length"):
        codec.encode(["abcde"])
    with pytest.raises(ValueError, match="'#'"):
        codec.encode(["a#"])
    assert codec.decode_ids([1, a, b, 0, c]) == "ab"


def test_attention_decode_without_eos_and_eos_probability():
    codec = AttentionCodec(Charset("ab", ("a", "b")), max_length=2)
    logits = one_hot([3, 4, 3], codec.num_classes)[None]  # no EOS: decoded over all 3 steps
    assert codec.decode(logits)[0].text == "aba"
    logits = one_hot([3, 0, 4], codec.num_classes, scale=2.0)[None]
    pred = codec.decode(logits)[0]
    assert pred.text == "a" and len(pred.char_probs) == 1
    masked = logits.clone()
    masked[..., 1:3] = -math.inf
    p = masked.softmax(-1)
    assert pred.confidence == pytest.approx(p[0, 0, 3].item() * p[0, 1, 0].item())


@FAST
@given(data=st.data(), charset=st.sampled_from([C36, C62, C94]), max_length=st.integers(1, 25))
def test_attention_round_trip(data, charset, max_length):
    codec = AttentionCodec(charset, max_length)
    labels = data.draw(st.lists(st.text(alphabet=charset.chars, max_size=max_length), min_size=1, max_size=4))
    enc = codec.encode(labels)
    assert enc["tokens"].shape == (len(labels), max_length + 2)
    targets = enc["tokens"][:, 1:]  # what the decoder predicts: L = max_length + 1 steps
    logits = torch.stack([one_hot(row.tolist(), codec.num_classes, scale=50.0) for row in targets])
    preds = codec.decode(logits)
    assert [p.text for p in preds] == labels
    for p in preds:
        assert p.confidence == pytest.approx(1.0, abs=1e-6)


@FAST
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), steps=st.integers(1, 12),
       scale=st.floats(0.1, 10.0))
def test_attention_decode_random_logits_is_consistent(seed, batch, steps, scale):
    codec = AttentionCodec(Charset("abc", tuple("abc")), max_length=steps)
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, steps, codec.num_classes, generator=gen) * scale
    for pred in codec.decode(logits):
        assert len(pred.char_probs) == len(pred.text) <= steps
        assert all(0.0 < p <= 1.0 for p in pred.char_probs)
        assert 0.0 < pred.confidence <= math.prod(pred.char_probs) + 1e-12


# -- registry and protocols --------------------------------------------------------------------------
def test_codec_registry():
    assert CODECS.names() == ["attention", "ctc"]
    ctc = build_codec("ctc", C36, 25)
    att = build_codec("attention", C36, 25)
    assert isinstance(ctc, CTCCodec) and isinstance(att, AttentionCodec) and att.max_length == 25
    with pytest.raises(RegistryError, match="ctc"):
        build_codec("beam", C36, 25)


def test_protocol_filter():
    assert PROTOCOLS == ("36", "62", "94")
    assert protocol_filter("Hello, World! ＡＢ") == "helloworldab"
    assert protocol_filter("Hello, World!", "62") == "HelloWorld"
    assert protocol_filter("Hello, World! ﬁ é", "94") == "Hello,World!fi"
    with pytest.raises(ValueError, match="36, 62, 94"):
        protocol_filter("x", "37")


@FAST
@given(text=st.text(max_size=30))
def test_protocol_36_matches_charset_normalize(text):
    assert protocol_filter(text, "36") == C36.normalize(text)[0]
    assert set(protocol_filter(text, "94")) <= set(C94.chars)
