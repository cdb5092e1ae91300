"""Reading what the prepare stage wrote: tokenized splits, task specs, task lineages.

The training core, the soft stage and the report read prepared data through here, never
through the stage module that writes it.
"""

from __future__ import annotations

import io

import datasets
import pyarrow.parquet as pq

from mtkd.experiment import TASK_RECORD, read_manifest, task_data_dir
from mtkd.records import TaskRecord
from mtkd.storage import Storage
from mtkd.tasks.spec import TaskSpec


def read_prepared(store: Storage, task: str, split: str) -> datasets.Dataset:
    """A tokenized split written by this stage, as a Dataset (``store`` = experiment root)."""
    data = store.child(task_data_dir(task))
    table = pq.read_table(io.BytesIO(data.read_bytes(f"{split}.parquet")))
    return datasets.Dataset(table)


def read_task_spec(store: Storage, task: str) -> TaskSpec:
    """The TaskSpec the prepare stage recorded for ``task``."""
    record = TaskRecord.from_json(store.child(task_data_dir(task)).read_json(TASK_RECORD))
    return TaskSpec.from_json(record.spec)


def prepared_splits(store: Storage, task: str) -> list[str]:
    """The splits prepare wrote for ``task`` (train, dev, and test where the task has one)."""
    record = TaskRecord.from_json(store.child(task_data_dir(task)).read_json(TASK_RECORD))
    return [s for s in ("train", "dev", "test") if s in record.splits]


def task_lineages(store: Storage) -> dict[str, str]:
    """The lineage of every task the last finished prepare stage wrote: {task: lineage}."""
    prepared = read_manifest(store, "prepare") or {}
    return {task: info["lineage"] for task, info in prepared.get("tasks", {}).items()}
