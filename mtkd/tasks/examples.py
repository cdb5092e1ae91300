"""The canonical example table every task loader produces.

Bundled tasks, user files and GLUE all end as ``datasets.Dataset`` objects with exactly
these columns, so tokenization, soft targets and evaluation never care where a task
came from. Joins between stages always go through ``uid``, never row order.
"""

from __future__ import annotations

import datasets

from mtkd.tasks.types import TaskType

UID, TEXT, TEXT_PAIR, CANDIDATES, LABEL = "uid", "text", "text_pair", "candidates", "label"
SPLITS = ("train", "dev", "test")
NO_LABEL = -1
"""Label of an unlabelled (test) example of a classification or ranking task; a
regression test example has NaN."""


def features_for(kind: TaskType) -> datasets.Features:
    """Column types of a task's example table.

    uid, text, text_pair: string (text_pair is '' for single-sentence tasks);
    candidates: list of string (ranking only); label: int64 class / candidate index, or
    float32 score for regression.
    """
    columns: dict[str, datasets.features.FeatureType] = {
        UID: datasets.Value("string"),
        TEXT: datasets.Value("string"),
        TEXT_PAIR: datasets.Value("string"),
    }
    if kind.layout.candidates:
        columns[CANDIDATES] = datasets.Sequence(datasets.Value("string"))
    columns[LABEL] = datasets.Value("float32" if kind.is_regression else "int64")
    return datasets.Features(columns)


def make_split(rows: list[dict], kind: TaskType) -> datasets.Dataset:
    """A Dataset of canonical rows (dicts with the columns of :func:`features_for`)."""
    features = features_for(kind)
    return datasets.Dataset.from_dict(
        {name: [row.get(name, "" if name == TEXT_PAIR else None) for row in rows]
         for name in features}, features=features)
