"""Tests of strkit.data.mixing: exact per-batch ratios, rank shards, resume, determinism, loaders."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strkit.data.mixing import (
    MixedBatchSampler,
    batch_counts,
    build_eval_loader,
    build_mixed_loader,
    ratio_phases,
)
from strkit.data.transforms import ImageTransform


# -- batch_counts --------------------------------------------------------------------------------
@pytest.mark.parametrize(("ratios", "batch_size", "expected"), [
    ([0.5, 0.5], 32, [16, 16]),
    ([1.0], 7, [7]),
    ([0.99, 0.01], 100, [99, 1]),
    ([1.0, 1e-9], 32, [31, 1]),          # a ratio > 0 gets at least one sample
    ([1.0, 0.0, 1.0], 5, [3, 0, 2]),     # a zero ratio gets none; tie to the lower index
    ([0.5, 0.3, 0.2], 10, [5, 3, 2]),
    ([2, 1, 1], 8, [4, 2, 2]),           # ratios need not sum to 1
])
def test_batch_counts_examples(ratios: list[float], batch_size: int, expected: list[int]) -> None:
    assert batch_counts(ratios, batch_size) == expected


@pytest.mark.parametrize(("ratios", "batch_size", "match"), [
    ([], 8, "no ratios"), ([0.0, 0.0], 8, "all ratios are zero"), ([1.0, -0.1], 8, "source 1"),
    ([float("nan")], 8, "finite"), ([1.0], 0, "batch_size"),
])
def test_batch_counts_errors(ratios: list[float], batch_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        batch_counts(ratios, batch_size)


@settings(max_examples=200, deadline=None)
@given(ratios=st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 100.0)), min_size=1, max_size=8)
       .filter(lambda r: sum(r) > 0),
       batch_size=st.integers(1, 512))
def test_batch_counts_properties(ratios: list[float], batch_size: int) -> None:
    counts = batch_counts(ratios, batch_size)
    assert sum(counts) == batch_size
    assert all(c >= 0 for c in counts)
    assert all(c == 0 for c, r in zip(counts, ratios, strict=True) if r == 0)
    positive = [i for i, r in enumerate(ratios) if r > 0]
    if len(positive) <= batch_size:
        assert all(counts[i] >= 1 for i in positive)
    quotas = [r / sum(ratios) * batch_size for r in ratios]
    if all(q >= 1 for q, r in zip(quotas, ratios, strict=True) if r > 0):  # no minimum-one adjustment
        assert all(abs(c - q) < 1 for c, q in zip(counts, quotas, strict=True))


# -- the sampler ---------------------------------------------------------------------------------
def _source_of(index: int, lengths: list[int]) -> int:
    return int(np.searchsorted(np.cumsum(lengths), index, side="right"))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=4),
       weights=st.lists(st.floats(0.05, 10.0), min_size=4, max_size=4),
       batch_size=st.integers(4, 40), seed=st.integers(0, 2**31), start=st.integers(0, 50))
def test_every_batch_has_the_exact_composition(lengths: list[int], weights: list[float], batch_size: int,
                                               seed: int, start: int) -> None:
    ratios = weights[: len(lengths)]
    sampler = MixedBatchSampler(lengths, ratios, batch_size, seed=seed, start_step=start)
    for batch in itertools.islice(iter(sampler), 6):
        assert len(batch) == batch_size
        per_source = np.bincount([_source_of(i, lengths) for i in batch], minlength=len(lengths))
        assert per_source.tolist() == sampler.counts
        assert all(0 <= i < sum(lengths) for i in batch)


def _consumed(sampler: MixedBatchSampler, steps: int, source: int) -> list[int]:
    lengths = sampler.source_lengths
    return [i for s in range(steps) for i in sampler.batch(s) if _source_of(i, lengths) == source]


def test_each_epoch_of_a_source_is_a_permutation() -> None:
    lengths = [10, 37]
    sampler = MixedBatchSampler(lengths, [0.5, 0.5], 8, seed=5)  # 4 + 4 per batch
    seen = _consumed(sampler, 40, 1)  # 160 samples = 4 epochs of 37, then 12 more
    for e in range(4):
        assert sorted(seen[37 * e: 37 * (e + 1)]) == list(range(10, 47))
    assert seen[:37] != seen[37:74]  # a new permutation each epoch


def test_rank_shards_are_disjoint_and_cover_the_source() -> None:
    lengths, world = [23, 50], 3
    samplers = [MixedBatchSampler(lengths, [1, 1], 4, seed=9, rank=r, world_size=world)
                for r in range(world)]
    for source, n in enumerate(lengths):
        shard = n // world
        epoch0 = [set(_consumed(s, shard, source)[:shard]) for s in samplers]  # each rank's first epoch
        assert all(len(part) == shard for part in epoch0)
        assert all(not (a & b) for a, b in itertools.combinations(epoch0, 2))
        union = set().union(*epoch0)
        assert len(union) == world * shard  # only the ragged tail (n % world) is left out ...
        later = set().union(*(set(_consumed(s, 40 * shard, source)) for s in samplers))
        offset = sum(lengths[:source])
        assert later == set(range(offset, offset + n))  # ... and a later epoch covers it


def test_resume_at_step_k_continues_exactly() -> None:
    lengths, ratios = [13, 29, 7], [0.5, 0.3, 0.2]
    full = list(itertools.islice(iter(MixedBatchSampler(lengths, ratios, 10, seed=1)), 30))
    for k in (0, 1, 7, 19):
        resumed = MixedBatchSampler(lengths, ratios, 10, seed=1, start_step=k)
        assert list(itertools.islice(iter(resumed), 30 - k)) == full[k:]
    original = MixedBatchSampler(lengths, ratios, 10, seed=1)
    it = iter(original)
    for _ in range(12):
        next(it)
    state = original.state_dict(step=9)  # the model consumed 9 batches; 3 were prefetched
    assert original.state_dict()["step"] == 12
    restored = MixedBatchSampler(lengths, ratios, 10, seed=1)
    restored.load_state_dict(state)
    assert next(iter(restored)) == full[9]


def test_load_state_dict_warns_when_the_mix_changed(caplog: pytest.LogCaptureFixture) -> None:
    state = MixedBatchSampler([10, 10], [1, 1], 4, seed=0).state_dict(step=3)
    other = MixedBatchSampler([10, 10], [3, 1], 4, seed=0)
    with caplog.at_level(logging.WARNING, logger="strkit"):
        other.load_state_dict(state)
    assert "counts" in caplog.text and other.start_step == 3


def test_determinism_from_seed_and_unshuffled_order() -> None:
    def run(seed: int, shuffle: bool = True) -> list[list[int]]:
        sampler = MixedBatchSampler([20, 30], [1, 1], 6, seed=seed, shuffle=shuffle)
        return list(itertools.islice(iter(sampler), 10))

    assert run(3) == run(3)
    assert run(3) != run(4)
    plain = run(0, shuffle=False)
    assert plain[0] == [0, 1, 2, 20, 21, 22] and plain[1] == [3, 4, 5, 23, 24, 25]


# -- ratio schedules (curriculum) -------------------------------------------------------------------
def test_ratio_phases_examples() -> None:
    assert ratio_phases([1.0, 0.5]) == [(0, [1.0, 0.5])]
    assert ratio_phases([1.0, 0.0], [[(100, 0.2)], [(100, 0.8)]]) == [(0, [1.0, 0.0]), (100, [0.2, 0.8])]
    # steps of different sources interleave; a change to the same mix makes no new phase
    assert ratio_phases([1.0, 1.0], [[(10, 0.5), (30, 1.0)], [(20, 2.0)]]) == [
        (0, [1.0, 1.0]), (10, [0.5, 1.0]), (20, [0.5, 2.0]), (30, [1.0, 2.0])]
    assert ratio_phases([1.0], [[(5, 1.0)]]) == [(0, [1.0])]
    assert ratio_phases([0.0, 1.0], [[(0, 1.0)], []]) == [(0, [1.0, 1.0])]  # a step-0 entry replaces ratio


@pytest.mark.parametrize(("schedules", "match"), [
    ([[(5, 0.5)]], "2 sources but 1"),
    ([[(-1, 0.5)], []], "step must be >= 0"),
    ([[(5, -0.5)], []], "ratio a finite number"),
    ([[(5, 0.5), (5, 0.2)], []], "names a step twice"),
    ([[(5,)], []], "from_step, ratio"),
])
def test_ratio_phases_errors(schedules: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ratio_phases([1.0, 1.0], schedules)


def test_a_phase_with_every_ratio_zero_names_its_step() -> None:
    with pytest.raises(ValueError, match="from step 7: all ratios are zero"):
        MixedBatchSampler([10, 10], [1.0, 0.0], 4, schedules=[[(7, 0.0)], []])


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(3, 40), min_size=2, max_size=3),
       switch=st.integers(1, 12), batch_size=st.integers(4, 16), seed=st.integers(0, 2**31),
       start=st.integers(0, 25), late=st.floats(0.1, 5.0))
def test_scheduled_mix_is_exact_gapless_and_resumable(lengths: list[int], switch: int, batch_size: int,
                                                      seed: int, start: int, late: float) -> None:
    """Source 0 alone until ``switch``, then every source: each batch has the phase's composition, each
    source's samples run through its epochs without a gap or a repeat across the phase change, and a
    sampler started at any step yields the same batches."""
    ratios = [1.0] + [0.0] * (len(lengths) - 1)
    schedules = [[(switch, 1.0)]] + [[(switch, late)] for _ in lengths[1:]]
    sampler = MixedBatchSampler(lengths, ratios, batch_size, seed=seed, schedules=schedules)
    steps = 30
    for step in range(steps):
        per_source = np.bincount([_source_of(i, lengths) for i in sampler.batch(step)], minlength=len(lengths))
        assert per_source.tolist() == sampler.counts_at(step)
        assert (per_source[1:].sum() == 0) == (step < switch)
    for source, n in enumerate(lengths):
        seen = _consumed(sampler, steps, source)
        assert len(seen) == sampler.consumed(source, steps)
        for e in range(len(seen) // n):  # every whole epoch is a permutation of the source
            assert sorted(seen[n * e: n * (e + 1)]) == list(range(sum(lengths[:source]), sum(lengths[:source + 1])))
    resumed = MixedBatchSampler(lengths, ratios, batch_size, seed=seed, schedules=schedules, start_step=start)
    assert list(itertools.islice(iter(resumed), 5)) == [sampler.batch(s) for s in range(start, start + 5)]


def test_scheduled_composition_and_state() -> None:
    sampler = MixedBatchSampler([10, 10], [1.0, 0.0], 8, names=["clean", "real"],
                                schedules=[[(100, 0.25)], [(100, 0.75)]])
    assert sampler.composition() == "batch of 8: clean 8, real 0; from step 100: clean 2, real 6"
    assert sampler.describe(150)["sources"][1]["samples_seen"] == 50 * 6
    assert sampler.state_dict(3)["phases"] == [[0, [8, 0]], [100, [2, 6]]]


def test_describe_and_composition() -> None:
    sampler = MixedBatchSampler([10, 100], [0.5, 0.5], 8, names=["MJ", "ST"])
    assert sampler.composition() == "batch of 8: MJ 4, ST 4"
    info = sampler.describe(3)
    assert info["step"] == 3 and info["batch_size"] == 8
    assert info["sources"][0] == {"name": "MJ", "count": 4, "epoch": 1, "offset": 2, "samples_seen": 12}
    assert info["sources"][1]["epoch"] == 0 and info["sources"][1]["offset"] == 12


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match="gets no sample"):
        MixedBatchSampler([10, 10, 10], [1, 1, 1], 2)
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        MixedBatchSampler([3, 100], [1, 1], 8, world_size=4, rank=1)
    with pytest.raises(ValueError, match="rank"):
        MixedBatchSampler([10], [1], 8, world_size=2, rank=2)
    with pytest.raises(ValueError, match="2 sources but 1 ratios"):
        MixedBatchSampler([10, 10], [1], 8)


# -- loaders -------------------------------------------------------------------------------------
class ListDataset(torch.utils.data.Dataset):
    """A list-backed dataset of ``(image, label)`` items; labels say ``<source>:<index>``."""

    def __init__(self, name: str, n: int, width: int = 40) -> None:
        self.name = name
        rng = np.random.default_rng(len(name) * 100 + n)
        self.items = [(rng.integers(0, 256, (16, width + i % 7, 3), dtype=np.uint8), f"{name}:{i}")
                      for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        return self.items[index]


def _take(loader: torch.utils.data.DataLoader, n: int) -> list[tuple[torch.Tensor, list[str]]]:
    it = iter(loader)
    batches = [next(it) for _ in range(n)]
    del it
    return batches


def test_mixed_loader_end_to_end_with_two_workers(caplog: pytest.LogCaptureFixture) -> None:
    sources = [ListDataset("mj", 23), ListDataset("st", 11)]
    transform = ImageTransform(32, 64, channels=1, keep_ratio=True, augment="strong")
    with caplog.at_level(logging.INFO, logger="strkit"):
        loader = build_mixed_loader(sources, [0.75, 0.25], 8, transform, num_workers=2, seed=7)
    assert "batch of 8: mj 6, st 2" in caplog.text
    batches = _take(loader, 5)
    for images, labels in batches:
        assert images.shape == (8, 1, 32, 64) and images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1
        assert sum(label.startswith("mj:") for label in labels) == 6
    sampler = loader.batch_sampler
    expected = [[f"{'mj' if i < 23 else 'st'}:{i if i < 23 else i - 23}" for i in sampler.batch(s)]
                for s in range(5)]
    assert [labels for _, labels in batches] == expected

    # Same configuration, same augmentation; workers are not clones of each other.
    again = _take(build_mixed_loader(sources, [0.75, 0.25], 8, transform, num_workers=2, seed=7), 5)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    plain = ImageTransform(32, 64, channels=1, keep_ratio=True)
    assert not torch.equal(batches[0][0][0], plain(sources[0][int(sampler.batch(0)[0])][0]))


def test_workers_draw_different_augmentations() -> None:
    same = ListDataset("same", 16)
    same.items = [(same.items[0][0], f"same:{i}") for i in range(16)]  # one image, 16 times
    transform = ImageTransform(32, 64, augment="strong", seed=0)
    (first, _), (second, _) = _take(build_mixed_loader([same], [1], 8, transform, num_workers=2), 2)
    # Batch 0 comes from worker 0 and batch 1 from worker 1: forked generators would repeat each other.
    assert not torch.equal(first, second)


def test_mixed_loader_resume_and_zero_workers_match() -> None:
    sources = [ListDataset("a", 9), ListDataset("b", 14)]
    transform = ImageTransform(32, 64, channels=3)
    full = _take(build_mixed_loader(sources, [1, 1], 4, transform, num_workers=0, seed=2), 6)
    resumed = _take(build_mixed_loader(sources, [1, 1], 4, transform, num_workers=0, seed=2,
                                       start_step=4), 2)
    for (xa, la), (xb, lb) in zip(full[4:], resumed, strict=True):
        assert la == lb and torch.equal(xa, xb)


def test_augmented_batches_do_not_depend_on_workers_or_resume() -> None:
    """Each sample's augmentation is seeded from (seed, rank, step, position): 0 or 2 workers, from the start
    or resumed at step 3, batch s is the same tensor."""
    sources = [ListDataset("a", 9), ListDataset("b", 14)]
    transform = ImageTransform(32, 64, channels=3, augment="strong")
    zero = _take(build_mixed_loader(sources, [1, 1], 4, transform, num_workers=0, seed=2), 5)
    two = _take(build_mixed_loader(sources, [1, 1], 4, transform, num_workers=2, seed=2), 5)
    resumed = _take(build_mixed_loader(sources, [1, 1], 4, transform, num_workers=2, seed=2, start_step=3), 2)
    for (xa, la), (xb, lb) in zip(zero, two, strict=True):
        assert la == lb and torch.equal(xa, xb)
    for (xa, la), (xb, lb) in zip(zero[3:], resumed, strict=True):
        assert la == lb and torch.equal(xa, xb)
    other_seed = _take(build_mixed_loader(sources, [1, 1], 4, transform, num_workers=0, seed=3), 1)
    assert not torch.equal(zero[0][0], other_seed[0][0])


def test_mixed_loader_ranks_read_disjoint_samples() -> None:
    sources = [ListDataset("a", 20)]
    transform = ImageTransform(32, 64)
    seen = [{label for _, labels in _take(build_mixed_loader(sources, [1], 5, transform, num_workers=0,
                                                             seed=1, rank=r, world_size=2), 2)
             for label in labels} for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 10 and not seen[0] & seen[1]


def test_eval_loader_in_order_with_partial_last_batch() -> None:
    dataset = ListDataset("eval", 10)
    loader = build_eval_loader(dataset, ImageTransform(32, 64), batch_size=4, num_workers=0)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert [label for _, labels in batches for label in labels] == [f"eval:{i}" for i in range(10)]
    assert batches[-1][0].shape == (2, 1, 32, 64)
    assert math.isclose(float(batches[0][0][0].mean()),
                        float(ImageTransform(32, 64)(dataset[0][0]).mean()), rel_tol=1e-6)


def test_crop_concatenation_resumes_exactly_and_ignores_workers() -> None:
    """A source with its own randoms (crop concatenation) draws them from the sample seed: the pairs of batch s
    are the same with 0 or 2 workers and after a resume at step 3."""
    from strkit.data.concat_augment import ConcatAugment

    def sources() -> list:
        return [ConcatAugment(ListDataset("a", 9), p=0.5, max_aspect=20, max_length=25, seed=1), ListDataset("b", 14)]

    transform = ImageTransform(32, 96, channels=3, keep_ratio=True)
    zero = _take(build_mixed_loader(sources(), [1, 1], 4, transform, num_workers=0, seed=2), 6)
    two = _take(build_mixed_loader(sources(), [1, 1], 4, transform, num_workers=2, seed=2), 6)
    resumed = _take(build_mixed_loader(sources(), [1, 1], 4, transform, num_workers=2, seed=2, start_step=3), 3)
    labels = [label for _, batch in zero for label in batch]
    assert any(label.count("a:") == 2 for label in labels)  # some pairs were formed
    for (xa, la), (xb, lb) in zip(zero, two, strict=True):
        assert la == lb and torch.equal(xa, xb)
    for (xa, la), (xb, lb) in zip(zero[3:], resumed, strict=True):
        assert la == lb and torch.equal(xa, xb)
