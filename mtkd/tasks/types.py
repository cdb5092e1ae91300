"""Task types: what a task's examples look like, its head, losses and metrics.

One small class per type. The model (head), losses and metrics modules look these
names up; a new task type is one more class here plus its entry in ``TASK_TYPES``.

Canonical example columns (every loader produces these, see ``mtkd.tasks.examples``):

* ``uid`` (str): stable id, unique within the task across splits;
* ``text`` (str): the sentence, the first sentence of a pair, or the ranking query;
* ``text_pair`` (str): the second sentence of a pair ('' for single-sentence tasks);
* ``candidates`` (list[str]): ranking only, the candidate answers;
* ``label``: class index (int), score (float) or index of the right candidate (int).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class TaskType(Protocol):
    """What every task type names."""

    name: str
    head: str
    """Head kind built by the model: "linear" (pooled → dropout → linear) or "ranking"."""
    hard_loss: str
    """Loss against gold labels: "cross_entropy", "mse" or "candidate_cross_entropy"."""
    soft_loss: str
    """Distillation loss: "soft_cross_entropy" (against teacher probabilities) or
    "mse_score" (against the teachers' mean score)."""
    metrics: tuple[str, ...]
    """Metrics reported on dev; the task's score is their mean."""
    pair: bool | None
    """True: needs text_pair; False: single text; None: either."""
    is_regression: bool

    def num_outputs(self, num_labels: int) -> int: ...


@dataclass(frozen=True)
class Classification:
    """Single-sentence classification (SST-2, CoLA style)."""

    name: str = "classification"
    head: str = "linear"
    hard_loss: str = "cross_entropy"
    soft_loss: str = "soft_cross_entropy"
    metrics: tuple[str, ...] = ("accuracy", "f1")
    pair: bool | None = False
    is_regression: bool = False

    def num_outputs(self, num_labels: int) -> int:
        return num_labels


@dataclass(frozen=True)
class PairClassification:
    """Sentence-pair classification (MNLI, RTE, MRPC, BoolQ style)."""

    name: str = "pair_classification"
    head: str = "linear"
    hard_loss: str = "cross_entropy"
    soft_loss: str = "soft_cross_entropy"
    metrics: tuple[str, ...] = ("accuracy", "f1")
    pair: bool | None = True
    is_regression: bool = False

    def num_outputs(self, num_labels: int) -> int:
        return num_labels


@dataclass(frozen=True)
class Regression:
    """Real-valued score of a sentence or a pair (STS-B style)."""

    name: str = "regression"
    head: str = "linear"
    hard_loss: str = "mse"
    soft_loss: str = "mse_score"
    metrics: tuple[str, ...] = ("pearson", "spearman")
    pair: bool | None = None
    is_regression: bool = True

    def num_outputs(self, num_labels: int) -> int:
        return 1


@dataclass(frozen=True)
class Ranking:
    """Pairwise ranking as MT-DNN does QNLI: a query, several candidates, a softmax over
    the candidates' scores; the label is the index of the right candidate."""

    name: str = "ranking"
    head: str = "ranking"
    hard_loss: str = "candidate_cross_entropy"
    soft_loss: str = "soft_cross_entropy"
    metrics: tuple[str, ...] = ("p@1", "mrr")
    """Per query: P@1 (the best-scored candidate is right) and MRR; not a pair accuracy."""
    pair: bool | None = True
    is_regression: bool = False

    def num_outputs(self, num_labels: int) -> int:
        return 1  # one score per (query, candidate); softmax over the candidates


TASK_TYPES: dict[str, TaskType] = {
    t.name: t for t in (Classification(), PairClassification(), Regression(), Ranking())
}


def task_type(name: str) -> TaskType:
    """The task type called ``name``; KeyError lists the valid names."""
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown task type {name!r}; valid: {', '.join(TASK_TYPES)}") from None
