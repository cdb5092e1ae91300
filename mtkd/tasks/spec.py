"""TaskSpec: a task as the model, losses and metrics see it, resolved from the config.

A TaskSpec is what gets saved with a model (``tasks.json``), so it holds only plain
data: name, type name, label list, metrics, maximum length, whether a teacher exists and
(ranking) whether the task is pairwise in origin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mtkd.tasks.types import TaskType, task_type


@dataclass(frozen=True)
class TaskSpec:
    """One resolved task."""

    name: str
    type: str
    """Task type name, a key of ``mtkd.tasks.types.TASK_TYPES``."""
    labels: tuple[str, ...] = ()
    """Class labels in head order; empty for regression and ranking."""
    metrics: tuple[str, ...] = ()
    """Reported dev metrics; the task's score is their mean."""
    max_length: int = 128
    teacher: bool = True
    pairwise_origin: bool = False
    """A ranking task regrouped from a pairwise one (QNLI-style: the published task labels
    each (query, candidate) pair on its own): ``pair_accuracy`` is reported beside its
    metrics (see :func:`mtkd.metrics.pair_accuracy`), never counted in its score."""

    @property
    def kind(self) -> TaskType:
        return task_type(self.type)

    @property
    def scores_pairs(self) -> bool:
        """Whether ``pair_accuracy`` is reported beside the metrics: a task of candidates
        that is pairwise in origin."""
        return self.pairwise_origin and self.kind.layout.candidates

    @property
    def num_outputs(self) -> int:
        """Width of the head's output: classes, or 1 for a score / candidate score."""
        return self.kind.num_outputs(len(self.labels))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        data["metrics"] = list(self.metrics)
        if not self.pairwise_origin:  # specs stored before the flag stay byte-identical
            del data["pairwise_origin"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(name=data["name"], type=data["type"], labels=tuple(data.get("labels", ())),
                   metrics=tuple(data.get("metrics", ())),
                   max_length=int(data.get("max_length", 128)),
                   teacher=bool(data.get("teacher", True)),
                   pairwise_origin=bool(data.get("pairwise_origin", False)))
