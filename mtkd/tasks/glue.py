"""GLUE tasks (source "glue"): ``nyu-mll/glue`` from the Hugging Face hub, or the same
parquet files from a local folder or s3://.

Without ``tasks.N.files`` the task is loaded with ``datasets.load_dataset("nyu-mll/glue",
glue_task)``, which needs a network (or a copy in the Hugging Face cache). With ``files``
({train, dev, test} -> path, any format of :mod:`mtkd.tasks.files`, usually the hub's
parquet files) those are read instead; their columns are the hub's (e.g. sentence, label,
idx) unless ``tasks.N.columns`` says otherwise. Labels are class indices as on the hub
(label names work too); test labels are -1 and become NO_LABEL (NaN for STS-B). A uid is
``<glue_task>-<split>-<idx>``.

QNLI stays pair_classification (question, sentence). MT-DNN instead regroups QNLI by
question and ranks the candidate sentences (the "ranking" type); that regrouping is not
done here: use source "files" with type ranking on regrouped data for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import datasets

from mtkd.config.schema import TaskConfig
from mtkd.errors import DataError
from mtkd.tasks.examples import NO_LABEL, SPLITS
from mtkd.tasks.files import (
    Table,
    configured_roles,
    file_format,
    finish_task,
    read_table,
    resolve_roles,
    task_key,
    to_examples,
)
from mtkd.tasks.labels import label_key
from mtkd.tasks.spec import TaskSpec
from mtkd.tasks.types import task_type
from mtkd.tasks.validation import (
    UNKNOWN_LABEL,
    BadRows,
    BadRowSummary,
    LabelParser,
    NoLabel,
    RowProblem,
    as_text,
    no_label_set,
    regression_label,
)

HUB_DATASET = "nyu-mll/glue"
_SPLITS = (("train", "train"), ("validation", "dev"), ("test", "test"))


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: type, text columns, label names (GLUE's order), metrics, hub splits."""

    type: str
    text: str
    text_pair: str | None
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    splits: tuple[tuple[str, str], ...] = _SPLITS
    """(hub split, our split) pairs."""


_ENTAIL2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("classification", "sentence", None, ("unacceptable", "acceptable"),
                     ("mcc",)),
    "sst2": GlueTask("classification", "sentence", None, ("negative", "positive"),
                     ("accuracy",)),
    "mrpc": GlueTask("pair_classification", "sentence1", "sentence2",
                     ("not_equivalent", "equivalent"), ("accuracy", "f1")),
    "qqp": GlueTask("pair_classification", "question1", "question2",
                    ("not_duplicate", "duplicate"), ("accuracy", "f1")),
    "stsb": GlueTask("regression", "sentence1", "sentence2", (), ("pearson", "spearman")),
    "mnli": GlueTask("pair_classification", "premise", "hypothesis",
                     ("entailment", "neutral", "contradiction"), ("accuracy",),
                     (("train", "train"), ("validation_matched", "dev"),
                      ("test_matched", "test"))),
    "qnli": GlueTask("pair_classification", "question", "sentence", _ENTAIL2, ("accuracy",)),
    "rte": GlueTask("pair_classification", "sentence1", "sentence2", _ENTAIL2, ("accuracy",)),
    "wnli": GlueTask("pair_classification", "sentence1", "sentence2",
                     ("not_entailment", "entailment"), ("accuracy",)),
}


def glue_task(task: TaskConfig, index: int | None = None) -> GlueTask:
    """The GLUE table entry of ``task``; DataError for an unknown name or a wrong type."""
    key = task_key(index)
    spec = GLUE_TASKS.get((task.glue_task or "").lower())
    if spec is None:
        raise DataError(f"task {task.name!r}: {key}.glue_task {task.glue_task!r} is not a GLUE "
                        f"task (fix: use one of {', '.join(GLUE_TASKS)})")
    if task.type is not None and task.type != spec.type:
        raise DataError(f"task {task.name!r}: GLUE {task.glue_task} is a {spec.type} task, not "
                        f"{task.type} (fix: remove {key}.type)")
    return spec


def glue_task_spec(task: TaskConfig, index: int | None = None) -> TaskSpec:
    """The TaskSpec of a GLUE task: GLUE's type, label names and metrics."""
    spec = glue_task(task, index)
    return TaskSpec(name=task.name, type=spec.type, labels=spec.labels,
                    metrics=tuple(task.metrics or spec.metrics), max_length=task.max_length,
                    teacher=task.teacher)


def _label_parser(spec: GlueTask, no_label: NoLabel) -> LabelParser:
    """GLUE labels: class indices as on the hub (``1``, ``1.0``), or label names; test
    files' ``-1`` (and the task's no_label set) is unlabelled."""
    names = list(spec.labels)
    keys = {label_key(name): i for i, name in enumerate(names)}

    def parse(value: Any, split: str, candidates: list[str] | None = None) -> int | float:
        text = as_text(value)
        if spec.type == "regression":
            if no_label(text, split, math.nan) is not None:
                return math.nan
            return regression_label(value, split)
        key = label_key(text) if text is not None else ""
        if key in keys:
            return keys[key]
        if key.lstrip("-").isdigit() and 0 <= int(key) < len(names):
            return int(key)
        missing = no_label(text, split, NO_LABEL)
        if missing is not None:
            return int(missing)
        raise RowProblem(UNKNOWN_LABEL, f"label {text!r} is not a class index 0 to "
                         f"{len(names) - 1} or one of {names}", "use GLUE's label indices")
    return parse


def load_glue_task(task: TaskConfig, index: int | None = None
                   ) -> tuple[dict[str, datasets.Dataset], BadRowSummary]:
    """The train/dev/test splits of a GLUE task as canonical Datasets, and the skipped rows."""
    spec, key = glue_task(task, index), task_key(index)
    name = (task.glue_task or "").lower()
    kind = task_type(spec.type)
    columns = {"text": spec.text, "label": "label", **configured_roles(task, kind, key)}
    if spec.text_pair:
        columns.setdefault("text_pair", spec.text_pair)
    bad_rows = BadRows(task.bad_rows, key, task.name)

    def resolve(split: str, file: str, found: list[str]) -> dict[str, str]:
        return resolve_roles(task.name, key, kind, split, file, found, columns, {"uid": "idx"})

    tables: dict[str, Table] = {}
    if task.files:
        unknown = sorted(set(task.files) - set(SPLITS))
        if unknown:
            raise DataError(f"task {task.name!r}: {key}.files has unknown split(s) "
                            f"{', '.join(unknown)} (fix: use {', '.join(SPLITS)})")
        for split in (s for s in SPLITS if s in task.files):
            path = task.files[split]
            tables[split] = read_table(path, file_format(path, task.format, key, task.name),
                                       lambda found, s=split, p=path: resolve(s, p, found),
                                       bad_rows, task.quoting, task.header, spec.labels)
    else:
        hub = _hub(task, name, key)
        for hub_split, split in spec.splits:
            ds = hub[hub_split]
            file = f"{HUB_DATASET}/{name} ({hub_split} split)"
            roles = resolve(split, file, list(ds.column_names))
            data = ds.select_columns(list(dict.fromkeys(roles.values()))).to_dict()
            tables[split] = Table(file, list(ds.column_names), roles, data,
                                  list(range(1, len(ds) + 1)))
    # GLUE marks unlabelled test rows -1 in every task, STS-B included
    parse = _label_parser(spec, no_label_set("classification", task.no_label, key))
    per_split = {split: (table, *to_examples(table, split, task.name, parse, bad_rows,
                                             lambda uid, split: f"{name}-{split}-{uid}"))
                 for split, table in tables.items()}
    return finish_task(task, kind, key, bad_rows, per_split, spec.labels), bad_rows.summary


def _hub(task: TaskConfig, name: str, key: str) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(HUB_DATASET, name)
    except Exception as exc:
        raise DataError(
            f"task {task.name!r}: GLUE {name} could not be loaded from the Hugging Face hub "
            f"({HUB_DATASET}): {type(exc).__name__}: {exc} (fix: GLUE needs a network "
            "connection, with HF_HUB_OFFLINE unset, or a copy in the Hugging Face cache; "
            f"otherwise download GLUE's parquet files and set {key}.files to "
            "{train: ..., dev: ..., test: ...}, local paths or s3://)") from exc
