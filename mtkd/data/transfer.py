"""Unlabelled transfer text for task transfer (issue 18, item 4).

XtremeDistilTransformers (Mukherjee, Awadallah, Gao 2021, section 3) distils a teacher
into a *task-agnostic* small encoder on source tasks plus unlabelled transfer text, then
fine-tunes that encoder on target tasks. Here the transfer text
(``student.kd.transfer_text``: a bundled corpus and/or text files, one text per line) is:

* **loaded** (:func:`load_transfer_texts`): texts normalized like the bundled tasks'
  (Unicode NFC, whitespace runs collapsed), empty ones skipped, duplicates dropped,
  ``uid = "transfer-" + sha1(text)[:12]``, sorted by uid; ``max_examples`` keeps the first
  N uids (a fixed pseudo-random subset); checked before the pipeline writes anything;
* **tokenized by prepare** (:func:`prepare_transfer`) once, with the *student's* tokenizer
  (only the student reads it), into ``data/_transfer/train.parquet`` with a
  :class:`~mtkd.records.TaskRecord` ``meta.json``, reused while its lineage
  (:func:`transfer_lineage`: the ``transfer_text`` settings, the tokenizer's fingerprint
  and the texts' content) is unchanged; the prepare manifest records it under
  ``transfer`` and the student run's lineage reads it (:func:`recorded_transfer`);
* **trained on by the student** (:func:`add_transfer`): one more entry, named
  :data:`TRANSFER`, of the train splits the multi-task sampler mixes (so its batches are
  interleaved with the tasks' by the configured strategy), with no dev split and no head.
  Its batches carry no labels the loss reads: the representation-distillation wrapper
  (:class:`mtkd.student.hidden.RepresentationDistillation`) returns only the hidden-state
  loss for them, and the training loop trains on that alone.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import datasets

from mtkd.config import ExperimentConfig, TransferTextConfig
from mtkd.errors import DataError, StorageError
from mtkd.experiment import TASK_RECORD, lineage, read_manifest, reusable, task_data_dir
from mtkd.records import TaskRecord
from mtkd.storage import Storage
from mtkd.tasks.examples import NO_LABEL, TEXT, UID, make_split
from mtkd.tasks.resolve import LoadedTask
from mtkd.tasks.spec import TaskSpec

log = logging.getLogger("mtkd")
TRANSFER = "_transfer"
"""The transfer text's name among the student's train splits and in its batches (``_``
cannot start a task's name)."""
TRANSFER_DIR = task_data_dir(TRANSFER)
"""``data/_transfer/``: ``train.parquet`` and ``meta.json`` (its record)."""
KEY = "student.kd.transfer_text"


def transfer_spec(config: TransferTextConfig) -> TaskSpec:
    """How the transfer text is tokenized and collated: single texts of at most
    ``max_length`` tokens. It has no labels, metrics, head or teacher."""
    return TaskSpec(TRANSFER, "classification", (), (), config.max_length, teacher=False)


def _file_texts(path: str) -> list[str]:
    """The lines of a UTF-8 text file (local or s3://), one text each. DataError names the
    file and line of bytes that are not UTF-8."""
    parent, _, name = path.rstrip("/").rpartition("/")
    try:
        raw = Storage.from_uri(parent or ("/" if path.startswith("/") else ".")
                               ).read_bytes(name)
    except StorageError as exc:
        raise DataError(f"{KEY}.files: cannot read {path}: {exc} (fix: give an existing "
                        "UTF-8 text file, one text per line)") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{KEY}.files: {path}: line {line} is not valid UTF-8 ({exc.reason} "
                        f"at byte {exc.start}) (fix: save the file as UTF-8 text, one text "
                        "per line)") from None
    if "\x00" in text:
        raise DataError(f"{KEY}.files: {path} is not a text file (it holds NUL bytes; fix: "
                        "give a UTF-8 text file, one text per line)")
    return text.splitlines()


def load_transfer_texts(config: TransferTextConfig) -> tuple[datasets.Dataset, dict[str, int]]:
    """The canonical table of the transfer texts (uid, text, text_pair '', label
    :data:`~mtkd.tasks.examples.NO_LABEL`) and what was left out ({"empty", "duplicates",
    "over_max_examples"}: counts). Raises DataError for an unreadable file, and when no
    text is left."""
    from mtkd.tasks.bundled import bundled_texts, normalize_text

    texts: list[str] = []
    if config.bundled:
        texts += bundled_texts(config.bundled)
    for path in config.files:
        texts += _file_texts(path)
    rows: dict[str, dict[str, Any]] = {}
    empty = duplicates = 0
    for raw in texts:
        text = normalize_text(raw)
        if not text:
            empty += 1
            continue
        uid = "transfer-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
        if uid in rows:
            duplicates += 1
            continue
        rows[uid] = {UID: uid, TEXT: text, "label": NO_LABEL}
    ordered = [rows[uid] for uid in sorted(rows)]
    kept = ordered[:config.max_examples] if config.max_examples else ordered
    if not kept:
        raise DataError(f"{KEY}: no text found in {', '.join(_sources(config))} (fix: give "
                        "files with one non-empty text per line)")
    dropped = {"empty": empty, "duplicates": duplicates,
               "over_max_examples": len(ordered) - len(kept)}
    spec = transfer_spec(config)
    return make_split(kept, spec.kind), dropped


def _sources(config: TransferTextConfig) -> list[str]:
    return ([f"bundled:{config.bundled}"] if config.bundled else []) + list(config.files)


def load_transfer(config: ExperimentConfig) -> LoadedTask | None:
    """The transfer text as a task ready to tokenize (one split, ``train``), or None when
    ``student.kd.transfer_text`` is off."""
    transfer = config.student.kd.transfer_text
    if not transfer.enabled:
        return None
    split, dropped = load_transfer_texts(transfer)
    notes = [f"transfer text: {len(split)} texts from {', '.join(_sources(transfer))}"
             + "".join(f", {n} {what.replace('_', ' ')} left out"
                       for what, n in dropped.items() if n)]
    return LoadedTask(transfer_spec(transfer), {"train": split}, dropped, notes)


def transfer_lineage(config: ExperimentConfig, tokenizer: str, content: dict[str, str]) -> str:
    """The tokenized transfer text's lineage: the ``student.kd.transfer_text`` settings, the
    student tokenizer's fingerprint and the raw texts' content fingerprint."""
    return lineage("transfer_text", config, inputs={"tokenizer": tokenizer,
                                                    "content": content})


def prepare_transfer(loaded: LoadedTask, store: Storage, tokenizer: Any, transfer_lineage: str,
                     seed: int, rebuild: bool = False) -> dict[str, Any]:
    """Tokenize and write the transfer text under :data:`TRANSFER_DIR`
    (``store`` = experiment root), or reuse what is there when its record carries
    ``transfer_lineage``; returns the prepare manifest's ``transfer`` entry (lineage,
    content, rows, path)."""
    from mtkd.data.stage import prepare_task  # the one writer of tokenized tasks

    folder = store.child(TRANSFER_DIR)
    old = None if rebuild else reusable(folder, TASK_RECORD, transfer_lineage, TaskRecord)
    if old is not None:
        log.info("[prepare] transfer text unchanged, reusing %s", folder.uri)
        meta = old
    else:
        meta = prepare_task(loaded, tokenizer, folder, transfer_lineage, seed)
    for note in meta.notes:
        log.info("[prepare] %s", note)
    return {"lineage": meta.lineage, "content": meta.content,
            "rows": meta.splits["train"]["rows"], "path": folder.uri}


def recorded_transfer(store: Storage) -> str | None:
    """The lineage of the transfer text the last finished prepare stage wrote (None: it
    wrote none)."""
    entry = (read_manifest(store, "prepare") or {}).get("transfer")
    return entry["lineage"] if entry else None


def add_transfer(data: Any, store: Storage, config: ExperimentConfig) -> None:
    """Add the tokenized transfer text to a student's prepared tasks (``data``: a
    :class:`~mtkd.training.recipe.PreparedTasks`) as train split and spec :data:`TRANSFER`
    (no dev split). Call it after the model's heads are built: it has no head. DataError
    when prepare has not written it."""
    from mtkd.data.prepared import read_prepared

    if not store.exists(f"{TRANSFER_DIR}/{TASK_RECORD}"):
        raise DataError(f"{KEY} is set but prepare has not tokenized it (fix: run prepare "
                        "again: `mtkd run CONFIG` without --only/--from)")
    data.specs[TRANSFER] = transfer_spec(config.student.kd.transfer_text)
    data.train[TRANSFER] = read_prepared(store, TRANSFER, "train")
