"""Stage ``prepare``: every task's splits, loaded, checked and tokenized, into storage.

Writes per task, under ``data/<task>/``:

* ``<split>.parquet``: tokenized rows (uid, label, input_ids, token_type_ids, length);
* ``meta.json`` (written last, atomically): the TaskSpec, split sizes, token counts,
  padding fractions, what loading dropped, its lineage and its content fingerprint
  (:class:`mtkd.records.TaskRecord`).

Every task is tokenized once per distinct tokenizer of the encoders the experiment uses
(:mod:`mtkd.tokenizations`): ``encoder.path``'s in ``data/<task>/``, any other in
``data/<task>/tok-<fingerprint[:10]>/`` (same files), all from the same canonical rows.

The stage runs on every ``mtkd run`` (its inputs can be user files that change outside
the config), but a tokenization of a task whose lineage (its declared config values, the
raw content and the tokenizer; see :mod:`mtkd.experiment`) matches its ``meta.json`` is
reused, not re-tokenized. Later stages re-run only if some task's lineage changed.
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

from mtkd.config import ExperimentConfig
from mtkd.data.prepared import read_prepared, read_task_spec, task_lineages
from mtkd.data.sampler import MultiTaskBatchSampler, padding_fraction
from mtkd.data.tokenize import load_tokenizer, split_is_pair, tokenize_split
from mtkd.data.transfer import TRANSFER, load_transfer, prepare_transfer, transfer_lineage
from mtkd.experiment import (
    TASK_RECORD,
    StageContext,
    lineage,
    outputs_fingerprint,
    reusable,
    task_data_dir,
)
from mtkd.pretrained import resolve_encoder_dir, tokenizer_fingerprint
from mtkd.records import TaskRecord, digest, files_fingerprint
from mtkd.storage import Storage
from mtkd.tasks.resolve import LoadedTask, load_task
from mtkd.tokenizations import encoders_in_use, tokenization_dir

__all__ = ["read_prepared", "read_task_spec", "task_lineages", "tokenized_lineage"]
log = logging.getLogger("mtkd")
PADDING_BATCH_SIZE = 32
"""Batch size at which the padding fraction is reported (the training default)."""


def rows_fingerprint(split: datasets.Dataset) -> str:
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


def _write_parquet(store: Storage, rel: str, split: datasets.Dataset) -> str:
    """Write ``split`` at ``rel``; returns the sha256 of the bytes written."""
    table: pa.Table = split.data.table if hasattr(split.data, "table") else split.data
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    store.write_atomic(rel, buffer.getvalue())
    return digest(buffer.getvalue())


def prepare_task(loaded: LoadedTask, tokenizer: Any, store: Storage, task_lineage: str,
                  seed: int) -> TaskRecord:
    """Tokenize and write one task; returns its record (meta.json)."""
    spec = loaded.spec
    store.delete(TASK_RECORD)  # the old meta must never describe the new files
    splits: dict[str, Any] = {}
    files: dict[str, str] = {}
    for name, split in loaded.splits.items():
        started = time.time()
        tokenized = tokenize_split(split, spec, tokenizer)
        files[f"{name}.parquet"] = _write_parquet(store, f"{name}.parquet", tokenized)
        lengths = tokenized["length"]
        seconds = max(time.time() - started, 1e-6)
        splits[name] = {"rows": len(tokenized), "tokens": int(sum(lengths)),
                        "max_length": int(max(lengths, default=0)),
                        "at_max_length": int(sum(x >= spec.max_length for x in lengths))}
        log.info("[prepare] %-16s %-5s %6d rows %8d tokens  %6.0f ex/s", spec.name, name,
                 len(tokenized), splits[name]["tokens"], len(tokenized) / seconds)
        if name == "train":
            splits[name].update(_padding_report(lengths, seed))
    meta = TaskRecord(lineage=task_lineage, content=files_fingerprint(files),
                      spec=spec.to_json(), splits=splits, dropped=loaded.dropped,
                      notes=loaded.notes)
    store.write_json_atomic(TASK_RECORD, meta.to_json())
    return meta


def tokenized_lineage(config: ExperimentConfig, index: int, tokenizer: str,
                      content: dict[str, str], default: bool = True) -> str:
    """Task ``index``'s tokenized data: its ``tasks[]`` entry, the tokenizer's content
    fingerprint and each raw split's content fingerprint ({split: fingerprint}).

    ``default`` False: a tokenization other than ``encoder.path``'s. It depends on its
    tokenizer's files, not on the path of the encoder it came from (nor on
    ``encoder.path``), so it is keyed by the fingerprint in place of the path."""
    if not default:
        config = dataclasses.replace(config, encoder=dataclasses.replace(
            config.encoder, path=f"tokenizer:{tokenizer}"))
    return lineage("tokenized_task", config, task_index=index,
                   inputs={"tokenizer": tokenizer, "content": content})


@dataclasses.dataclass
class PrepareInputs:
    """What :func:`check_prepare` loaded: every task (in config order) and the transfer
    text (None when ``student.kd.transfer_text`` is off)."""

    tasks: list[LoadedTask]
    transfer: LoadedTask | None = None


def check_prepare(ctx: StageContext) -> PrepareInputs:
    """Load and check every task and the transfer text before anything is written: a
    DataError (bad file, row, label, column) refuses the run with nothing written under
    the experiment."""
    for path in encoders_in_use(ctx.config):  # fetched to the cache, not the experiment
        resolve_encoder_dir(path)
    # (every encoder's positions and depth were checked by the pipeline before this;
    # run_prepare tokenizes once per distinct tokenizer among them)
    loaded = [load_task(task_config, index) for index, task_config in
              enumerate(ctx.config.tasks)]
    for task in loaded:
        for split in task.splits.values():
            split_is_pair(split, task.spec)  # one encoding per split, or an error
    return PrepareInputs(loaded, load_transfer(ctx.config))


def tokenizers_in_use(config: ExperimentConfig) -> tuple[str, dict[str, list[str]],
                                                        dict[str, Any]]:
    """(``encoder.path``'s fingerprint, {fingerprint: [encoder paths]}, {fingerprint:
    encoder directory}) for every encoder the experiment uses; the default first."""
    by_fp: dict[str, list[str]] = {}
    dirs: dict[str, Any] = {}
    for path in encoders_in_use(config):
        folder = resolve_encoder_dir(path)
        fp = tokenizer_fingerprint(folder)
        by_fp.setdefault(fp, []).append(path)
        dirs.setdefault(fp, folder)
    return next(iter(by_fp)), by_fp, dirs


def run_prepare(ctx: StageContext) -> dict[str, Any]:
    """Load, check and tokenize every task once per distinct tokenizer; reuse the
    tokenizations whose inputs did not change."""
    config = ctx.config
    checked = ctx.checked if ctx.checked is not None else check_prepare(ctx)
    all_loaded = checked.tasks
    default_fp, by_fp, dirs = tokenizers_in_use(config)
    summary: dict[str, Any] = {}
    others: dict[str, Any] = {}
    contents = {index: {n: rows_fingerprint(s) for n, s in sorted(loaded.splits.items())}
                for index, loaded in enumerate(all_loaded)}
    for fp, paths in by_fp.items():
        default = fp == default_fp
        tokenizer = load_tokenizer(dirs[fp])
        tasks: dict[str, Any] = {}
        if not default:
            log.info("[prepare] tokenizer %s (%s) of %s", fp[:10], type(tokenizer).__name__,
                     ", ".join(paths))
        for index, task_config in enumerate(config.tasks):
            tasks[task_config.name] = _prepare_one(
                ctx, all_loaded[index], tokenizer, index,
                tokenized_lineage(config, index, fp, contents[index], default=default),
                None if default else fp)
        if default:
            summary = tasks
        else:
            others[fp] = {"encoders": paths, "dir": tokenization_dir(fp),
                          "tasks": tasks}
    lineages = {k: v["lineage"] for k, v in summary.items()}
    for fp, info in others.items():  # absent with one tokenizer: the fingerprint as before
        lineages.update({f"{task}@{fp}": v["lineage"] for task, v in info["tasks"].items()})
    result = {"tasks": summary, "tokenizer": default_fp, "tokenizations": others,
              "encoders": {path: fp for fp, paths in by_fp.items() for path in paths}}
    if checked.transfer is not None:  # absent without transfer text: the fingerprint as before
        result["transfer"] = _prepare_transfer(ctx, checked.transfer)
        lineages[TRANSFER] = result["transfer"]["lineage"]
    return {**result, "output_fingerprint": outputs_fingerprint(lineages)}


def _prepare_transfer(ctx: StageContext, loaded: LoadedTask) -> dict[str, Any]:
    """The transfer text in the student's tokenization (only the student reads it)."""
    config = ctx.config
    folder = resolve_encoder_dir(config.student.encoder or config.encoder.path)
    fp = tokenizer_fingerprint(folder)
    content = {"train": rows_fingerprint(loaded.splits["train"])}
    return prepare_transfer(loaded, ctx.store, load_tokenizer(folder),
                            transfer_lineage(config, fp, content), config.seed, ctx.rebuild)


def _prepare_one(ctx: StageContext, loaded: LoadedTask, tokenizer: Any, index: int,
                 task_lineage: str, tokenization: str | None) -> dict[str, Any]:
    """One task in one tokenization: reused when its lineage matches, else tokenized."""
    task_config = ctx.config.tasks[index]
    task_store = ctx.store.child(task_data_dir(task_config.name, tokenization))
    what = task_config.name + (f" [{tokenization[:10]}]" if tokenization else "")
    old = None if ctx.rebuild else reusable(task_store, TASK_RECORD, task_lineage, TaskRecord)
    if old is not None:
        log.info("[prepare] %-16s unchanged, reusing %s", what, task_store.uri)
        meta = old
    else:
        meta = prepare_task(loaded, tokenizer, task_store, task_lineage, ctx.config.seed)
    for note in meta.notes if tokenization is None else ():
        log.info("[prepare] %s", note)
    train = meta.splits["train"]
    log.info("[prepare] %-16s padding at batch %d: %.1f%% bucketed vs %.1f%% unbucketed",
             what, PADDING_BATCH_SIZE, 100 * train["padding_bucketed"],
             100 * train["padding_unbucketed"])
    return {"lineage": meta.lineage, "content": meta.content, "splits": meta.splits,
            "dropped": meta.dropped, "path": task_store.uri}
