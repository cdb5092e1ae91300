"""Seed spread and the paired bootstrap of KD minus baseline (mtkd/report/intervals.py),
checked against independent computations: numpy, scikit-learn/scipy by hand, a slow
loop over replicates with the scalar metric functions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from mtkd.metrics import METRICS, compute_task_metrics, mean_reciprocal_rank, task_score
from mtkd.report.intervals import (
    PairedTask,
    mean_std,
    paired_bootstrap,
    resample_counts,
    resampled_metric,
)
from mtkd.tasks.spec import TaskSpec

BINARY = TaskSpec(name="sst2", type="classification", labels=("negative", "positive"))
THREE = TaskSpec(name="mnli", type="pair_classification", labels=("e", "n", "c"),
                 metrics=("accuracy", "f1", "mcc"))
STSB = TaskSpec(name="stsb", type="regression")
QNLI = TaskSpec(name="qnli", type="ranking")


def one_hot(classes: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(classes), width))
    out[np.arange(len(classes)), classes] = 1.0
    return out


def noisy_classes(rng: np.random.Generator, labels: np.ndarray, right: float,
                  width: int) -> np.ndarray:
    """One-hot outputs that are right on about a share ``right`` of the rows."""
    wrong = rng.random(len(labels)) > right
    guess = np.where(wrong, rng.integers(0, width, len(labels)), labels)
    return one_hot(guess, width)


# ------------------------------------------------------------------------------ mean ± std


def test_mean_std_is_numpys_sample_std() -> None:
    values = [71.3, 72.9, 70.4]
    got = mean_std(values)
    assert got["mean"] == pytest.approx(np.mean(values))
    assert got["std"] == pytest.approx(np.std(values, ddof=1))
    assert got["n"] == 3
    assert mean_std([70.0]) == {"mean": 70.0, "std": None, "n": 1}


# ------------------------------------------------------------------- vectorised metrics


@pytest.mark.filterwarnings("ignore:A single label was found")  # sklearn, on index[0]
@pytest.mark.parametrize("name", ["accuracy", "p@1", "f1", "mcc", "pearson", "spearman"])
def test_resampled_metrics_equal_the_scalar_functions_on_every_resample(name: str) -> None:
    rng = np.random.default_rng(1)
    n = 40
    if name in ("pearson", "spearman"):
        labels = np.round(rng.normal(size=n), 1)  # ties, for spearman's average ranks
        predictions = np.round(labels + rng.normal(scale=0.8, size=n), 1)
    else:
        labels = rng.integers(0, 3 if name != "f1" else 2, n)
        predictions = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 3, n))
    index = rng.integers(0, n, size=(30, n))
    index[0] = 0  # one resample of a single row repeated: constant on both sides
    got = resampled_metric(name, predictions, labels, resample_counts(index, n))
    want = [METRICS[name](predictions[i], labels[i]) for i in index]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_resampled_f1_is_binary_for_two_classes_and_macro_otherwise() -> None:
    rng = np.random.default_rng(2)
    labels, predictions = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    index = rng.integers(0, 50, size=(10, 50))
    macro = resampled_metric("f1", predictions, labels, resample_counts(index, 50),
                             num_classes=3)
    want = [100 * skm.f1_score(labels[i], predictions[i], average="macro", zero_division=0)
            for i in index]
    np.testing.assert_allclose(macro, want, atol=1e-9)
    two_l, two_p = labels % 2, predictions % 2
    binary = resampled_metric("f1", two_p, two_l, resample_counts(index, 50), num_classes=2)
    want = [100 * skm.f1_score(two_l[i], two_p[i], zero_division=0) for i in index]
    np.testing.assert_allclose(binary, want, atol=1e-9)


def test_resampled_mrr_equals_the_scalar_function() -> None:
    rng = np.random.default_rng(3)
    scores, labels = rng.normal(size=(25, 4)), rng.integers(0, 4, 25)
    index = rng.integers(0, 25, size=(12, 25))
    got = resampled_metric("mrr", None, labels, resample_counts(index, 25), scores=scores)
    want = [mean_reciprocal_rank(scores[i], labels[i]) for i in index]
    np.testing.assert_allclose(got, want, atol=1e-9)


# -------------------------------------------------------------------------- the bootstrap


def slow_bootstrap(tasks: dict[str, PairedTask], samples: int, seed: int) -> dict[str, list]:
    """The same resampling, one replicate at a time, with compute_task_metrics (the scalar
    metric functions) on gathered rows: an independent implementation."""
    rng = np.random.default_rng(seed)
    seeds = len(next(iter(tasks.values())).kd)
    seed_index = rng.integers(0, seeds, size=(samples, seeds))
    per_task: dict[str, np.ndarray] = {}
    for name in sorted(tasks):
        task = tasks[name]
        n = len(task.labels)
        index = rng.integers(0, n, size=(samples, n))  # one chunk: n * samples is small
        gains = []
        for b in range(samples):
            rows = index[b]

            def score(outputs: np.ndarray, rows: np.ndarray = rows,
                      task: PairedTask = task) -> float:
                return task_score(compute_task_metrics(task.spec, outputs[rows],
                                                       task.labels[rows]))

            gains.append(np.mean([score(task.kd[s]) - score(task.baseline[s])
                                  for s in seed_index[b]]))
        per_task[name] = np.array(gains)
    average = np.mean(list(per_task.values()), axis=0)
    out = {name: list(np.percentile(g, [2.5, 97.5])) for name, g in per_task.items()}
    out["average"] = list(np.percentile(average, [2.5, 97.5]))
    return out


def two_tasks(seeds: int = 2) -> dict[str, PairedTask]:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 60)
    gold = np.round(rng.normal(size=50), 2)
    return {
        "sst2": PairedTask(BINARY, labels, [noisy_classes(rng, labels, 0.85, 2)
                                            for _ in range(seeds)],
                           [noisy_classes(rng, labels, 0.75, 2) for _ in range(seeds)]),
        "stsb": PairedTask(STSB, gold, [gold + rng.normal(scale=0.5, size=50)
                                        for _ in range(seeds)],
                           [gold + rng.normal(scale=0.7, size=50) for _ in range(seeds)]),
    }


def test_the_interval_equals_an_independent_loop_over_replicates() -> None:
    tasks = two_tasks()
    got = paired_bootstrap(tasks, samples=60, seed=7)
    want = slow_bootstrap(tasks, samples=60, seed=7)
    for name in ("sst2", "stsb"):
        assert [got["tasks"][name]["low"], got["tasks"][name]["high"]] == pytest.approx(
            want[name], abs=1e-8)
    assert [got["average"]["low"], got["average"]["high"]] == pytest.approx(
        want["average"], abs=1e-8)
    assert (got["samples"], got["seeds"], got["level"]) == (60, 2, 95.0)


def test_the_point_estimate_is_the_difference_of_seed_means_by_hand() -> None:
    tasks = two_tasks()
    got = paired_bootstrap(tasks, samples=10, seed=0)
    sst2 = tasks["sst2"]

    def sst2_score(outputs: np.ndarray) -> float:
        p = outputs.argmax(axis=1)
        return (100 * skm.accuracy_score(sst2.labels, p)
                + 100 * skm.f1_score(sst2.labels, p)) / 2

    def stsb_score(outputs: np.ndarray) -> float:
        y = tasks["stsb"].labels
        return 50 * (stats.pearsonr(outputs, y)[0] + stats.spearmanr(outputs, y)[0])

    gains = {"sst2": np.mean([sst2_score(o) for o in sst2.kd])
             - np.mean([sst2_score(o) for o in sst2.baseline]),
             "stsb": np.mean([stsb_score(o) for o in tasks["stsb"].kd])
             - np.mean([stsb_score(o) for o in tasks["stsb"].baseline])}
    for name, gain in gains.items():
        assert got["tasks"][name]["gain"] == pytest.approx(gain)
    assert got["average"]["gain"] == pytest.approx(np.mean(list(gains.values())))


def test_identical_predictions_give_exactly_zero() -> None:
    """The pairing: the same resampled rows for KD and baseline, so identical runs differ
    by exactly 0 on every replicate."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 80)
    runs = [noisy_classes(rng, labels, 0.6, 3) for _ in range(3)]
    got = paired_bootstrap({"mnli": PairedTask(THREE, labels, runs, list(runs))}, 200, seed=1)
    assert got["tasks"]["mnli"] == {"gain": 0.0, "low": 0.0, "high": 0.0,
                                    "excludes_zero": False}


def test_equally_good_runs_give_an_interval_around_zero() -> None:
    """KD and baseline draw their errors from the same distribution: the interval holds 0
    and is roughly symmetric about it."""
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 400)
    kd = [noisy_classes(rng, labels, 0.8, 2) for _ in range(3)]
    base = [noisy_classes(rng, labels, 0.8, 2) for _ in range(3)]
    got = paired_bootstrap({"sst2": PairedTask(BINARY, labels, kd, base)}, 2000, seed=3)
    row = got["tasks"]["sst2"]
    assert row["low"] < 0 < row["high"] and not row["excludes_zero"]
    centre = (row["low"] + row["high"]) / 2
    assert abs(centre - row["gain"]) < 0.25 * (row["high"] - row["low"])


def test_kd_right_where_the_baseline_is_wrong_gives_an_interval_above_zero() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 100)
    base = [one_hot(np.where(np.arange(100) % 4 == 0, 1 - labels, labels), 2)]
    kd = [one_hot(labels, 2)]  # right everywhere, so also where the baseline is wrong
    got = paired_bootstrap({"sst2": PairedTask(BINARY, labels, kd, base)}, 1000, seed=0)
    row = got["tasks"]["sst2"]
    assert row["low"] > 0 and row["excludes_zero"]
    assert got["average"]["excludes_zero"]
    assert got["seeds"] == 1  # one seed: only the examples are resampled


def test_fixed_seed_is_reproducible_and_another_seed_differs() -> None:
    tasks = two_tasks(seeds=3)
    first, again = paired_bootstrap(tasks, 300, seed=11), paired_bootstrap(tasks, 300, seed=11)
    assert first == again
    assert paired_bootstrap(tasks, 300, seed=12)["average"] != first["average"]


def test_seed_resampling_widens_the_interval_when_seeds_disagree() -> None:
    """Seeds that disagree (one seed's KD gains, the other's loses) widen the interval
    beyond what resampling examples alone gives."""
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 300)
    good, bad = one_hot(labels, 2), one_hot(1 - labels, 2)
    mid = [noisy_classes(rng, labels, 0.5, 2) for _ in range(2)]
    spread = paired_bootstrap({"sst2": PairedTask(BINARY, labels, [good, bad], mid)}, 500, 0)
    row = spread["tasks"]["sst2"]
    assert row["low"] < -20 and row["high"] > 20  # the seed draw [bad, bad] or [good, good]


def test_ranking_task_with_mrr_and_unlabelled_rows() -> None:
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 3, 40)
    labels[:5] = -1  # unlabelled test rows are left out, as compute_task_metrics does
    kd, base = [rng.normal(size=(40, 3))], [rng.normal(size=(40, 3))]
    got = paired_bootstrap({"qnli": PairedTask(QNLI, labels, kd, base)}, 50, seed=0)
    want = (task_score(compute_task_metrics(QNLI, kd[0], labels))
            - task_score(compute_task_metrics(QNLI, base[0], labels)))
    assert got["tasks"]["qnli"]["gain"] == pytest.approx(want)
    assert got["tasks"]["qnli"]["low"] <= got["tasks"]["qnli"]["high"]


def test_unpaired_runs_are_refused() -> None:
    labels = np.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match="pairs"):
        paired_bootstrap({"sst2": PairedTask(BINARY, labels, [one_hot(labels, 2)], [])})
