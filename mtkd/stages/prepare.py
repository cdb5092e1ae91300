"""Stage ``prepare``: every task's splits, loaded, checked and tokenized, into storage.

Writes per task, under ``data/<task>/``:

* ``<split>.parquet``: tokenized rows (uid, label, input_ids, token_type_ids, length);
* ``meta.json`` (written last, atomically): the TaskSpec, split sizes, token counts,
  padding fractions, what loading dropped, and the data fingerprint.

The stage runs on every ``mtkd run`` (its inputs can be user files that change outside
the config), but a task whose fingerprint (task config + raw content + tokenizer) matches
its ``meta.json`` is reused, not re-tokenized. Later stages re-run only if some task's
fingerprint changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from mtkd.config import ExperimentConfig, stable_hash
from mtkd.data.sampler import MultiTaskBatchSampler, padding_fraction
from mtkd.data.tokenize import load_tokenizer, tokenize_split
from mtkd.pipeline import Stage, StageContext
from mtkd.pretrained import resolve_encoder_dir, tokenizer_fingerprint
from mtkd.storage import Storage
from mtkd.tasks.resolve import LoadedTask, load_task
from mtkd.tasks.spec import TaskSpec

log = logging.getLogger("mtkd")
PADDING_BATCH_SIZE = 32
"""Batch size at which the padding fraction is reported (the training default)."""


def content_fingerprint(split: datasets.Dataset) -> str:
    """Hash of a split's rows (all columns), independent of how the table is chunked."""
    digest = hashlib.sha256()
    for batch in split.iter(batch_size=2048):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _padding_report(lengths: list[int], seed: int) -> dict[str, float]:
    """Padding fraction of this task's train batches with and without length bucketing."""
    report = {}
    for bucketed in (True, False):
        sampler = MultiTaskBatchSampler({"t": lengths}, PADDING_BATCH_SIZE, seed=seed,
                                        bucket_by_length=bucketed)
        key = "padding_bucketed" if bucketed else "padding_unbucketed"
        report[key] = round(padding_fraction(sampler.epoch_batches(0), {"t": lengths}), 4)
    return report


def _write_parquet(store: Storage, rel: str, split: datasets.Dataset) -> None:
    table: pa.Table = split.data.table if hasattr(split.data, "table") else split.data
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    store.write_atomic(rel, buffer.getvalue())


def _prepare_task(loaded: LoadedTask, tokenizer: Any, store: Storage, fingerprint: str,
                  seed: int) -> dict[str, Any]:
    """Tokenize and write one task; returns its meta.json content."""
    spec = loaded.spec
    store.delete("meta.json")  # the old meta must never describe the new files
    splits: dict[str, Any] = {}
    for name, split in loaded.splits.items():
        started = time.time()
        tokenized = tokenize_split(split, spec, tokenizer)
        _write_parquet(store, f"{name}.parquet", tokenized)
        lengths = tokenized["length"]
        seconds = max(time.time() - started, 1e-6)
        splits[name] = {"rows": len(tokenized), "tokens": int(sum(lengths)),
                        "max_length": int(max(lengths, default=0)),
                        "at_max_length": int(sum(x >= spec.max_length for x in lengths))}
        log.info("[prepare] %-16s %-5s %6d rows %8d tokens  %6.0f ex/s", spec.name, name,
                 len(tokenized), splits[name]["tokens"], len(tokenized) / seconds)
        if name == "train":
            splits[name].update(_padding_report(lengths, seed))
    meta = {"spec": spec.to_json(), "fingerprint": fingerprint, "splits": splits,
            "dropped": loaded.dropped, "notes": loaded.notes}
    store.write_json_atomic("meta.json", meta)
    return meta


def run_prepare(ctx: StageContext) -> dict[str, Any]:
    """Load, check and tokenize every task; reuse tasks whose inputs did not change."""
    config = ctx.config
    encoder_dir = resolve_encoder_dir(config.encoder.path)
    tokenizer = load_tokenizer(encoder_dir)
    tok_fp = tokenizer_fingerprint(encoder_dir)
    summary: dict[str, Any] = {}
    for index, task_config in enumerate(config.tasks):
        task_store = ctx.store.child("data", task_config.name)
        loaded = load_task(task_config, index)
        fingerprint = stable_hash({
            "task": dataclasses.asdict(task_config), "tokenizer": tok_fp,
            "content": {n: content_fingerprint(s) for n, s in sorted(loaded.splits.items())},
        })
        old = task_store.read_json("meta.json") if task_store.exists("meta.json") else None
        if old and old.get("fingerprint") == fingerprint:
            log.info("[prepare] %-16s unchanged, reusing %s", task_config.name, task_store.uri)
            meta = old
        else:
            meta = _prepare_task(loaded, tokenizer, task_store, fingerprint, config.seed)
        for note in meta["notes"]:
            log.info("[prepare] %s", note)
        train = meta["splits"]["train"]
        log.info("[prepare] %-16s padding at batch %d: %.1f%% bucketed vs %.1f%% unbucketed",
                 task_config.name, PADDING_BATCH_SIZE, 100 * train["padding_bucketed"],
                 100 * train["padding_unbucketed"])
        summary[task_config.name] = {"fingerprint": meta["fingerprint"],
                                     "splits": meta["splits"], "dropped": meta["dropped"],
                                     "path": task_store.uri}
    return {"tasks": summary,
            "output_fingerprint": stable_hash({k: v["fingerprint"] for k, v in summary.items()})}


def read_prepared(store: Storage, task: str, split: str) -> datasets.Dataset:
    """A tokenized split written by this stage, as a Dataset (``store`` = experiment root)."""
    data = store.child("data", task)
    table = pq.read_table(io.BytesIO(data.read_bytes(f"{split}.parquet")))
    return datasets.Dataset(table)


def read_task_spec(store: Storage, task: str) -> TaskSpec:
    """The TaskSpec the prepare stage recorded for ``task``."""
    return TaskSpec.from_json(store.child("data", task).read_json("meta.json")["spec"])


def _config_slice(config: ExperimentConfig) -> Any:
    return {"tasks": [dataclasses.asdict(t) for t in config.tasks],
            "encoder": config.encoder.path, "seed": config.seed}


PREPARE = Stage("prepare", run_prepare, _config_slice,
                "load, check and tokenize every task's splits", always_run=True)
