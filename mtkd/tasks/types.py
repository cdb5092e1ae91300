"""Task types: what a task's examples look like, its head, losses and metrics.

A task type is one :class:`TaskType` value: plain data (head, losses, metrics, whether it
takes text pairs) plus its :mod:`layout <mtkd.tasks.layout>` (one sequence per example, or a
query with candidates), which carries the behaviour that differs between layouts. The
model (head), losses and metrics look these up; a new task type is one more value in
``TASK_TYPES``.

Canonical example columns (every loader produces these, see ``mtkd.tasks.examples``):

* ``uid`` (str): stable id, unique within the task across splits;
* ``text`` (str): the sentence, the first sentence of a pair, or the ranking query;
* ``text_pair`` (str): the second sentence of a pair ('' for single-sentence tasks);
* ``candidates`` (list[str]): ranking only, the candidate answers;
* ``label``: class index (int), score (float) or index of the right candidate (int).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from mtkd.tasks.layout import ONE_SEQUENCE, QUERY_CANDIDATES, OneSequence, QueryCandidates

T = TypeVar("T")


@dataclass(frozen=True)
class TaskType:
    """One task type (see the module docstring)."""

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
    """True: encoded as pairs; False: single text; None: either."""
    is_regression: bool = False
    layout: OneSequence | QueryCandidates = ONE_SEQUENCE
    """One sequence per example, or a query with candidates."""
    description: str = ""

    def num_outputs(self, num_labels: int) -> int:
        """Width of the head's output per sequence: the classes, or 1 for a score (a
        regression score or one candidate's score; softmax over the candidates)."""
        return 1 if self.is_regression or self.layout.candidates else num_labels

    def output_shape(self, num_labels: int) -> tuple[int, ...]:
        """Shape of one example's outputs after prediction: (C,) class logits, () a score,
        (0,) candidate scores (their number K varies; 0 is the width of no examples)."""
        if self.is_regression:
            return ()
        return (0,) if self.layout.candidates else (num_labels,)

    @property
    def takes_text_pair(self) -> bool | None:
        """Whether examples have a ``text_pair`` column: True required, None optional,
        False never (single texts, and queries whose second texts are candidates)."""
        return False if self.layout.candidates else self.pair

    @property
    def has_classes(self) -> bool:
        """Labels index the task's own class list (not a score, not a candidate)."""
        return not self.is_regression and not self.layout.candidates


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    TaskType("classification", "linear", "cross_entropy", "soft_cross_entropy",
             ("accuracy", "f1"), pair=False,
             description="Single-sentence classification (SST-2, CoLA style)."),
    TaskType("pair_classification", "linear", "cross_entropy", "soft_cross_entropy",
             ("accuracy", "f1"), pair=True,
             description="Sentence-pair classification (MNLI, RTE, MRPC, BoolQ style)."),
    TaskType("regression", "linear", "mse", "mse_score", ("pearson", "spearman"), pair=None,
             is_regression=True,
             description="Real-valued score of a sentence or a pair (STS-B style)."),
    # Per query: P@1 (the best-scored candidate is right) and MRR; not a pair accuracy.
    TaskType("ranking", "ranking", "candidate_cross_entropy", "soft_cross_entropy",
             ("p@1", "mrr"), pair=True, layout=QUERY_CANDIDATES,
             description="Pairwise ranking as MT-DNN does QNLI: a query, several candidates, "
                         "a softmax over the candidates' scores; the label is the index of "
                         "the right candidate."),
)}


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``; KeyError naming ``what`` was unknown and listing the valid names."""
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {what} {name!r}; valid: {', '.join(table)}") from None


def task_type(name: str) -> TaskType:
    """The task type called ``name``; KeyError lists the valid names."""
    return lookup(TASK_TYPES, name, "task type")
