"""Seed spread and a paired bootstrap interval of "KD minus baseline".

Pure functions of arrays; nothing here reads storage.

**Spread over seeds** (:func:`mean_std`): the mean of a score over the seeds' runs and its
sample standard deviation (ddof=1); one seed has no spread.

**KD minus baseline** (:func:`paired_bootstrap`). The gain of distillation is a difference
between two sets of runs that differ in the soft targets only; a single-seed difference of
a few points says little (seed-to-seed spreads of 0.5-1.2 points are usual on small GLUE
tasks). The interval accounts for both sources of noise, examples and seeds:

* one replicate draws, with replacement, S seed indices out of the S paired seeds (student
  seed s is paired with baseline seed s: same initialisation and data order) and, for every
  task, n example indices out of the task's n labelled examples;
* for each task, every resampled seed's KD run and baseline run are scored **on the same
  resampled examples** (the pairing: an example that is hard for one is hard for the
  other, so most of the example-to-example variance cancels), with the task's own metrics
  (``spec.metrics`` or its type's, as :func:`mtkd.metrics.compute_task_metrics`), a task's
  score being the mean of its metrics; the replicate's gain is the mean over the resampled
  seeds of (KD score - baseline score);
* the average over tasks is the mean of the tasks' gains within each replicate (a seed is
  one multi-task run, so the seed indices are shared by all tasks of a replicate);
* over B replicates the 95% interval is the 2.5th and 97.5th percentile (the percentile
  bootstrap); it "excludes 0" when both ends are on the same side of 0.

The point estimate is the plain difference of the mean-over-seeds scores, computed with
the scalar metric functions of :mod:`mtkd.metrics`; the replicates use vectorised
equivalents (:func:`resampled_metric`: weighted sums over the rows, checked against those
functions in the tests).

Sources: B. Efron and R. Tibshirani, *An Introduction to the Bootstrap* (1993), ch. 13
(percentile intervals); P. Koehn, "Statistical Significance Tests for Machine Translation
Evaluation" (EMNLP 2004), the paired bootstrap over test examples; R. Dror, G. Baumer,
S. Shlomov and R. Reichart, "The Hitchhiker's Guide to Testing Statistical Significance in
Natural Language Processing" (ACL 2018), on bootstrap tests for NLP metrics that are not
averages of per-example scores (F1, correlations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtkd.metrics import compute_task_metrics, labelled, predictions_from_outputs, task_score
from mtkd.tasks.spec import TaskSpec

LEVEL = 95.0
"""The interval's coverage, percent."""
CHUNK_ELEMENTS = 1_000_000
"""Replicates x examples held at once (a few float64 arrays of that size), to bound
memory."""


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std" (sample std, ddof=1; None for one value), "n"} of ``values``."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values")
    return {"mean": float(data.mean()),
            "std": float(data.std(ddof=1)) if data.size > 1 else None, "n": int(data.size)}


# ---------------------------------------------------------------------------------------
# Metrics of many resamples at once. A resample is given by its counts: weights[b, i] is
# how often row i was drawn in resample b, so every metric is a weighted sum over the rows
# (matrix products, no gathered copies of the rows).
# ---------------------------------------------------------------------------------------

def resample_counts(index: np.ndarray, n: int) -> np.ndarray:
    """Row indices ``[B, n]`` drawn with replacement -> counts ``[B, n]`` (float64)."""
    rows = index.shape[0]
    flat = (np.arange(rows)[:, None] * n + index).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def _confusion(p: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted confusion matrices ``[B, K, K]`` (true class, predicted class)."""
    k = int(max(p.max(initial=0), y.max(initial=0))) + 1
    codes = np.zeros((len(y), k * k))
    codes[np.arange(len(y)), y * k + p] = 1.0
    return (weights @ codes).reshape(-1, k, k)


def _f1_rows(confusion: np.ndarray, num_classes: int | None) -> np.ndarray:
    """F1 ×100 per resample as :func:`mtkd.metrics.f1`: F1 of class 1 for two classes,
    macro-F1 over the classes present in the resample (predicted or true) otherwise."""
    k = confusion.shape[1]
    if num_classes:
        binary = np.full(confusion.shape[0], num_classes == 2)
    else:  # as the scalar function decides it: every value drawn is 0 or 1
        binary = confusion.sum(axis=(1, 2)) == confusion[:, :2, :2].sum(axis=(1, 2))
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=1) + confusion.sum(axis=2)  # 2tp + fp + fn, per class
    present = denominator > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(present, 2.0 * tp / denominator, 0.0)
    macro = per_class.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    positive = per_class[:, 1] if k > 1 else np.zeros(confusion.shape[0])
    return 100.0 * np.where(binary, positive, macro)


def _mcc_rows(confusion: np.ndarray) -> np.ndarray:
    """Matthews correlation ×100 per resample (sklearn's multi-class formula); 0 when
    undefined."""
    t_sum, p_sum = confusion.sum(axis=2), confusion.sum(axis=1)
    correct = np.trace(confusion, axis1=1, axis2=2)
    samples = confusion.sum(axis=(1, 2))
    cov_ytyp = correct * samples - (t_sum * p_sum).sum(axis=1)
    cov_ypyp = samples ** 2 - (p_sum * p_sum).sum(axis=1)
    cov_ytyt = samples ** 2 - (t_sum * t_sum).sum(axis=1)
    product = cov_ytyt * cov_ypyp
    with np.errstate(invalid="ignore", divide="ignore"):
        value = cov_ytyp / np.sqrt(product)
    return np.where(product > 0, 100.0 * value, 0.0)


def _constant(x: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """Whether the values drawn in each resample are all equal ``[B]``."""
    high = np.where(drawn, x[None, :], -np.inf).max(axis=1)
    low = np.where(drawn, x[None, :], np.inf).min(axis=1)
    return high == low


def _weighted_correlation(x: np.ndarray, y: np.ndarray, weights: np.ndarray,
                          constant: np.ndarray) -> np.ndarray:
    """Pearson ×100 of x and y ``[n]`` or ``[B, n]`` under row weights ``[B, n]``; 0 where
    ``constant`` (either side) or fewer than two rows are drawn."""
    total = weights.sum(axis=1, keepdims=True)

    def centred(v: np.ndarray) -> np.ndarray:
        v = np.broadcast_to(v, weights.shape)
        return v - (weights * v).sum(axis=1, keepdims=True) / total

    xc, yc = centred(x), centred(y)
    sxy = (weights * xc * yc).sum(axis=1)
    sxx, syy = (weights * xc * xc).sum(axis=1), (weights * yc * yc).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
    return np.where(constant | (total[:, 0] < 2), 0.0, 100.0 * r)


def _resampled_ranks(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each row's average rank (1-based, ties averaged, as scipy's rankdata) among the values
    drawn in each resample ``[B, n]`` (a row not drawn gets the rank it would have)."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    inverse = np.empty(len(x), dtype=np.int64)
    inverse[order] = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    # drawn copies of each distinct value, in increasing order of value
    per_value = np.add.reduceat(weights[:, order], starts, axis=1)
    below = np.cumsum(per_value, axis=1) - per_value
    return (below + (per_value + 1.0) / 2.0)[:, inverse]


def resampled_metric(name: str, predictions: np.ndarray | None, labels: np.ndarray,
                     weights: np.ndarray, *, scores: np.ndarray | None = None,
                     num_classes: int | None = None) -> np.ndarray:
    """Metric ``name`` (a key of :data:`mtkd.metrics.METRICS` or ``mrr``) of every
    resample: ``predictions`` and ``labels`` ``[n]`` (labelled rows only), ``weights``
    ``[B, n]`` from :func:`resample_counts`; returns ``[B]`` on the 0-100 scale, equal to
    the scalar metric of the drawn rows. ``scores`` ``[n, K]``: the candidate scores, for
    ``mrr``; ``num_classes`` as for :func:`mtkd.metrics.f1`."""
    y = np.asarray(labels)
    n = weights.sum(axis=1)
    if name == "mrr":
        if scores is None:
            raise ValueError("mrr needs the candidate scores")
        s, right = np.asarray(scores, dtype=np.float64), y.astype(np.int64)
        reciprocal = 1.0 / (1 + (s > s[np.arange(len(right)), right][:, None]).sum(axis=1))
        return 100.0 * (weights @ reciprocal) / n
    if predictions is None:
        raise ValueError(f"{name} needs predictions")
    p = np.asarray(predictions)
    if name in ("accuracy", "p@1"):
        return 100.0 * (weights @ (p == y).astype(np.float64)) / n
    if name in ("f1", "mcc"):
        confusion = _confusion(p.astype(np.int64), y.astype(np.int64), weights)
        return _f1_rows(confusion, num_classes) if name == "f1" else _mcc_rows(confusion)
    if name in ("pearson", "spearman"):
        x, t = p.astype(np.float64), y.astype(np.float64)
        drawn = weights > 0
        constant = _constant(x, drawn) | _constant(t, drawn)
        if name == "spearman":
            x, t = _resampled_ranks(x, weights), _resampled_ranks(t, weights)
        return _weighted_correlation(x, t, weights, constant)
    raise ValueError(f"no resampled version of metric {name!r}")


# ---------------------------------------------------------------------------------------
# The paired bootstrap.
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairedTask:
    """One task's paired runs: ``labels`` ``[N]`` (unlabelled rows are left out) and, per
    paired seed in the same order, the KD run's and the baseline's outputs on the same
    rows (as :func:`mtkd.metrics.predictions_from_outputs` takes them)."""

    spec: TaskSpec
    labels: np.ndarray
    kd: Sequence[np.ndarray]
    baseline: Sequence[np.ndarray]


def _prepared(task: PairedTask) -> dict[str, Any]:
    keep = labelled(task.spec, task.labels)
    if not keep.any():
        raise ValueError(f"{task.spec.name}: no labelled examples")
    if len(task.kd) != len(task.baseline) or not task.kd:
        raise ValueError(f"{task.spec.name}: {len(task.kd)} KD runs for "
                         f"{len(task.baseline)} baseline runs; pairs are needed")
    regression = task.spec.kind.is_regression
    labels = np.asarray(task.labels).reshape(-1)[keep].astype(
        np.float64 if regression else np.int64)

    def side(outputs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(predictions_from_outputs(task.spec, o)[keep], np.asarray(o)[keep])
                for o in outputs]

    return {"labels": labels, "kd": side(task.kd), "baseline": side(task.baseline),
            "metrics": task.spec.metrics or task.spec.kind.metrics,
            "num_classes": len(task.spec.labels) or None}


def _scores(prepared: dict[str, Any], side: str, weights: np.ndarray) -> np.ndarray:
    """Task score (mean of its metrics) of every seed of ``side`` on every resample:
    ``[S, B]``."""
    per_seed = []
    for predictions, outputs in prepared[side]:
        values = [resampled_metric(m, predictions, prepared["labels"], weights, scores=outputs,
                                   num_classes=prepared["num_classes"])
                  for m in prepared["metrics"]]
        per_seed.append(np.mean(values, axis=0))
    return np.stack(per_seed)


def _interval(point: float, replicates: np.ndarray) -> dict[str, Any]:
    low, high = np.percentile(replicates, [(100 - LEVEL) / 2, 100 - (100 - LEVEL) / 2])
    return {"gain": point, "low": float(low), "high": float(high),
            "excludes_zero": bool(low > 0 or high < 0)}


def paired_bootstrap(tasks: Mapping[str, PairedTask], samples: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """KD minus baseline with a 95% paired-bootstrap interval over examples and seeds (the
    method is in the module docstring), per task and on the average over tasks.

    Every task must hold the same number S of paired seeds. ``samples``: B replicates;
    ``seed``: of the resampling (a fixed seed makes the result reproducible). Returns
    {"tasks": {task: {"gain", "low", "high", "excludes_zero"}}, "average": the same,
    "samples": B, "seeds": S, "level": 95.0}; "gain" is the point estimate (the difference
    of the mean-over-seeds scores), "low"/"high" the percentile interval.
    """
    if samples < 1:
        raise ValueError("samples must be >= 1")
    if not tasks:
        raise ValueError("no tasks")
    names = sorted(tasks)
    prepared = {name: _prepared(tasks[name]) for name in names}
    counts = {len(p["kd"]) for p in prepared.values()}
    if len(counts) != 1:
        raise ValueError(f"every task needs the same paired seeds, got counts {sorted(counts)}")
    seeds = counts.pop()
    rng = np.random.default_rng(seed)
    seed_index = rng.integers(0, seeds, size=(samples, seeds))  # shared by all tasks
    gains: dict[str, np.ndarray] = {}
    points: dict[str, float] = {}
    for name in names:
        task, p = tasks[name], prepared[name]
        n = len(p["labels"])
        per_seed = np.empty((seeds, samples))  # KD - baseline of each seed on each replicate
        step = max(1, CHUNK_ELEMENTS // n)
        for start in range(0, samples, step):
            stop = min(samples, start + step)
            weights = resample_counts(rng.integers(0, n, size=(stop - start, n)), n)
            per_seed[:, start:stop] = (_scores(p, "kd", weights)
                                       - _scores(p, "baseline", weights))
        gains[name] = np.take_along_axis(per_seed, seed_index.T, axis=0).mean(axis=0)
        points[name] = (float(np.mean([task_score(compute_task_metrics(task.spec, o, task.labels))
                                       for o in task.kd]))
                        - float(np.mean([task_score(compute_task_metrics(task.spec, o,
                                                                         task.labels))
                                         for o in task.baseline])))
    average = np.mean([gains[name] for name in names], axis=0)
    return {"tasks": {name: _interval(points[name], gains[name]) for name in names},
            "average": _interval(float(np.mean(list(points.values()))), average),
            "samples": samples, "seeds": seeds, "level": LEVEL}
