"""CTC search algorithms (strkit.models.decoders.ctc_search) on small, exactly enumerable cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strkit.models.decoders.ctc_search import (
    beam_search,
    collapse,
    ctc_align,
    ctc_log_likelihood,
    greedy_search,
    lexicon_search,
    prefix_beam_search,
)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def exact_label_log_probs(lp: np.ndarray) -> dict[tuple[int, ...], float]:
    """log P(label) for every label, by enumerating all K^T paths."""
    t_len, k = lp.shape
    out: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(k), repeat=t_len):
        label = collapse(path)
        out[label] = float(np.logaddexp(out.get(label, -np.inf), lp[np.arange(t_len), list(path)].sum()))
    return out


small_logits = st.tuples(st.integers(1, 5), st.integers(2, 4)).flatmap(
    lambda s: arrays(np.float64, s, elements=st.floats(-4, 4)))


def test_collapse():
    assert collapse([1, 1, 0, 1, 2, 2, 0, 0]) == (1, 1, 2)
    assert collapse([0, 0]) == ()
    assert collapse([3, 3, 3], blank=3) == ()


@settings(max_examples=40, deadline=None)
@given(small_logits)
def test_forward_algorithm_matches_enumeration_and_torch(logits):
    lp = log_softmax(logits)
    exact = exact_label_log_probs(lp)
    for label, logp in exact.items():
        assert ctc_log_likelihood(lp, label) == pytest.approx(logp, abs=1e-9)
        if label:
            ref = -F.ctc_loss(torch.from_numpy(lp)[:, None], torch.tensor([label]), [lp.shape[0]],
                              [len(label)], reduction="sum").item()
            assert ctc_log_likelihood(lp, label) == pytest.approx(ref, abs=1e-6)
    # a label too long for T frames has probability 0
    assert ctc_log_likelihood(lp, [1] * (lp.shape[0] + 1)) == -np.inf


@settings(max_examples=40, deadline=None)
@given(small_logits)
def test_full_width_beam_finds_the_most_probable_label(logits):
    lp = log_softmax(logits)
    exact = exact_label_log_probs(lp)
    label, logp = prefix_beam_search(lp, beam_width=lp.shape[1] ** lp.shape[0])[0]
    assert logp == pytest.approx(max(exact.values()), abs=1e-9)
    assert exact[label] == pytest.approx(logp, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(2, 6), st.integers(0, 2**31 - 1), st.floats(0.9, 0.99))
def test_beam_width_one_equals_greedy_on_confident_frames(t_len, k, seed, top):
    """With a confident argmax on every frame (p >= 0.9, as a trained model gives) prefix beam search of
    width 1 returns the greedy (best path) label. On flat distributions it may differ, because it sums
    alignments: see test_beam_sums_alignments_where_greedy_does_not."""
    rng = np.random.default_rng(seed)
    rest = rng.dirichlet(np.ones(k), size=t_len) * (1 - top)
    best = rng.integers(0, k, size=t_len)
    rest[np.arange(t_len), best] = top
    lp = np.log(rest)
    assert prefix_beam_search(lp, beam_width=1)[0][0] == greedy_search(lp)[0]
    assert beam_search(lp, beam_width=1)[0] == greedy_search(lp)[0]


def test_beam_sums_alignments_where_greedy_does_not():
    # frames: 'a' 0.7, blank 0.7, 'a' 0.7 -> best path "aa" (0.343), but P("a") = 0.399 > P("aa")
    lp = np.log(np.array([[0.3, 0.7], [0.7, 0.3], [0.3, 0.7]]))
    assert greedy_search(lp)[0] == (1, 1)
    assert prefix_beam_search(lp, beam_width=1)[0][0] == (1,)
    assert beam_search(lp, beam_width=1)[0] == (1,)
    assert ctc_log_likelihood(lp, (1,)) > ctc_log_likelihood(lp, (1, 1))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10), st.integers(2, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_beam_label_is_at_least_as_probable_as_the_greedy_path(t_len, k, width, seed):
    lp = log_softmax(np.random.default_rng(seed).normal(scale=2.0, size=(t_len, k)))
    _, greedy_path_lp = greedy_search(lp)
    beams = prefix_beam_search(lp, beam_width=width)
    assert len(beams) <= width
    assert [b[1] for b in beams] == sorted((b[1] for b in beams), reverse=True)
    label, logp = beam_search(lp, beam_width=width)
    assert logp == pytest.approx(ctc_log_likelihood(lp, label))
    assert logp >= greedy_path_lp - 1e-9  # the decoded label is at least as probable as the best path
    assert logp >= ctc_log_likelihood(lp, greedy_search(lp)[0]) - 1e-9
    assert logp >= ctc_log_likelihood(lp, beams[0][0]) - 1e-9


def test_top_chars_pruning_keeps_confident_result():
    rng = np.random.default_rng(0)
    lp = log_softmax(rng.normal(size=(8, 6)) * 4)
    assert prefix_beam_search(lp, 5, top_chars=2)[0][0] == prefix_beam_search(lp, 5)[0][0]


def test_alignment_frames():
    # blank a a blank b b  -> 'a' on frames 1-2, 'b' on frames 4-5
    path = [0, 1, 1, 0, 2, 2]
    lp = np.log(np.full((6, 3), 0.05))
    lp[np.arange(6), path] = np.log(0.9)
    assert ctc_align(lp, (1, 2)) == [[1, 2], [4, 5]]
    assert ctc_align(lp, ()) == []
    assert ctc_align(lp[:1], (1, 1)) == []  # "aa" needs 3 frames


def test_lexicon_picks_the_word_with_highest_ctc_probability():
    # classes: 0 blank, 1 'c', 2 'a', 3 'r', 4 't'. Frames read "c a ? t" where '?' is r (0.45) or
    # blank (0.55): greedy says "cat", but the lexicon only has "cart" and "cut"-like words.
    probs = np.full((5, 5), 0.01)
    rows = [(1, 0.96), (2, 0.96), None, (4, 0.96), (0, 0.96)]
    for t, r in enumerate(rows):
        if r:
            probs[t, r[0]] = r[1]
    probs[2, 3], probs[2, 0] = 0.45, 0.52
    probs /= probs.sum(1, keepdims=True)
    lp = np.log(probs)
    assert greedy_search(lp)[0] == (1, 2, 4)  # "cat"
    lexicon = [(1, 4), (1, 2, 3, 4), (2, 3, 4), (1, 2, 3, 3, 4, 4, 4)]  # "ct", "cart", "art", too long
    best, logp = lexicon_search(lp, lexicon)
    assert best == 1
    assert logp == pytest.approx(ctc_log_likelihood(lp, (1, 2, 3, 4)))
    scores = [ctc_log_likelihood(lp, w) for w in lexicon]
    assert scores[3] == -np.inf and max(scores) == scores[1]
    assert lexicon_search(lp, []) == (-1, -np.inf)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="T×K"):
        greedy_search(np.zeros(3))
    with pytest.raises(ValueError, match="beam_width"):
        prefix_beam_search(np.zeros((2, 3)), beam_width=0)
    with pytest.raises(ValueError, match="blank"):
        ctc_log_likelihood(np.zeros((2, 3)), [0, 1])


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
       st.sampled_from(["36_lowercase", "62_mixed", "94_full"]))
def test_case_forms_are_the_case_variants_of_one_word(word, preset):
    """A lexicon word's forms (``lexicon_any_case``): distinct, the word as the charset keeps it first, every
    form spelled in that charset and equal to the word but for case."""
    from strkit.charset import Charset
    from strkit.models.decoders.ctc import case_forms

    charset = Charset.preset(preset)
    forms = case_forms(word, charset)
    kept = charset.normalize(word)[0]
    assert len(forms) == len(set(forms)) <= 4
    assert forms[:1] == ([kept] if kept else [])
    for form in forms:
        assert charset.normalize(form)[0] == form and form.lower() == kept.lower()
    if preset == "36_lowercase":
        assert len(forms) <= 1  # one case: nothing to vary
