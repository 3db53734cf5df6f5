"""CTC search algorithms on one sample's log-probabilities (numpy, T×K, class ``blank`` = blank).

- :func:`greedy_search`: best path, collapsed.
- :func:`prefix_beam_search`: prefix beam search over label sequences (probability of a prefix =
  sum over its alignments kept in the beam).
- :func:`beam_search`: prefix beam search whose final candidates (plus the greedy label) are rescored
  exactly; what the CTC decoder uses.
- :func:`ctc_log_likelihood`: exact log P(label | x) by the CTC forward algorithm.
- :func:`ctc_align`: Viterbi forced alignment of a label (which frames emit which character).
- :func:`lexicon_search`: the candidate word with the highest CTC probability.

Labels are sequences of class ids (blank excluded); results are tuples of ids the codec maps to text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NEG_INF = -math.inf


def _lae(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) on Python floats (faster than numpy for scalars)."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _check(log_probs: np.ndarray) -> np.ndarray:
    arr = np.asarray(log_probs, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"CTC search expects log-probabilities of shape T×K, got {arr.shape}")
    return arr


def collapse(path: Sequence[int], blank: int = 0) -> tuple[int, ...]:
    """Merge repeated classes, then drop blanks: ``[1, 1, 0, 1, 2, 2] -> (1, 1, 2)``."""
    out: list[int] = []
    prev = None
    for c in path:
        c = int(c)
        if c != prev and c != blank:
            out.append(c)
        prev = c
    return tuple(out)


def greedy_search(log_probs: np.ndarray, blank: int = 0) -> tuple[tuple[int, ...], float]:
    """Best-path decoding.

    Args:
        log_probs: T×K log-probabilities.

    Returns:
        (collapsed label ids, log-probability of the best path itself).
    """
    lp = _check(log_probs)
    if lp.shape[0] == 0:
        return (), 0.0
    path = lp.argmax(1)
    return collapse(path.tolist(), blank), float(lp.max(1).sum())


def prefix_beam_search(log_probs: np.ndarray, beam_width: int = 10, blank: int = 0,
                       top_chars: int | None = None) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search.

    Each beam entry is a label prefix with two log-probabilities: of its alignments ending in a blank
    and ending in its last character; both are summed over the alignments the beam kept.

    Args:
        log_probs: T×K log-probabilities.
        beam_width: number of prefixes kept after each frame (>= 1).
        blank: blank class id.
        top_chars: if set, only the ``top_chars`` most probable non-blank classes of each frame extend
            a prefix (faster for large charsets; ``None`` = all classes).

    Returns:
        up to ``beam_width`` (label ids, log-probability) pairs, most probable first.
    """
    lp = _check(log_probs)
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    n_frames, n_classes = lp.shape
    classes = np.array([c for c in range(n_classes) if c != blank])
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}  # prefix -> (blank, non-blank)
    lae = _lae
    for t in range(n_frames):
        cand = classes
        if top_chars is not None and top_chars < len(classes):
            cand = classes[np.argsort(-lp[t, classes])[:top_chars]]
        row = lp[t].tolist()
        nxt: dict[tuple[int, ...], list[float]] = {}

        def slot(prefix: tuple[int, ...], table: dict[tuple[int, ...], list[float]] = nxt) -> list[float]:
            entry = table.get(prefix)
            if entry is None:
                entry = table[prefix] = [NEG_INF, NEG_INF]
            return entry

        cand_ids = cand.tolist()
        for prefix, (p_b, p_nb) in beams.items():
            total = lae(p_b, p_nb)
            stay = slot(prefix)
            stay[0] = lae(stay[0], total + row[blank])
            last = prefix[-1] if prefix else None
            if last is not None:
                stay[1] = lae(stay[1], p_nb + row[last])
            for c in cand_ids:
                ext = slot((*prefix, c))
                ext[1] = lae(ext[1], (p_b if c == last else total) + row[c])
        scored = sorted(nxt.items(), key=lambda kv: -lae(kv[1][0], kv[1][1]))[:beam_width]
        beams = {prefix: (v[0], v[1]) for prefix, v in scored}
    return [(prefix, lae(p_b, p_nb)) for prefix, (p_b, p_nb) in beams.items()]


def beam_search(log_probs: np.ndarray, beam_width: int = 10, blank: int = 0,
                top_chars: int | None = None) -> tuple[tuple[int, ...], float]:
    """Most probable label among the final prefix-beam candidates and the greedy label, each scored
    with its exact log-likelihood (:func:`ctc_log_likelihood`).

    Including the greedy label guarantees the result is at least as probable as the best path.

    Returns:
        (label ids, exact log P(label | x)).
    """
    candidates = [label for label, _ in prefix_beam_search(log_probs, beam_width, blank, top_chars)]
    greedy = greedy_search(log_probs, blank)[0]
    if greedy not in candidates:
        candidates.append(greedy)
    scored = [(label, ctc_log_likelihood(log_probs, label, blank)) for label in candidates]
    return max(scored, key=lambda item: item[1])


def _extended(label: Sequence[int], blank: int) -> tuple[np.ndarray, np.ndarray]:
    """Blank-interleaved label (2L+1,) and the mask of states that may skip the blank before them."""
    ext = np.full(2 * len(label) + 1, blank, dtype=np.int64)
    ext[1::2] = np.asarray(label, dtype=np.int64)
    skip = np.zeros(len(ext), dtype=bool)
    if len(label) > 1:
        skip[3::2] = ext[3::2] != ext[1:-2:2]
    return ext, skip


def _shift(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` moved ``k`` places to the right, filled with -inf."""
    out = np.full_like(a, NEG_INF)
    if k < len(a):
        out[k:] = a[:len(a) - k]
    return out


def ctc_log_likelihood(log_probs: np.ndarray, label: Sequence[int], blank: int = 0) -> float:
    """log P(label | x): log-sum over every alignment of ``label`` (forward algorithm).

    Returns ``-inf`` when the label cannot be aligned to T frames (too long with its repeats).
    """
    lp = _check(log_probs)
    label = [int(c) for c in label]
    if blank in label:
        raise ValueError(f"a CTC label cannot contain the blank class {blank}: {label}")
    n_frames = lp.shape[0]
    if n_frames == 0:
        return 0.0 if not label else NEG_INF
    ext, skip = _extended(label, blank)
    n_states = len(ext)
    alpha = np.full(n_states, NEG_INF)
    alpha[0] = lp[0, blank]
    if n_states > 1:
        alpha[1] = lp[0, ext[1]]
    for t in range(1, n_frames):
        prev2 = np.where(skip, _shift(alpha, 2), NEG_INF)
        alpha = np.logaddexp(np.logaddexp(alpha, _shift(alpha, 1)), prev2) + lp[t, ext]
    end = alpha[-1] if n_states == 1 else np.logaddexp(alpha[-1], alpha[-2])
    return float(end)


def ctc_align(log_probs: np.ndarray, label: Sequence[int], blank: int = 0) -> list[list[int]]:
    """Viterbi (most probable) alignment of ``label``: for each character, the frames that emit it.

    Returns:
        ``len(label)`` lists of frame indices (each non-empty); an empty list overall if the label
        cannot be aligned to T frames.
    """
    lp = _check(log_probs)
    label = [int(c) for c in label]
    n_frames = lp.shape[0]
    if not label:
        return []
    ext, skip = _extended(label, blank)
    n_states = len(ext)
    score = np.full(n_states, NEG_INF)
    score[0] = lp[0, blank]
    score[1] = lp[0, ext[1]]
    back = np.zeros((n_frames, n_states), dtype=np.int64)
    idx = np.arange(n_states)
    for t in range(1, n_frames):
        cands = np.stack([score, _shift(score, 1), np.where(skip, _shift(score, 2), NEG_INF)])
        best = cands.argmax(0)
        back[t] = idx - best
        score = cands[best, idx] + lp[t, ext]
    end = n_states - 1 if score[-1] >= score[-2] else n_states - 2
    if not np.isfinite(score[end]):
        return []
    frames: list[list[int]] = [[] for _ in label]
    state = end
    for t in range(n_frames - 1, -1, -1):
        if state % 2 == 1:
            frames[state // 2].append(t)
        state = int(back[t, state]) if t > 0 else state
    return [sorted(f) for f in frames]


def lexicon_search(log_probs: np.ndarray, candidates: Sequence[Sequence[int]],
                   blank: int = 0) -> tuple[int, float]:
    """The candidate label with the highest CTC log-likelihood.

    Returns:
        (index into ``candidates``, its log-likelihood); (-1, -inf) when there is no candidate or none
        can be aligned to the T frames.
    """
    best, best_lp = -1, NEG_INF
    for i, cand in enumerate(candidates):
        score = ctc_log_likelihood(log_probs, cand, blank)
        if score > best_lp:
            best, best_lp = i, score
    return best, best_lp
