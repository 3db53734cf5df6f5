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
