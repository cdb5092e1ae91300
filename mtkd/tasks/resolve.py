"""Turn a task's config into its TaskSpec and canonical splits, whatever its source.

The one place that dispatches on ``tasks[].source``: bundled real data, user files
(local or s3://), or GLUE. Subsets (``max_train_examples``/``max_dev_examples``) are
taken here, deterministically by uid hash, so every source behaves the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import datasets

from mtkd.config import TaskConfig
from mtkd.errors import DataError
from mtkd.tasks.spec import TaskSpec
from mtkd.tasks.validation import deterministic_subset


@dataclass
class LoadedTask:
    """A task ready to tokenize: its spec, its splits, and what loading dropped."""

    spec: TaskSpec
    splits: dict[str, datasets.Dataset]
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows left out, by reason (duplicates, bad rows skipped, unlabelled, ...)."""
    notes: list[str] = field(default_factory=list)
    """Human-readable lines about what was dropped (printed in the prepare summary)."""


def _spec(task: TaskConfig, type_name: str, labels: tuple[str, ...],
          metrics: tuple[str, ...]) -> TaskSpec:
    return TaskSpec(name=task.name, type=type_name, labels=labels,
                    metrics=tuple(task.metrics) if task.metrics else metrics,
                    max_length=task.max_length, teacher=task.teacher)


def load_task(task: TaskConfig, index: int | None = None,
              cache: str | Path | None = None) -> LoadedTask:
    """Load one configured task into canonical splits (train, dev, and test if present).

    ``index`` is the task's position in ``tasks``, so messages can name ``tasks.N.key``.
    """
    if task.source == "bundled":
        from mtkd.tasks.bundled import bundled_task

        bundled = bundled_task(task.name)
        splits, report = bundled.load_with_report(cache)
        spec = _spec(task, bundled.type, tuple(bundled.labels), tuple(bundled.metrics))
        dropped = {"duplicates": report.duplicates_dropped,
                   "conflicting labels": report.conflicting_dropped,
                   "unlabelled": report.unlabelled_excluded}
        loaded = LoadedTask(spec, splits, dropped, [str(report)])
    elif task.source == "files":
        from mtkd.tasks.files import load_file_task

        splits, summary = load_file_task(task, index)
        spec = _spec(task, str(task.type), tuple(task.labels or ()), ())
        loaded = LoadedTask(spec, splits, summary.counts(), summary.lines())
    else:
        from mtkd.tasks.glue import GLUE_TASKS, load_glue_task

        splits, summary = load_glue_task(task, index)
        glue = GLUE_TASKS[str(task.glue_task)]
        spec = _spec(task, glue.type, tuple(glue.labels), tuple(glue.metrics))
        loaded = LoadedTask(spec, splits, summary.counts(), summary.lines())
    for name in ("train", "dev"):
        if name not in loaded.splits or len(loaded.splits[name]) == 0:
            where = f"tasks.{index}" if index is not None else "tasks[]"
            raise DataError(f"task {task.name}: the {name} split is empty (fix: give "
                            f"{where}.files.{name} a file with rows)")
    limits = {"train": task.max_train_examples, "dev": task.max_dev_examples,
              "test": task.max_dev_examples}
    loaded.splits = {name: deterministic_subset(split, limits.get(name))
                     for name, split in loaded.splits.items()}
    return loaded
