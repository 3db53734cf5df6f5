import pytest
from hypothesis import given
from hypothesis import strategies as st

from strkit.engine.metrics import RecognitionMetrics, combine, one_minus_ned


def test_ned_edge_cases():
    assert one_minus_ned("", "") == 1.0
    assert one_minus_ned("", "abc") == 0.0  # empty prediction
    assert one_minus_ned("abc", "") == 0.0  # empty label
    assert one_minus_ned("abd", "abc") == pytest.approx(2 / 3)
    assert one_minus_ned("ab", "abcd") == pytest.approx(0.5)


@given(st.text(max_size=12), st.text(max_size=12))
def test_ned_is_bounded_and_symmetric(a, b):
    v = one_minus_ned(a, b)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(one_minus_ned(b, a))
    assert (v == 1.0) == (a == b)


def test_accumulation_and_weighted_total():
    m1 = RecognitionMetrics("a")
    m1.update(["cat", "do", ""], ["cat", "dog", "x"], [0.9, 0.5, 0.1], keep_wrong=True)
    assert m1.count == 3 and m1.correct == 1
    assert m1.accuracy == pytest.approx(100 / 3)
    assert m1.ned == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert m1.mean_confidence == pytest.approx(0.5)
    assert [w[0] for w in m1.wrong] == [1, 2]
    m2 = RecognitionMetrics("b")
    m2.update(["x"], ["x"], [1.0])
    total = combine([m1, m2])
    assert total.count == 4 and total.correct == 2
    assert total.accuracy == pytest.approx(50.0)
    with pytest.raises(ValueError):
        m2.update(["a"], [])
    assert RecognitionMetrics().accuracy == 0.0


# ----------------------------------------------------------------------------------------------
# The evaluator on hand-made predictions, under each protocol (expected values worked out by hand)
# ----------------------------------------------------------------------------------------------
LABELS = ["Hello!", "AB-12", "x y", "café", "Door"]
PREDICTIONS = ["hello", "ab12", "xy.", "cafe", "Door"]
# per sample (exact match, 1-NED) after the protocol filter of label and prediction:
#   36 (lowercase [0-9a-z]): hello/hello ✓ 1 · ab12/ab12 ✓ 1 · xy/xy ✓ 1 · caf/cafe ✗ 1-1/4 · door/door ✓ 1
#   62 (case kept):          Hello/hello ✗ 1-1/5 · AB12/ab12 ✗ 1-2/4 · xy/xy ✓ 1 · caf/cafe ✗ 3/4 · Door ✓ 1
#   94 (printable ASCII, no space): Hello!/hello ✗ 1-2/6 · AB-12/ab12 ✗ 1-3/5 · xy/xy. ✗ 1-1/3 ·
#                                   caf/cafe ✗ 3/4 · Door ✓ 1
EXPECTED = {
    "36": (4, [1, 1, 1, 3 / 4, 1]),
    "62": (2, [4 / 5, 1 / 2, 1, 3 / 4, 1]),
    "94": (1, [2 / 3, 2 / 5, 2 / 3, 3 / 4, 1]),
}


class _Scripted:
    """A stand-in model whose ``predict`` returns the next hand-made predictions, in loader order."""

    def __init__(self, texts: list[str]) -> None:
        from strkit.greedy_decoding import Prediction

        self.queue = [Prediction(text=t, confidence=0.5, char_probs=[]) for t in texts]

    def eval(self) -> "_Scripted":
        return self

    def predict(self, images):
        out, self.queue = self.queue[:len(images)], self.queue[len(images):]
        return out


def test_one_reading_scored_under_every_protocol():
    """score_loader reads each batch once and scores it under each protocol exactly as evaluate_loader
    does under that protocol alone."""
    import torch

    from strkit.engine.evaluator import score_loader

    loader = [(torch.zeros(2, 1, 4, 4), LABELS[:2]), (torch.zeros(3, 1, 4, 4), LABELS[2:])]
    model = _Scripted(PREDICTIONS)
    scored = score_loader(model, loader, ["94", "36", "62"], "hand", torch.device("cpu"), keep_wrong=True)
    assert model.queue == []  # every prediction consumed once
    for protocol, m in zip(["94", "36", "62"], scored, strict=True):
        correct, ned = EXPECTED[protocol]
        assert (m.count, m.correct) == (5, correct)
        assert m.ned == pytest.approx(100 * sum(ned) / 5)
        assert [w[0] for w in m.wrong] == [i for i, v in enumerate(ned) if v < 1]


@pytest.mark.parametrize("protocol", ["36", "62", "94"])
def test_evaluator_scores_hand_made_predictions(protocol, tmp_path):
    import csv

    import torch

    from strkit.engine.evaluator import EvalReport, evaluate_loader

    loader = [(torch.zeros(2, 1, 4, 4), LABELS[:2]), (torch.zeros(3, 1, 4, 4), LABELS[2:])]  # two batches
    m = evaluate_loader(_Scripted(PREDICTIONS), loader, protocol, "hand", torch.device("cpu"), keep_wrong=True)
    correct, ned = EXPECTED[protocol]
    assert m.count == 5 and m.correct == correct
    assert m.accuracy == pytest.approx(100 * correct / 5)
    assert m.ned == pytest.approx(100 * sum(ned) / 5)
    assert [w[0] for w in m.wrong] == [i for i, v in enumerate(ned) if v < 1]  # indices run across batches
    # the written tables carry the same numbers, and the total weights each set by its size
    other = evaluate_loader(_Scripted(["door"]), [(torch.zeros(1, 1, 4, 4), ["Door"])], protocol, "one",
                            torch.device("cpu"))
    from strkit.engine.metrics import combine

    report = EvalReport("hand-model", protocol, [m, other], combine([m, other]))
    report.write(tmp_path)
    rows = {r["benchmark"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert float(rows["hand"]["accuracy"]) == pytest.approx(100 * correct / 5, abs=1e-4)
    assert float(rows["hand"]["ned"]) == pytest.approx(100 * sum(ned) / 5, abs=1e-4)
    one_correct = protocol == "36"  # 'door' reads 'Door' only when case is ignored
    assert float(rows["total"]["accuracy"]) == pytest.approx(100 * (correct + one_correct) / 6, abs=1e-4)
    assert float(rows["total"]["ned"]) == pytest.approx(100 * (sum(ned) + (1 if one_correct else 3 / 4)) / 6,
                                                        abs=1e-4)
