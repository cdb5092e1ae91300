"""Dev metrics as GLUE reports them, and the scores built from them.

Every metric takes ``(predictions, labels)``, two 1-D arrays of shape ``[N]``, and returns
a Python float **scaled to 0-100** as on the GLUE leaderboard (accuracy 75.0, not 0.75;
MCC and correlations ×100, so they range over -100..100). The metrics are computed with
scikit-learn and scipy:

* ``accuracy``: share of exact matches;
* ``f1``: F1 of the positive class (label 1) for a two-class task, macro-F1 over the
  classes present otherwise; an undefined precision or recall counts as 0;
* ``mcc``: Matthews correlation; 0 when either side is constant;
* ``pearson`` / ``spearman``: correlation of scores; 0.0 (not NaN) when either side is
  constant (e.g. the mean-predicting baseline), or has fewer than two values.

A task's score is the mean of its metrics (GLUE style: STS-B counts
``(pearson + spearman) / 2``), and an experiment's one number is the mean over tasks.
A ranking task that is pairwise in origin (``TaskSpec.pairwise_origin``) also reports
``pair_accuracy`` (:func:`pair_accuracy`), which is left out of the score
(:data:`UNSCORED`), so the score, model selection and lineages are those of p@1 and mrr.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from mtkd.padding import real_candidates
from mtkd.tasks.spec import TaskSpec


def _pair(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as 1-D ``[N]``; ValueError when lengths differ or N is 0."""
    p, y = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.shape[0]} predictions for {y.shape[0]} labels")
    if p.size == 0:
        raise ValueError("no examples to score")
    return p, y


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy ×100 of class predictions ``[N]`` against labels ``[N]``."""
    p, y = _pair(predictions, labels)
    return 100.0 * float(skm.accuracy_score(y, p))


def f1(predictions: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None) -> float:
    """F1 ×100: binary F1 of class 1 for two classes, macro-F1 otherwise.

    ``num_classes`` is the task's class count when known; without it a task is two-class
    when every prediction and label is 0 or 1.
    """
    p, y = _pair(predictions, labels)
    binary = num_classes == 2 if num_classes else set(np.unique(np.concatenate([p, y]))) <= {0, 1}
    average = "binary" if binary else "macro"
    return 100.0 * float(skm.f1_score(y, p, average=average, pos_label=1, zero_division=0))


def mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation ×100 of class predictions ``[N]``; 0 for constant predictions."""
    p, y = _pair(predictions, labels)
    return 100.0 * float(skm.matthews_corrcoef(y, p))


def _correlation(fn: Callable[..., Any], predictions: np.ndarray, labels: np.ndarray) -> float:
    p, y = _pair(predictions, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0  # undefined (NaN in scipy); GLUE-style reports count it as no correlation
    return 100.0 * float(fn(p, y).statistic)


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation ×100 of scores ``[N]``; 0.0 when either side is constant."""
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation ×100 (ties get average ranks); 0.0 when constant."""
    return _correlation(stats.spearmanr, predictions, labels)


def precision_at_1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """P@1 ×100 of a ranking task: the share of queries whose best-scored candidate is the
    right one (``predictions``: best candidate ``[N]``, ``labels``: right candidate ``[N]``).
    Per query, not the pair accuracy of a pairwise task such as QNLI."""
    return accuracy(predictions, labels)


def mean_reciprocal_rank(scores: np.ndarray, labels: np.ndarray) -> float:
    """MRR ×100 of candidate ``scores`` ``[N, K]`` (absent candidates padded, see
    :mod:`mtkd.padding`)
    against the right candidate's index ``[N]``: the mean of 1 / rank, rank = 1 + the
    number of candidates scored strictly higher than the right one."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if s.ndim != 2 or s.shape[0] != y.shape[0] or y.size == 0:
        raise ValueError(f"MRR needs scores [N, K] for N labels, got {s.shape} and {y.shape}")
    right = s[np.arange(len(y)), y]
    ranks = 1 + (s > right[:, None]).sum(axis=1)
    return 100.0 * float(np.mean(1.0 / ranks))


def pair_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Pair accuracy ×100 of a ranking task that is pairwise in origin (QNLI as MT-DNN
    ranks it): the accuracy over every (query, candidate) pair, the published task's metric.

    ``scores`` ``[N, K]``: candidate scores, padded slots as
    :func:`mtkd.padding.real_candidates` says
    (queries may have different candidate counts); ``labels`` ``[N]``: the right
    candidate's index. A pair's gold label is positive iff its candidate is the query's
    right one (the data gives one right candidate per query). A pair is predicted positive
    iff its candidate is the query's top-scored real candidate (the first on a tie, as
    ``np.argmax``), every other pair negative: MT-DNN's ranking evaluation (Liu et al. 2019,
    "Multi-Task Deep Neural Networks for Natural Language Understanding", sec. 3, the
    relevance ranking output, and sec. 4, QNLI cast as pairwise ranking; namisan/mt-dnn
    ``mt_dnn/model.py`` ``predict`` for ``TaskType.Ranking``: softmax over the query's
    candidates, then ``predict[idx, argmax] = 1`` and 0 for the rest, scored by
    ``eval_model`` with accuracy against the per-pair ``true_label``s). There is no 0.5
    threshold: the argmax decides. So a query with K real candidates adds K pairs, all
    right when its top candidate is right and K - 2 right otherwise."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if s.ndim != 2 or s.shape[0] != y.shape[0] or y.size == 0:
        raise ValueError(f"pair accuracy needs scores [N, K] for N labels, got {s.shape} "
                         f"and {y.shape}")
    real = real_candidates(s)
    rows = np.arange(len(y))
    if ((y < 0) | (y >= s.shape[1])).any() or not real[rows, y].all():
        raise ValueError("a label does not index a real candidate of its query")
    top = np.argmax(np.where(real, s, -np.inf), axis=1)
    pairs = int(real.sum())
    wrong = int((top != y).sum())
    return 100.0 * (pairs - 2 * wrong) / pairs


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "p@1": precision_at_1,
}
SCORE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "mrr": mean_reciprocal_rank,
}
"""Metrics of the model's scores ``[N, K]`` rather than of its predictions."""
UNSCORED: tuple[str, ...] = ("pair_accuracy",)
"""Metrics reported beside a task's own but left out of its score (:func:`task_score`)."""


def predictions_from_outputs(spec: TaskSpec, outputs: np.ndarray) -> np.ndarray:
    """Model outputs → predictions ``[N]``.

    * classification: logits or probabilities ``[N, C]`` → class index (argmax) ``[N]``;
    * regression: scores ``[N, 1]`` or ``[N]`` → float64 ``[N]``;
    * ranking: candidate scores ``[N, K]`` (padded, see :mod:`mtkd.padding`) → best
      candidate ``[N]``.
    """
    out = np.asarray(outputs)
    kind = spec.kind
    if kind.is_regression:
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1:
            raise ValueError(f"{spec.name}: regression outputs must be [N] or [N, 1], "
                             f"got shape {out.shape}")
        return out.astype(np.float64)
    if out.ndim != 2 or out.shape[1] == 0:
        raise ValueError(f"{spec.name}: {kind.name} outputs must be "
                         f"{kind.layout.outputs_name} [N, K>0], got shape {out.shape}")
    return np.argmax(out, axis=-1).astype(np.int64)


def labelled(spec: TaskSpec, labels: np.ndarray) -> np.ndarray:
    """Which rows carry a label ``[N]`` bool: not NaN (regression), not -1 (otherwise)."""
    gold = np.asarray(labels).reshape(-1)
    if spec.kind.is_regression:
        return ~np.isnan(gold.astype(np.float64))
    return gold != -1


def compute_task_metrics(spec: TaskSpec, outputs: np.ndarray,
                         labels: np.ndarray) -> dict[str, float]:
    """The task's metrics (``spec.metrics``, else its type's) of ``outputs`` against labels,
    plus ``pair_accuracy`` for a ranking task that is pairwise in origin (not scored).

    ``outputs`` as for :func:`predictions_from_outputs`; ``labels`` ``[N]``. Unlabelled rows
    (label -1, or NaN for regression) are left out; ValueError if none is labelled.
    """
    preds = predictions_from_outputs(spec, outputs)
    gold = np.asarray(labels).reshape(-1)
    if gold.shape[0] != preds.shape[0]:
        raise ValueError(f"{spec.name}: {preds.shape[0]} outputs for {gold.shape[0]} labels")
    keep = labelled(spec, gold)
    gold = gold.astype(np.float64 if spec.kind.is_regression else np.int64)
    if not keep.any():
        raise ValueError(f"{spec.name}: no labelled examples to score")
    preds, gold = preds[keep], gold[keep]
    result: dict[str, float] = {}
    for name in spec.metrics or spec.kind.metrics:
        if name in SCORE_METRICS:
            result[name] = SCORE_METRICS[name](np.asarray(outputs)[keep], gold)
            continue
        if name not in METRICS:
            valid = ", ".join([*METRICS, *SCORE_METRICS])
            raise ValueError(f"{spec.name}: unknown metric {name!r}; valid: {valid}")
        if name == "f1" and spec.labels:
            result[name] = f1(preds, gold, num_classes=len(spec.labels))
        else:
            result[name] = METRICS[name](preds, gold)
    if spec.scores_pairs:
        result["pair_accuracy"] = pair_accuracy(np.asarray(outputs)[keep], gold)
    return result


def task_score(metrics: Mapping[str, float]) -> float:
    """A task's score: the mean of its metrics (GLUE style), leaving out the
    :data:`UNSCORED` ones reported beside them (pair_accuracy)."""
    scored = [v for k, v in metrics.items() if k not in UNSCORED]
    if not scored:
        raise ValueError("no metrics to average")
    return float(np.mean(scored))


def average_score(per_task: Mapping[str, Mapping[str, float]]) -> float:
    """The experiment's average: the mean over tasks of :func:`task_score`."""
    if not per_task:
        raise ValueError("no tasks to average")
    return float(np.mean([task_score(m) for m in per_task.values()]))


def majority_baseline(spec: TaskSpec, train_labels: np.ndarray,
                      dev_labels: np.ndarray) -> dict[str, float]:
    """Metrics on dev of always predicting the most frequent train class (the lowest on a
    tie; for ranking, the most frequent right-candidate index) or, for regression, the train
    mean. ``train_labels`` ``[M]`` and ``dev_labels`` ``[N]`` may hold unlabelled rows."""
    train = np.asarray(train_labels).reshape(-1)
    n_dev = np.asarray(dev_labels).reshape(-1).shape[0]
    if spec.kind.is_regression:
        train = train.astype(np.float64)
        train = train[~np.isnan(train)]
        if train.size == 0:
            raise ValueError(f"{spec.name}: no labelled training examples")
        return compute_task_metrics(spec, np.full(n_dev, train.mean()), dev_labels)
    train = train[train != -1].astype(np.int64)
    if train.size == 0:
        raise ValueError(f"{spec.name}: no labelled training examples")
    majority = int(np.argmax(np.bincount(train)))
    outputs = np.zeros((n_dev, max(len(spec.labels), majority + 1)))
    outputs[:, majority] = 1.0
    return compute_task_metrics(spec, outputs, dev_labels)
