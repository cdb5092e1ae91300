"""Soft-target aggregation (mtkd.soft.aggregate) against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtkd.errors import DataError
from mtkd.padding import PAD_SCORE
from mtkd.soft.aggregate import (
    SoftTargets,
    aggregate,
    check_targets,
    softmax,
    stack_members,
)

LN2, LN3, LN4, LN5 = math.log(2), math.log(3), math.log(4), math.log(5)
SQ3 = math.sqrt(3.0)
UIDS = ["a", "b"]


def agg(stacked: list | np.ndarray, method: str = "mean_prob", temperature: float = 1.0,
        uids: list[str] | None = None) -> SoftTargets:
    arr = np.asarray(stacked, dtype=np.float64)
    return aggregate(arr, uids if uids is not None else UIDS, regression=False, method=method,
                     temperature=temperature)


def close(actual: np.ndarray | None, expected: list, tol: float = 1e-9) -> None:
    assert actual is not None
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), rtol=0, atol=tol)


def explicit_softmax(x: np.ndarray) -> np.ndarray:
    """Independent reference: exp(x - max) / sum, over the last axis."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# Two members, two examples, two classes (member axis first: [M, N, K]).
#   member 0: a -> [0, ln 3]  probs [1, 3]/4 = [0.25, 0.75]
#             b -> [ln 3, 0]  probs [0.75, 0.25]
#   member 1: a -> [0, 0]     probs [0.5, 0.5]
#             b -> [0, 0]     probs [0.5, 0.5]
TWO = [[[0.0, LN3], [LN3, 0.0]],
       [[0.0, 0.0], [0.0, 0.0]]]


# ----------------------------------------------------------------------------- softmax


def test_softmax_by_hand() -> None:
    # [0, ln 3] -> [1, 3] / 4
    close(softmax(np.array([0.0, LN3])), [0.25, 0.75])
    # T = 2: softmax([0, ln3 / 2]) -> [1, sqrt 3] / (1 + sqrt 3) = [0.366025, 0.633975]
    close(softmax(np.array([0.0, LN3]), temperature=2.0), [1 / (1 + SQ3), SQ3 / (1 + SQ3)])
    # padding: [0, ln 3, -inf] -> [0.25, 0.75, 0]
    out = softmax(np.array([0.0, LN3, -np.inf]))
    close(out, [0.25, 0.75, 0.0])
    assert out[2] == 0.0


# ----------------------------------------------------------------------------- mean_prob


def test_mean_prob_two_members_by_hand() -> None:
    t = agg(TWO)
    # a: ([0.25, 0.75] + [0.5, 0.5]) / 2 = [0.375, 0.625]
    # b: ([0.75, 0.25] + [0.5, 0.5]) / 2 = [0.625, 0.375]
    close(t.probs, [[0.375, 0.625], [0.625, 0.375]])
    assert t.uids == UIDS
    assert t.score is None
    assert t.num_members == 2
    # .logits = mean member logits: a: [0, ln3 / 2], b: [ln3 / 2, 0]
    close(t.logits, [[0.0, LN3 / 2], [LN3 / 2, 0.0]])


def test_mean_prob_three_members_three_classes_by_hand() -> None:
    stacked = [
        # m0: a [0, ln2, ln5] -> [1, 2, 5] / 8 = [0.125, 0.25, 0.625]; b [0, 0, 0] -> 1/3 each
        [[0.0, LN2, LN5], [0.0, 0.0, 0.0]],
        # m1: a [ln2, ln2, ln4] -> [2, 2, 4] / 8 = [0.25, 0.25, 0.5]; b [ln3, 0, 0] -> [.6,.2,.2]
        [[LN2, LN2, LN4], [LN3, 0.0, 0.0]],
        # m2: a [0, 0, 0] -> 1/3 each; b [0, 0, ln3] -> [1, 1, 3] / 5 = [0.2, 0.2, 0.6]
        [[0.0, 0.0, 0.0], [0.0, 0.0, LN3]],
    ]
    t = agg(stacked)
    # a: [(0.125 + 0.25 + 1/3) / 3, (0.25 + 0.25 + 1/3) / 3, (0.625 + 0.5 + 1/3) / 3]
    #  = [0.708333 / 3, 0.833333 / 3, 1.458333 / 3] = [0.236111, 0.277778, 0.486111]
    # b: [(1/3 + 0.6 + 0.2) / 3, (1/3 + 0.2 + 0.2) / 3, (1/3 + 0.2 + 0.6) / 3]
    #  = [1.133333 / 3, 0.733333 / 3, 1.133333 / 3] = [0.377778, 0.244444, 0.377778]
    close(t.probs, [[17 / 72, 20 / 72, 35 / 72], [17 / 45, 11 / 45, 17 / 45]])
    assert t.num_members == 3
    # logits a: [(0 + ln2 + 0) / 3, (ln2 + ln2 + 0) / 3, (ln5 + ln4 + 0) / 3]
    close(t.logits, [[LN2 / 3, 2 * LN2 / 3, (LN5 + LN4) / 3], [LN3 / 3, 0.0, LN3 / 3]])


def test_mean_prob_temperature_two() -> None:
    t = agg(TWO, temperature=2.0)
    # m0 a at T=2: softmax([0, ln3 / 2]) = [1, sqrt3] / (1 + sqrt3) = [0.366025, 0.633975]
    # mean with [0.5, 0.5]: [0.433013, 0.566987]; b is the mirror image
    lo = (1 / (1 + SQ3) + 0.5) / 2
    close(t.probs, [[lo, 1 - lo], [1 - lo, lo]])
    # logits stay the raw (unscaled) mean member logits
    close(t.logits, [[0.0, LN3 / 2], [LN3 / 2, 0.0]])


def test_temperature_flattens() -> None:
    # higher temperature -> closer to uniform; T = 1 vs T = 2 on the same input
    p1 = agg(TWO, temperature=1.0).probs
    p2 = agg(TWO, temperature=2.0).probs
    assert p1 is not None and p2 is not None
    assert np.all(np.abs(p2 - 0.5) < np.abs(p1 - 0.5))


# ----------------------------------------------------------------------------- other methods


def test_mean_logit_by_hand() -> None:
    t = agg(TWO, method="mean_logit")
    # a: mean logits [0, ln3 / 2] -> [1, sqrt3] / (1 + sqrt3) = [0.366025, 0.633975]
    # b: mirror -> [0.633975, 0.366025]; differs from mean_prob's [0.375, 0.625]
    lo = 1 / (1 + SQ3)
    close(t.probs, [[lo, 1 - lo], [1 - lo, lo]])
    close(t.logits, [[0.0, LN3 / 2], [LN3 / 2, 0.0]])


def test_mean_logit_temperature() -> None:
    t = agg(TWO, method="mean_logit", temperature=2.0)
    # a: softmax([0, ln3 / 4]) = [1, 3^(1/4)] / (1 + 3^(1/4))
    r = 3 ** 0.25  # 1.316074
    close(t.probs, [[1 / (1 + r), r / (1 + r)], [r / (1 + r), 1 / (1 + r)]])


def test_geometric_by_hand() -> None:
    t = agg(TWO, method="geometric")
    # a: p = [0.25, 0.75], q = [0.5, 0.5]
    #   sqrt(p1 q1) = sqrt(0.125) = 0.353553, sqrt(p2 q2) = sqrt(0.375) = 0.612372
    #   normalised: 0.353553 / 0.965926 = 0.366025, 0.612372 / 0.965926 = 0.633975
    g1, g2 = math.sqrt(0.25 * 0.5), math.sqrt(0.75 * 0.5)
    close(t.probs, [[g1 / (g1 + g2), g2 / (g1 + g2)], [g2 / (g1 + g2), g1 / (g1 + g2)]])
    assert t.probs is not None
    assert t.probs[0, 0] == pytest.approx(0.366025, abs=1e-6)
    close(t.logits, [[0.0, LN3 / 2], [LN3 / 2, 0.0]])


def test_geometric_three_members_by_hand() -> None:
    # one example, three classes: p = [0.125, 0.25, 0.625], q = [0.25, 0.25, 0.5],
    # r = [0.2, 0.2, 0.6] (logits [0, ln2, ln5], [ln2, ln2, ln4], [0, 0, ln3])
    stacked = [[[0.0, LN2, LN5]], [[LN2, LN2, LN4]], [[0.0, 0.0, LN3]]]
    t = agg(stacked, method="geometric", uids=["x"])
    g = [(0.125 * 0.25 * 0.2) ** (1 / 3), (0.25 * 0.25 * 0.2) ** (1 / 3),
         (0.625 * 0.5 * 0.6) ** (1 / 3)]  # [0.184202, 0.232079, 0.572357]
    close(t.probs, [[x / sum(g) for x in g]])


def test_unknown_method_rejected() -> None:
    with pytest.raises(ValueError, match="median"):
        agg(TWO, method="median")


# ----------------------------------------------------------------------------- regression


def test_regression_mean_score() -> None:
    # members' scores: a: 1.0, 2.0, 4.5 -> 7.5 / 3 = 2.5; b: 0.0, -1.0, 4.0 -> 1.0
    stacked = np.array([[[1.0], [0.0]], [[2.0], [-1.0]], [[4.5], [4.0]]])
    t = aggregate(stacked, UIDS, regression=True, method="mean_prob", temperature=2.0)
    close(t.score, [2.5, 1.0])
    assert t.probs is None
    assert t.logits is None
    assert t.num_members == 3
    assert t.uids == UIDS


# ----------------------------------------------------------------------------- ranking


def ranking_stack() -> np.ndarray:
    # a has 3 candidates, b has 2 -> b padded with PAD_SCORE at position 2
    outputs = [
        {"a": np.array([0.0, LN2, LN5]), "b": np.array([0.0, LN3])},
        {"a": np.array([0.0, 0.0, 0.0]), "b": np.array([LN3, 0.0])},
    ]
    return stack_members(outputs, UIDS, "qnli")


def test_stack_members_pads_with_the_padding_score() -> None:
    stacked = ranking_stack()
    assert stacked.shape == (2, 2, 3)
    assert (stacked[:, 1, 2] == PAD_SCORE).all()
    assert np.isfinite(stacked[:, 0, :]).all()
    assert np.isfinite(stacked[:, 1, :2]).all()


@pytest.mark.parametrize("method", ["mean_prob", "mean_logit", "geometric"])
def test_ranking_padding_gets_zero_probability(method: str) -> None:
    t = agg(ranking_stack(), method=method)
    assert t.probs is not None and t.logits is not None
    assert not np.isnan(t.probs).any()
    assert t.probs[1, 2] == 0.0  # exactly zero, not just small
    assert t.probs[1, :2].sum() == pytest.approx(1.0, abs=1e-12)
    assert t.probs[0].sum() == pytest.approx(1.0, abs=1e-12)
    # b: members [0.25, 0.75] and [0.75, 0.25]; mean_prob -> [0.5, 0.5];
    # mean logits [ln3 / 2, ln3 / 2] -> [0.5, 0.5]; geometric sqrt(.1875) each -> [0.5, 0.5]
    close(t.probs[1], [0.5, 0.5, 0.0])
    # padded logit stays PAD_SCORE, real ones are the mean
    assert t.logits[1, 2] == PAD_SCORE
    close(t.logits[1, :2], [LN3 / 2, LN3 / 2])


def test_ranking_mean_prob_real_row_by_hand() -> None:
    t = agg(ranking_stack())
    # a: ([1, 2, 5] / 8 + [1, 1, 1] / 3) / 2 = ([0.125, 0.25, 0.625] + 1/3) / 2
    #  = [0.229167, 0.291667, 0.479167]
    close(t.probs[0], [(0.125 + 1 / 3) / 2, (0.25 + 1 / 3) / 2, (0.625 + 1 / 3) / 2])


def test_ranking_padding_with_temperature() -> None:
    t = agg(ranking_stack(), temperature=2.0)
    assert t.probs is not None
    assert not np.isnan(t.probs).any()
    assert t.probs[1, 2] == 0.0
    # b at T=2: m0 [0, ln3/2] -> [0.366025, 0.633975], m1 mirror -> mean [0.5, 0.5]
    close(t.probs[1], [0.5, 0.5, 0.0])


# ----------------------------------------------------------------------------- stack_members


def test_stack_members_joins_by_uid_not_row_order() -> None:
    m0 = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    m1_ab = {"a": np.array([5.0, 6.0]), "b": np.array([7.0, 8.0])}
    m1_ba = {"b": np.array([7.0, 8.0]), "a": np.array([5.0, 6.0])}
    expected = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]
    close(stack_members([m0, m1_ab], UIDS, "sst2"), expected, tol=0)
    close(stack_members([m0, m1_ba], UIDS, "sst2"), expected, tol=0)
    # rows follow the requested uid order: b first
    close(stack_members([m0, m1_ba], ["b", "a"], "sst2"),
          [[[3.0, 4.0], [1.0, 2.0]], [[7.0, 8.0], [5.0, 6.0]]], tol=0)


def test_stack_members_ignores_extra_uids() -> None:
    m0 = {"a": np.array([1.0, 2.0]), "zzz": np.array([9.0, 9.0])}
    m1 = {"a": np.array([5.0, 6.0])}
    close(stack_members([m0, m1], ["a"], "sst2"), [[[1.0, 2.0]], [[5.0, 6.0]]], tol=0)


def test_stack_members_missing_uid_names_it() -> None:
    m0 = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    m1 = {"a": np.array([5.0, 6.0])}
    with pytest.raises(DataError, match=r"'b'") as info:
        stack_members([m0, m1], UIDS, "sst2")
    assert "#1" in str(info.value)
    assert "sst2" in str(info.value)


# ----------------------------------------------------------------------------- check_targets


def valid_targets() -> SoftTargets:
    return SoftTargets(UIDS, np.array([[0.375, 0.625], [0.625, 0.375]]), None, None, 2)


def test_check_targets_valid_passes() -> None:
    check_targets(valid_targets(), UIDS, "sst2", "train")
    check_targets(agg(TWO), UIDS, "sst2", "train")
    check_targets(agg(ranking_stack(), method="geometric"), UIDS, "qnli", "train")
    reg = SoftTargets(UIDS, None, None, np.array([2.5, 1.0]), 3)
    check_targets(reg, UIDS, "stsb", "train")


def test_check_targets_missing_uid_names_it() -> None:
    with pytest.raises(DataError, match=r"'c'") as info:
        check_targets(valid_targets(), ["a", "b", "c"], "sst2", "dev")
    assert "sst2" in str(info.value) and "dev" in str(info.value)


def test_check_targets_nan_probs_names_uid() -> None:
    t = SoftTargets(UIDS, np.array([[0.5, 0.5], [np.nan, 0.5]]), None, None, 2)
    with pytest.raises(DataError, match=r"NaN") as info:
        check_targets(t, UIDS, "sst2", "train")
    assert "'b'" in str(info.value)


def test_check_targets_nan_score_names_uid() -> None:
    # regression: score [1.0, NaN] -> the NaN belongs to uid 'b'
    t = SoftTargets(UIDS, None, None, np.array([1.0, np.nan]), 2)
    with pytest.raises(DataError, match=r"NaN") as info:
        check_targets(t, UIDS, "stsb", "train")
    assert "'b'" in str(info.value)


def test_check_targets_nan_from_aggregate() -> None:
    # a NaN member logit propagates into probs and is caught
    stacked = np.array(TWO)
    stacked[1, 0, 0] = np.nan
    t = agg(stacked)
    assert t.probs is not None
    assert np.isnan(t.probs[0]).all() and not np.isnan(t.probs[1]).any()
    with pytest.raises(DataError, match=r"uid 'a' is NaN"):
        check_targets(t, UIDS, "sst2", "train")


def test_check_targets_bad_sum_names_uid() -> None:
    # b sums to 0.6 + 0.6 = 1.2
    t = SoftTargets(UIDS, np.array([[0.5, 0.5], [0.6, 0.6]]), None, None, 2)
    with pytest.raises(DataError, match=r"'b'") as info:
        check_targets(t, UIDS, "sst2", "train")
    assert "1.2" in str(info.value)


def test_check_targets_sum_too_small() -> None:
    # a sums to 0.4 + 0.4 = 0.8
    t = SoftTargets(UIDS, np.array([[0.4, 0.4], [0.5, 0.5]]), None, None, 2)
    with pytest.raises(DataError, match=r"'a'"):
        check_targets(t, UIDS, "sst2", "train")


# ----------------------------------------------------------------------------- property-style


@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 3, 2), (3, 5, 4), (5, 7, 10), (4, 2, 50)])
@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_mean_prob_random_matches_explicit_mean(shape: tuple[int, int, int], scale: float,
                                                temperature: float) -> None:
    rng = np.random.default_rng(1234 + sum(shape))
    stacked = rng.normal(size=shape) * scale
    uids = [f"u{i}" for i in range(shape[1])]
    t = agg(stacked, temperature=temperature, uids=uids)
    assert t.probs is not None and t.logits is not None
    assert t.probs.shape == shape[1:]
    assert not np.isnan(t.probs).any()
    np.testing.assert_allclose(t.probs.sum(axis=-1), 1.0, rtol=0, atol=1e-9)
    explicit = np.mean([explicit_softmax(stacked[m] / temperature) for m in range(shape[0])],
                       axis=0)
    np.testing.assert_allclose(t.probs, explicit, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t.logits, stacked.mean(axis=0), rtol=0, atol=1e-12)
    check_targets(t, uids, "sst2", "train")


@pytest.mark.parametrize("shape", [(2, 3, 2), (3, 5, 4), (5, 7, 10)])
def test_mean_logit_and_geometric_random(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(99 + sum(shape))
    stacked = rng.normal(size=shape) * 3
    uids = [f"u{i}" for i in range(shape[1])]
    ml = agg(stacked, method="mean_logit", uids=uids).probs
    geo = agg(stacked, method="geometric", uids=uids).probs
    assert ml is not None and geo is not None
    np.testing.assert_allclose(ml, explicit_softmax(stacked.mean(axis=0)), rtol=0, atol=1e-12)
    # normalised geometric mean of the member probabilities, computed directly
    probs = np.stack([explicit_softmax(stacked[m]) for m in range(shape[0])])
    g = np.prod(probs, axis=0) ** (1 / shape[0])
    np.testing.assert_allclose(geo, g / g.sum(axis=-1, keepdims=True), rtol=0, atol=1e-12)
    np.testing.assert_allclose(geo.sum(axis=-1), 1.0, rtol=0, atol=1e-9)
