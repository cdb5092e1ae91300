"""User task files (source "files"): CSV, TSV, JSONL or Parquet, local or s3://.

Each split's file is read through :class:`mtkd.storage.Storage`, checked row by row (UTF-8,
CSV field counts and quoting, one JSON object per line), loaded with the ``datasets``
library from a cleaned local copy and mapped onto the canonical example table
(:mod:`mtkd.tasks.examples`) through ``tasks.N.columns`` (role -> column; a role's default
column has the role's name):

* ``text`` (alias ``query``; a ranking task's default is ``query``): required, never empty;
* ``text_pair``: required for pair_classification, optional for regression;
* ``label``: required in train and dev, optional in test (missing: NO_LABEL / NaN).
  Classification: a value of ``tasks.N.labels`` (numbers and true/false match their text);
  regression: a number; ranking: the 0-based index of the right candidate;
* ``candidates`` (ranking): a list of strings (in CSV/TSV a JSON list in one cell);
* ``uid``: used verbatim if the file has the column; otherwise ``<task>-<sha1 of the
  text(s)>[:12]``, so two rows with the same text get the same uid (a duplicate).

CSV/TSV use standard quoting (``"a, b"``, ``""`` for a quote) and read every cell as text,
so "NA", "007" or "1" stay as written. See :mod:`mtkd.tasks.validation` for row numbers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow.parquet as pq

from mtkd.config.schema import COLUMN_ROLES, TaskConfig
from mtkd.errors import DataError
from mtkd.storage import Storage
from mtkd.tasks.examples import CANDIDATES, LABEL, SPLITS, TEXT, TEXT_PAIR, UID, make_split
from mtkd.tasks.types import TaskType, task_type
from mtkd.tasks.validation import (
    EMPTY_UID,
    BadRows,
    BadRowSummary,
    LabelParser,
    RowProblem,
    as_text,
    cell_candidates,
    cell_text,
    class_label_parser,
    decode_lines,
    deterministic_subset,
    drop_duplicate_uids,
    empty_split_error,
    missing_column_error,
    normalize_cell,
    ranking_label,
    regression_label,
    scan_csv,
    scan_jsonl,
)

__all__ = ["deterministic_subset", "load_file_task", "read_table"]

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
              ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
ROLES = COLUMN_ROLES


@dataclass
class Table:
    """One split's file as read: its columns, the roles found, the kept columns' values."""

    file: str
    columns: list[str]
    roles: dict[str, str]
    data: dict[str, list[Any]]
    rows: list[int]
    """User-facing row number of each record (see mtkd.tasks.validation)."""


def task_key(index: int | None) -> str:
    return f"tasks.{'N' if index is None else index}"


def file_format(path: str, fmt: str, key: str, task: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for ext, found in EXTENSIONS.items():
        if name.endswith(ext):
            return found
    raise DataError(f"task {task!r}: cannot tell the format of {path} from its extension (fix: "
                    f"set {key}.format to csv, tsv, jsonl or parquet, or name the file *.csv, "
                    "*.tsv, *.jsonl or *.parquet)")


def resolve_roles(task: str, key: str, kind: TaskType, split: str, file: str, found: list[str],
                  configured: dict[str, str], defaults: dict[str, str]) -> dict[str, str]:
    """Role -> column of one file; DataError for a required or configured column it lacks."""
    ranking = kind.head == "ranking"
    roles: dict[str, str] = {}
    for role in ("text", "text_pair", "candidates", "label", "uid"):
        if (role == "candidates" and not ranking) or (
                role == "text_pair" and (ranking or kind.pair is False)):
            continue
        column = configured.get(role, defaults.get(role, role))
        required = (role in ("text", "candidates") or (role == "text_pair" and kind.pair)
                    or (role == "label" and split != "test")
                    or (role in configured and role != "label"))
        if column in found:
            roles[role] = column
        elif required:
            raise missing_column_error(task, file, role, column, found, key, role in configured)
    return roles


def read_table(path: str, fmt: str, resolve: Callable[[list[str]], dict[str, str]],
               bad_rows: BadRows) -> Table:
    """Read one file via Storage; ``resolve`` maps the columns found to role -> column."""
    parent, _, name = path.rstrip("/").rpartition("/")
    raw = Storage.from_uri(parent or ("/" if path.startswith("/") else ".")).read_bytes(name)
    with tempfile.TemporaryDirectory(prefix="mtkd-data-") as tmp:
        local = os.path.join(tmp, f"data.{fmt}")
        if fmt == "parquet":
            with open(local, "wb") as out:
                out.write(raw)
            try:
                found = list(pq.read_schema(local).names)
            except Exception as exc:
                raise DataError(f"task {bad_rows.task!r}: {path} is not a Parquet file "
                                f"({exc})") from None
            roles = resolve(found)
            ds = _load("parquet", local, tmp, path, bad_rows.task)
            rows = list(range(1, len(ds) + 1))
        else:
            lines, bad_lines = decode_lines(raw)
            if fmt == "jsonl":
                found, records, rows = scan_jsonl(lines, bad_lines, path, bad_rows)
                roles = resolve(found) if found else {}  # empty file: an empty split
                with open(local, "w", encoding="utf-8") as out:
                    for obj in records:
                        kept = {c: normalize_cell(obj.get(c)) for c in roles.values()}
                        out.write(json.dumps(kept, ensure_ascii=False) + "\n")
                kwargs: dict[str, Any] = {}
            else:
                delimiter = "\t" if fmt == "tsv" else ","
                found, records, rows = scan_csv(lines, bad_lines, delimiter, path, bad_rows)
                roles = resolve(found) if found else {}  # empty file: an empty split
                with open(local, "w", encoding="utf-8", newline="") as out:
                    csv.writer(out, delimiter=delimiter, lineterminator="\n",
                               quoting=csv.QUOTE_ALL).writerows([found, *records])
                kwargs = {"delimiter": delimiter, "keep_default_na": False,
                          "converters": dict.fromkeys(found, str)}
            if not records:
                return Table(path, found, roles, {c: [] for c in roles.values()}, [])
            ds = _load("json" if fmt == "jsonl" else "csv", local, tmp, path, bad_rows.task,
                       **kwargs)
        if len(ds) != len(rows):
            raise RuntimeError(f"{path}: datasets read {len(ds)} rows, the check {len(rows)}")
        data = ds.select_columns(list(dict.fromkeys(roles.values()))).to_dict()
    return Table(path, found, roles, data, rows)


@contextmanager
def _quiet() -> Iterator[None]:
    bars_off = datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_off:
            datasets.enable_progress_bars()


def _load(builder: str, local: str, tmp: str, file: str, task: str, **kwargs: Any
          ) -> datasets.Dataset:
    with _quiet():
        try:
            return datasets.load_dataset(builder, data_files=local, split="train",
                                         cache_dir=os.path.join(tmp, "cache"), **kwargs)
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise DataError(f"task {task!r}: {file} could not be read as {builder}: "
                            f"{type(cause).__name__}: {cause}") from exc


def content_uid(task: str, example: dict[str, Any]) -> str:
    key = [example[TEXT], example[TEXT_PAIR], example.get(CANDIDATES)]
    return f"{task}-{hashlib.sha1(json.dumps(key).encode('utf-8')).hexdigest()[:12]}"


Place = tuple[str, str, "int | None", "str | None", str]
"""(uid, file, row, column, split) of one example."""


def to_examples(table: Table, split: str, task: str, parse_label: LabelParser,
                bad_rows: BadRows, uid_format: Callable[[str, str], str] | None = None
                ) -> tuple[list[dict[str, Any]], list[Place]]:
    """Canonical rows of ``table`` and where each came from; bad rows are reported."""
    roles, data = table.roles, table.data
    examples: list[dict[str, Any]] = []
    places: list[Place] = []
    for i, row in enumerate(table.rows):
        column: str | None = None
        try:
            column = roles["text"]
            ex: dict[str, Any] = {TEXT: cell_text(data[column][i], "text"), TEXT_PAIR: ""}
            if "text_pair" in roles:
                column = roles["text_pair"]
                ex[TEXT_PAIR] = cell_text(data[column][i], "text_pair")
            if "candidates" in roles:
                column = roles["candidates"]
                ex[CANDIDATES] = cell_candidates(data[column][i])
            column = roles.get("label")
            ex[LABEL] = parse_label(data[column][i] if column else None, split,
                                    ex.get(CANDIDATES))
            column = roles.get("uid")
            if column is None:
                ex[UID] = content_uid(task, ex)
            else:
                uid = as_text(data[column][i])
                if uid is None or not uid.strip():
                    raise RowProblem(EMPTY_UID, "uid is empty", "give every row a unique uid")
                ex[UID] = uid_format(uid, split) if uid_format else uid
        except RowProblem as problem:
            bad_rows.report(table.file, row, column, problem.reason, problem.detail, problem.fix)
            continue
        examples.append(ex)
        places.append((ex[UID], table.file, row, roles.get("uid", roles["text"]), split))
    return examples, places


def finish_task(task: TaskConfig, kind: TaskType, key: str, bad_rows: BadRows,
                per_split: dict[str, tuple[Table, list[dict[str, Any]], list[Place]]]
                ) -> dict[str, datasets.Dataset]:
    """Drop duplicate uids (across splits, in train/dev/test order), check for empty splits,
    build the Datasets and apply max_train_examples / max_dev_examples."""
    order = sorted(per_split, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS))
    owners = [(split, j) for split in order for j in range(len(per_split[split][2]))]
    entries = [per_split[split][2][j] for split, j in owners]
    by_uid = any("uid" in per_split[s][0].roles for s in order)
    fix = ("make the uids unique" if by_uid else "the rows have the same text, from which the "
           f"uid is derived: remove one, or add an id column and set {key}.columns.uid")
    dropped = {owners[i] for i in drop_duplicate_uids(entries, bad_rows, fix)}
    out: dict[str, datasets.Dataset] = {}
    limits = {"train": task.max_train_examples, "dev": task.max_dev_examples}
    for split in order:
        table, examples, _ = per_split[split]
        kept = [ex for j, ex in enumerate(examples) if (split, j) not in dropped]
        if not kept:
            raise empty_split_error(task.name, table.file, split,
                                    bad_rows.per_file.get(table.file, 0))
        out[split] = deterministic_subset(make_split(kept, kind), limits.get(split))
    return out


def load_file_task(task: TaskConfig, index: int | None = None
                   ) -> tuple[dict[str, datasets.Dataset], BadRowSummary]:
    """The splits of a source "files" task as canonical Datasets, and the skipped bad rows.

    ``index`` is the task's position in ``tasks`` (for ``tasks.N...`` in messages).
    """
    key = task_key(index)
    if task.type is None:
        raise DataError(f"task {task.name!r}: {key}.type is required for source 'files'")
    kind = task_type(task.type)
    unknown = sorted(set(task.files) - set(SPLITS))
    if unknown:
        raise DataError(f"task {task.name!r}: {key}.files has unknown split(s) "
                        f"{', '.join(unknown)} (fix: use {', '.join(SPLITS)})")
    if kind.is_regression:
        parse_label: LabelParser = regression_label
    elif kind.head == "ranking":
        parse_label = ranking_label
    else:
        parse_label = class_label_parser(_labels(task, key), key)
    configured = configured_roles(task, kind, key)
    bad_rows = BadRows(task.bad_rows, key, task.name)
    per_split = {}
    for split in (s for s in SPLITS if s in task.files):
        path = task.files[split]
        fmt = file_format(path, task.format, key, task.name)

        def resolve(found: list[str], split: str = split, path: str = path) -> dict[str, str]:
            ranking = kind.head == "ranking"
            text = "query" if ranking and ("query" in found or "text" not in found) else "text"
            return resolve_roles(task.name, key, kind, split, path, found, configured,
                                 {"text": text})

        table = read_table(path, fmt, resolve, bad_rows)
        per_split[split] = (table, *to_examples(table, split, task.name, parse_label, bad_rows))
    return finish_task(task, kind, key, bad_rows, per_split), bad_rows.summary


def _labels(task: TaskConfig, key: str) -> list[str]:
    if not task.labels:
        raise DataError(f"task {task.name!r}: {key}.labels is required for a {task.type} task "
                        "from files (fix: list the label values in head order, e.g. labels: "
                        "[negative, positive])")
    if len(set(task.labels)) != len(task.labels):
        raise DataError(f"task {task.name!r}: {key}.labels lists a label twice: {task.labels}")
    return [str(label) for label in task.labels]


def configured_roles(task: TaskConfig, kind: TaskType, key: str) -> dict[str, str]:
    """``tasks.N.columns`` checked against the task type (``query`` becomes ``text``)."""
    configured = dict(task.columns)
    ranking = kind.head == "ranking"
    for role in configured:
        if role not in ROLES:
            problem = f"unknown role {role!r}", f"use roles from {', '.join(ROLES)}"
        elif role == "candidates" and not ranking:
            problem = "candidates is for ranking tasks only", "remove it, or use type ranking"
        elif role == "text_pair" and (ranking or kind.pair is False):
            problem = (f"a {task.type} task has no text_pair",
                       "remove it" + ("" if ranking else ", or use type pair_classification"))
        elif role == "query" and "text" in configured:
            problem = "query and text are the same role", "set only one of them"
        else:
            continue
        raise DataError(f"task {task.name!r}: {key}.columns.{role}: {problem[0]} (fix: "
                        f"{problem[1]})")
    if "query" in configured:
        configured["text"] = configured.pop("query")
    return configured
