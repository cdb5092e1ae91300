"""Reading what the prepare stage wrote: tokenized splits, task specs, task lineages.

The training core, the soft stage and the report read prepared data through here, never
through the stage module that writes it. ``tokenization`` (None: ``encoder.path``'s) picks
one of the task's tokenizations (see :mod:`mtkd.tokenizations`); :func:`encoder_tokenization`
tells which one an encoder reads. Specs, uids, labels and splits are the same in every
tokenization.
"""

from __future__ import annotations

import io
from typing import Any

import datasets
import pyarrow.parquet as pq

from mtkd.errors import MtkdError
from mtkd.experiment import TASK_RECORD, read_manifest, task_data_dir
from mtkd.records import TaskRecord
from mtkd.storage import Storage
from mtkd.tasks.spec import TaskSpec


def read_prepared(store: Storage, task: str, split: str,
                  tokenization: str | None = None) -> datasets.Dataset:
    """A tokenized split written by this stage, as a Dataset (``store`` = experiment root)."""
    data = store.child(task_data_dir(task, tokenization))
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


def _prepare_manifest(store: Storage) -> dict[str, Any]:
    return read_manifest(store, "prepare") or {}


def encoder_tokenization(store: Storage, encoder: str) -> str | None:
    """The tokenization the model of ``encoder`` (a config's encoder path) reads: None for
    ``encoder.path``'s (also for every encoder of a prepare run before mixed tokenizers,
    which recorded no mapping), else its tokenizer fingerprint. MtkdError (exit 2) when
    the last prepare run did not tokenize for this encoder."""
    manifest = _prepare_manifest(store)
    encoders = manifest.get("encoders")
    if encoders is None:
        return None
    if encoder not in encoders:
        raise MtkdError(f"the prepare stage has no tokenization for encoder {encoder!r} "
                        f"(it tokenized for {', '.join(sorted(encoders))}; fix: run prepare "
                        "again: `mtkd run CONFIG` without --only/--from, or --from prepare)")
    found = encoders[encoder]
    return None if found == manifest.get("tokenizer") else found


def task_lineages(store: Storage, tokenization: str | None = None) -> dict[str, str]:
    """The lineage of every task the last finished prepare stage wrote in ``tokenization``
    (None: ``encoder.path``'s): {task: lineage}."""
    prepared = _prepare_manifest(store)
    if tokenization is None:
        tasks = prepared.get("tasks", {})
    else:
        found = prepared.get("tokenizations", {}).get(tokenization)
        if found is None:
            raise MtkdError(f"the prepare stage has not written tokenization {tokenization} "
                            "(fix: run prepare again: `mtkd run CONFIG` without --only)")
        tasks = found["tasks"]
    return {task: info["lineage"] for task, info in tasks.items()}
