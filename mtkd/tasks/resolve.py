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
from mtkd.tasks.examples import CANDIDATES, LABEL, NO_LABEL, UID
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
                    max_length=task.max_length, teacher=task.teacher,
                    pairwise_origin=task.pairwise_origin)


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
        from mtkd.tasks.labels import label_name

        spec = _spec(task, str(task.type), tuple(label_name(x) for x in task.labels or ()),
                     ())
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
    classes = loaded.spec.kind.has_classes
    loaded.splits = {name: deterministic_subset(split, limits.get(name), stratify=classes,
                                                label_names=loaded.spec.labels,
                                                where=f"task {task.name!r}, {name} split")
                     for name, split in loaded.splits.items()}
    for name, split in loaded.splits.items():
        check_split_labels(loaded.spec, name, split)
    return loaded


def check_split_labels(spec: TaskSpec, split_name: str, split: datasets.Dataset) -> None:
    """Every source's last check: class labels are class indices (NO_LABEL only in test),
    ranking labels index a candidate. The loaders name file and row for their own data;
    this names the split's row and uid, so a bad label never reaches the loss."""
    if spec.kind.is_regression:
        return
    labels = split[LABEL]
    candidates = split[CANDIDATES] if spec.kind.layout.candidates else None
    for i, label in enumerate(labels):
        count = len(candidates[i]) if candidates is not None else len(spec.labels)
        if 0 <= label < count or (label == NO_LABEL and split_name == "test"):
            continue
        uid = split[i][UID]
        raise DataError(f"task {spec.name!r}: {split_name} split, example {i + 1} (uid "
                        f"{uid!r}): label {label} is outside 0 to {count - 1} ("
                        + ("its candidates" if candidates is not None
                           else f"labels {list(spec.labels)}")
                        + ") (fix: correct the data or the task's labels)")
