"""The multi-task batch sampler: proportions, determinism, sharding, resume, bucketing."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from mtkd.config.schema import SamplingConfig
from mtkd.data.sampler import Batch, MultiTaskBatchSampler, padding_fraction

SIZES = {"big": 1000, "mid": 330, "small": 45}


def make_lengths(sizes: dict[str, int] = SIZES, seed: int = 0) -> dict[str, list[int]]:
    """Skewed, realistic token lengths: lognormal, clipped to 5..128."""
    rng = np.random.default_rng(seed)
    return {
        t: np.clip(rng.lognormal(3.2, 0.6, n), 5, 128).astype(int).tolist()
        for t, n in sizes.items()
    }


def per_task(batches: list[Batch]) -> Counter:
    return Counter(b.task for b in batches)


@pytest.mark.parametrize("bucket", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_proportional_uses_every_example_once(bucket: bool, drop_last: bool) -> None:
    lengths = make_lengths()
    s = MultiTaskBatchSampler(lengths, 32, bucket_by_length=bucket, drop_last=drop_last, seed=3)
    batches = s.batches(0)
    assert len(batches) == len(s)
    rounding = math.floor if drop_last else math.ceil
    assert per_task(batches) == {t: rounding(n / 32) for t, n in SIZES.items()}
    for task, n in SIZES.items():
        rows = [i for b in batches if b.task == task for i in b.indices]
        assert len(rows) == len(set(rows))
        assert len(rows) == (n // 32 * 32 if drop_last else n)
        assert set(rows) <= set(range(n))
    sizes = [len(b.indices) for b in batches]
    assert max(sizes) == 32 and (min(sizes) == 32 if drop_last else sum(sizes) == 1375)
    # tasks are interleaved, not one after the other
    assert len({b.task for b in batches[:20]}) > 1


def test_temperature_zero_is_uniform_and_one_is_proportional() -> None:
    lengths = make_lengths()
    prop = MultiTaskBatchSampler(lengths, 32)
    total = len(prop)
    one = MultiTaskBatchSampler(lengths, 32, strategy="temperature", temperature=1.0)
    counts = per_task(one.batches(0))
    assert sum(counts.values()) == total
    for t in SIZES:
        assert abs(counts[t] - prop.task_batch_counts[t]) <= 1
    zero = MultiTaskBatchSampler(lengths, 32, strategy="temperature", temperature=0.0)
    counts = per_task(zero.batches(0))
    assert sum(counts.values()) == total
    assert max(counts.values()) - min(counts.values()) <= 1
    # the small task (2 batches per pass) is oversampled from fresh passes: every example is
    # used, each about equally often
    used = Counter(i for b in zero.batches(0) if b.task == "small" for i in b.indices)
    assert set(used) == set(range(45))
    assert max(used.values()) - min(used.values()) <= 1


def test_temperature_half_is_between() -> None:
    counts = MultiTaskBatchSampler(make_lengths(), 32, strategy="temperature",
                                   temperature=0.5).task_batch_counts
    assert counts["small"] > 2 and counts["big"] < 32
    assert counts["big"] > counts["mid"] > counts["small"]


def test_capped() -> None:
    s = MultiTaskBatchSampler(make_lengths(), 32, strategy="capped", cap=5, seed=1)
    assert per_task(s.batches(0)) == {"big": 5, "mid": 5, "small": 2}
    rows = [i for b in s.batches(0) if b.task == "big" for i in b.indices]
    assert len(rows) == len(set(rows))  # no repeats within the epoch
    other = [i for b in s.batches(1) if b.task == "big" for i in b.indices]
    assert set(rows) != set(other)  # another epoch draws other examples


def test_from_config() -> None:
    cfg = SamplingConfig(strategy="capped", cap=3, bucket_by_length=False)
    s = MultiTaskBatchSampler.from_config(make_lengths(), 16, cfg, seed=4)
    assert s.strategy == "capped" and s.cap == 3 and not s.bucket_by_length and s.seed == 4
    assert len(s) == 9


def test_deterministic_in_seed_and_epoch() -> None:
    lengths = make_lengths()
    a = MultiTaskBatchSampler(lengths, 32, seed=7)
    b = MultiTaskBatchSampler(lengths, 32, seed=7)
    assert a.batches(0) == b.batches(0)
    assert a.batches(5) == b.batches(5)
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != MultiTaskBatchSampler(lengths, 32, seed=8).batches(0)
    # a task's batches do not depend on which other tasks exist
    alone = MultiTaskBatchSampler({"mid": lengths["mid"]}, 32, seed=7).batches(0)
    assert sorted(map(tuple, (x.indices for x in alone))) == sorted(
        tuple(x.indices) for x in a.batches(0) if x.task == "mid"
    )


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("strategy", ["proportional", "temperature"])
def test_shards_are_disjoint_and_equal(shards: int, strategy: str) -> None:
    lengths = make_lengths()
    kw = {"seed": 2, "strategy": strategy, "temperature": 0.5}
    whole = MultiTaskBatchSampler(lengths, 32, **kw).batches(3)
    parts = [
        MultiTaskBatchSampler(lengths, 32, num_shards=shards, shard_index=i, **kw).batches(3)
        for i in range(shards)
    ]
    assert len({len(p) for p in parts}) == 1
    # Each task loses fewer than N batches to the grouping.
    tasks = {b.task for b in whole}
    assert len(whole) - len(tasks) * (shards - 1) <= sum(len(p) for p in parts) <= len(whole)
    # At every step all shards train on the same task (one global batch of that task).
    for step in zip(*parts, strict=True):
        assert len({b.task for b in step}) == 1
    # Every shard's batches are batches of the unsharded epoch's passes.
    whole_set = {(b.task, tuple(b.indices)) for b in whole}
    assert all((b.task, tuple(b.indices)) in whole_set for p in parts for b in p)
    if strategy == "proportional":  # examples are unique within the epoch, so across shards
        seen = [(b.task, i) for p in parts for b in p for i in b.indices]
        assert len(seen) == len(set(seen))
        epoch = {(b.task, i) for b in whole for i in b.indices}
        assert set(seen) <= epoch


def test_bad_arguments() -> None:
    lengths = make_lengths()
    for kw in ({"num_shards": 2, "shard_index": 2}, {"strategy": "capped"},
               {"strategy": "nope"}, {"temperature": 2.0}, {"seed": -1}):
        with pytest.raises(ValueError):
            MultiTaskBatchSampler(lengths, 32, **kw)
    with pytest.raises(ValueError, match="without training examples"):
        MultiTaskBatchSampler({"a": [], "b": [3]}, 32)
    with pytest.raises(ValueError, match="no task has"):
        MultiTaskBatchSampler({"a": [3]}, 32, num_shards=2)


@pytest.mark.parametrize("k", [0, 1, 11, 21, 22])
def test_resume_continues_at_the_exact_batch(k: int) -> None:
    lengths = make_lengths()
    kw = {"seed": 11, "num_shards": 2, "shard_index": 1}
    run = MultiTaskBatchSampler(lengths, 32, **kw)
    assert len(run) == 22  # (32 + 11 + 2) // 2
    run.set_epoch(2)
    it = iter(run)
    first = [next(it) for _ in range(k)]
    state = json.loads(json.dumps(run.state_dict()))  # survives a checkpoint round trip
    assert state["epoch"] == 2 and state["position"] == k

    resumed = MultiTaskBatchSampler(lengths, 32, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert first + rest == run.batches(2)
    assert rest == list(run.iter_from(2, k))
    assert resumed.state_dict()["epoch"] == 3 and resumed.state_dict()["position"] == 0
    assert list(resumed) == run.batches(3)  # then the next epoch, whole


def test_resume_with_other_settings_warns() -> None:
    state = MultiTaskBatchSampler(make_lengths(), 32, seed=1).state_dict()
    other = MultiTaskBatchSampler(make_lengths(), 16, seed=1)
    with pytest.warns(UserWarning, match="batch_size"):
        other.load_state_dict(state)


def test_bucketing_cuts_padding() -> None:
    lengths = make_lengths({"a": 3000, "b": 800})
    plain = MultiTaskBatchSampler(lengths, 32, bucket_by_length=False, seed=0)
    bucketed = MultiTaskBatchSampler(lengths, 32, bucket_by_length=True, seed=0)
    naive = padding_fraction(plain.batches(0), lengths)
    tight = padding_fraction(bucketed.batches(0), lengths)
    assert naive > 0.3
    assert tight < 0.5 * naive
    # bucketed batches are still shuffled: neither in length order nor grouped by task
    maxima = [max(lengths[b.task][i] for i in b.indices) for b in bucketed.batches(0)]
    assert maxima != sorted(maxima)


def test_padding_fraction() -> None:
    lengths = {"a": [1, 3, 4, 4]}
    assert padding_fraction([Batch("a", [0, 1])], lengths) == pytest.approx(2 / 6)
    assert padding_fraction([Batch("a", [2, 3])], lengths) == 0.0
    assert padding_fraction([], lengths) == 0.0
