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
    whole = MultiTaskBatchSampler(lengths, 32, **kw)
    parts = [
        MultiTaskBatchSampler(lengths, 32, num_shards=shards, shard_index=i, **kw).batches(3)
        for i in range(shards)
    ]
    assert len({len(p) for p in parts}) == 1
    # No task loses batches: each gets its count rounded up to a multiple of N.
    got = Counter(b.task for p in parts for b in p)
    assert got == {t: math.ceil(c / shards) * shards
                   for t, c in whole.task_batch_counts.items()}
    # At every step all shards train on the same task (one global batch of that task),
    # and the weights make the shards' equal-weight mean the mean over the step's examples.
    for step in zip(*parts, strict=True):
        assert len({b.task for b in step}) == 1
        examples = sum(len(b.indices) for b in step)
        assert [b.weight for b in step] == pytest.approx(
            [shards * len(b.indices) / examples for b in step])
    if strategy == "proportional":
        # Each task: one whole pass (every example once) plus the batches that complete
        # its last group, taken from its next pass.
        for task, n in SIZES.items():
            seen = Counter(i for p in parts for b in p if b.task == task for i in b.indices)
            assert set(seen) == set(range(n))
            extra = sum(seen.values()) - n
            first_pass = math.ceil(n / 32)
            assert extra <= (got[task] - first_pass) * 32


@pytest.mark.parametrize("shards", [2, 4])
@pytest.mark.parametrize("strategy", ["proportional", "temperature", "capped"])
def test_a_tiny_task_is_never_dropped(shards: int, strategy: str) -> None:
    """60 examples at batch 32 make 2 batches; 4 shards need a group of 4 (the reported
    case: the task got no batch at all and its head stayed untrained)."""
    lengths = make_lengths({"big": 1000, "tiny": 60})
    kw = {"seed": 5, "strategy": strategy, "cap": 3, "num_shards": shards}
    parts = [MultiTaskBatchSampler(lengths, 32, shard_index=i, **kw).batches(0)
             for i in range(shards)]
    tiny = [b for p in parts for b in p if b.task == "tiny"]
    assert len(tiny) == shards  # one group: 2 batches of its pass + recycled ones
    assert {i for b in tiny for i in b.indices} == set(range(60))
    for step in zip(*parts, strict=True):
        if step[0].task == "tiny":
            sizes = [len(b.indices) for b in step]
            assert sum(b.weight for b in step) == pytest.approx(shards)
            assert [b.weight for b in step] == pytest.approx(
                [shards * k / sum(sizes) for k in sizes])


def test_one_shard_weights_are_one() -> None:
    batches = MultiTaskBatchSampler(make_lengths(), 32, seed=1).batches(0)
    assert {b.weight for b in batches} == {1.0}
    assert min(len(b.indices) for b in batches) < 32  # short batches still weigh 1


def test_bad_arguments() -> None:
    lengths = make_lengths()
    for kw in ({"num_shards": 2, "shard_index": 2}, {"strategy": "capped"},
               {"strategy": "nope"}, {"temperature": 2.0}, {"seed": -1}):
        with pytest.raises(ValueError):
            MultiTaskBatchSampler(lengths, 32, **kw)
    with pytest.raises(ValueError, match="without training examples"):
        MultiTaskBatchSampler({"a": [], "b": [3]}, 32)
    with pytest.raises(ValueError, match="no task has a full batch"):
        MultiTaskBatchSampler({"a": [3]}, 32, drop_last=True)
    # one example, two shards: its single batch is completed from the next pass
    two = [MultiTaskBatchSampler({"a": [3]}, 32, num_shards=2, shard_index=i).batches(0)
           for i in range(2)]
    assert two == [[Batch("a", [0], 1.0)], [Batch("a", [0], 1.0)]]


@pytest.mark.parametrize("k", [0, 1, 11, 22, 23])
def test_resume_continues_at_the_exact_batch(k: int) -> None:
    lengths = make_lengths()
    kw = {"seed": 11, "num_shards": 2, "shard_index": 1}
    run = MultiTaskBatchSampler(lengths, 32, **kw)
    assert len(run) == 23  # ceil(32 / 2) + ceil(11 / 2) + ceil(2 / 2)
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
