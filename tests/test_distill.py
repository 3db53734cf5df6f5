"""Distillation losses against hand-computed values, and the teacher cache (round trip, resume, guards)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strkit.data.teacher_cache import TeacherCache, TeacherCacheError, TeacherTarget, image_key, stored_meta
from strkit.engine.distill import bag_kl, frame_kl, mutual_kl, sequence_targets

STUDENT = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]]]))  # softmax gives these rows back


def test_bag_kl_without_blank_by_hand():
    # time average [0.35, 0.425, 0.225] -> characters [0.425, 0.225] / 0.65; teacher [0.6, 0.3, 0.1] -> [0.75, 0.25]
    expected = 0.75 * math.log(0.75 / (0.425 / 0.65)) + 0.25 * math.log(0.25 / (0.225 / 0.65))
    assert bag_kl(STUDENT, torch.tensor([[0.6, 0.3, 0.1]])).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.0215452, rel=1e-5)


def test_bag_kl_with_blank_by_hand():
    expected = sum(t * math.log(t / s) for t, s in zip([0.6, 0.3, 0.1], [0.35, 0.425, 0.225], strict=True))
    got = bag_kl(STUDENT, torch.tensor([[0.6, 0.3, 0.1]]), include_blank=True).item()
    assert got == pytest.approx(expected, rel=1e-5) and got == pytest.approx(0.1378129, rel=1e-5)


def test_bag_kl_mask_and_gradient():
    logits = torch.cat([STUDENT, torch.zeros_like(STUDENT)]).requires_grad_()
    teacher = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    only_first = bag_kl(logits, teacher, mask=torch.tensor([True, False]))
    assert only_first.item() == pytest.approx(bag_kl(STUDENT, teacher[:1]).item(), rel=1e-6)
    only_first.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    none = bag_kl(logits, teacher, mask=torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad


def test_frame_kl_by_hand_and_shape_error():
    teacher = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]])
    expected = (sum(t * math.log(t / s) for t, s in zip([0.7, 0.2, 0.1], [0.5, 0.25, 0.25], strict=True))
                + sum(t * math.log(t / s) for t, s in zip([0.1, 0.8, 0.1], [0.2, 0.6, 0.2], strict=True))) / 2
    assert frame_kl(STUDENT, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.0953945, rel=1e-5)
    with pytest.raises(ValueError, match="bag-of-characters"):
        frame_kl(STUDENT, teacher[:, :1])


def test_mutual_kl_is_zero_for_equal_students_and_pulls_towards_the_other():
    a = torch.randn(2, 5, 4, requires_grad=True)
    la, lb = mutual_kl(a, a.detach().clone())
    assert la.item() == pytest.approx(0.0, abs=1e-6) and lb.item() == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(2, 5, 4)
    la, _ = mutual_kl(a, b)
    la.backward()
    with torch.no_grad():
        stepped = a - 0.5 * a.grad
    assert mutual_kl(stepped, b)[0] < la


def test_sequence_targets_threshold():
    texts, mask = sequence_targets(["abc", "", "de", None], [0.95, 0.99, 0.5, 1.0], threshold=0.9)
    assert texts == ["abc", "", "", ""] and mask.tolist() == [True, False, False, False]


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=12), st.floats(0, 1), st.integers(0, 30), st.integers(2, 40))
def test_target_round_trip(text, conf, t, c):
    rng = np.random.default_rng(t * 41 + c)
    frames = rng.dirichlet(np.ones(c), size=t).astype(np.float32) if t else np.zeros((0, c), np.float32)
    back = TeacherTarget.decode(TeacherTarget(text, conf, frames).encode())
    assert back.text == text and back.min_conf == pytest.approx(conf, abs=1e-6)
    assert back.frames.shape == (t, c)
    np.testing.assert_allclose(back.frames, frames, atol=1e-3)  # float16 storage
    assert back.bag().shape == (c,)


def test_cache_round_trip_resume_and_guards(tmp_path):
    img = np.arange(32 * 40, dtype=np.uint8).reshape(32, 40)
    keys = [image_key(img), image_key(img, view=1), image_key(img[:, ::-1])]
    assert len(set(keys)) == 3 and image_key(img.copy()) == keys[0]
    cache = TeacherCache(tmp_path / "c", "t1", "abc")
    assert cache.missing(keys) == keys
    target = TeacherTarget("ab", 0.9, np.full((3, 4), 0.25, np.float32))
    cache.put_many([(keys[0], target)])
    cache.close()
    again = TeacherCache(tmp_path / "c", "t1", "abc")  # a later run continues where the first stopped
    assert again.missing(keys) == keys[1:] and len(again) == 1
    got = again.get(keys[0])
    assert got.text == "ab" and got.frames.shape == (3, 4)
    reader = TeacherCache(tmp_path / "c", "t1", "abc", readonly=True)
    assert reader.get(keys[2]) is None and reader.get(keys[0]).text == "ab"
    with pytest.raises(TeacherCacheError, match="teacher"):
        TeacherCache(tmp_path / "c", "t2", "abc")
    with pytest.raises(TeacherCacheError, match="charset"):
        TeacherCache(tmp_path / "c", "t1", "abcd")
    with pytest.raises(TeacherCacheError, match="no teacher cache"):
        TeacherCache(tmp_path / "empty", "t1", "abc", readonly=True)
    again.close()
    reader.close()
    # a rank that did not fill the cache opens it by the teacher its meta record names
    assert stored_meta(tmp_path / "c")["teacher"] == "t1"
    opened = TeacherCache.open_readonly(tmp_path / "c", "abc")
    assert opened.readonly and opened.meta["teacher"] == "t1" and opened.get(keys[0]).text == "ab"
    with pytest.raises(TeacherCacheError, match="no teacher cache"):
        stored_meta(tmp_path / "empty")
