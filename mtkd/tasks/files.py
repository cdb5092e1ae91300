"""User task files (source "files"): CSV, TSV, JSONL or Parquet, local or s3://.

Each split's file is read through :class:`mtkd.storage.Storage`, decoded (byte-order mark:
UTF-8/16/32; LF, CRLF or CR line ends), parsed and checked row by row (Python's ``csv``
module for CSV/TSV with field counts and quoting, ``json`` per line, ``pyarrow`` for
Parquet, rows read counted against lines or metadata) and mapped onto the canonical table
(:mod:`mtkd.tasks.examples`) through ``tasks.N.columns`` (role -> column; a role's default
column has the role's name):

* ``text`` (alias ``query``; a ranking task's default is ``query``): required, never empty;
* ``text_pair``: required for pair_classification, optional for regression;
* ``label``: required in train and dev, optional in test (missing: NO_LABEL / NaN); a
  ``tasks.N.no_label`` value is unlabelled (skipped and counted in train/dev).
  Classification: a value of ``tasks.N.labels`` (numbers and true/false match by value);
  regression: a number; ranking: the 0-based index of the right candidate;
* ``candidates`` (ranking): a list of strings (in CSV/TSV a JSON list in one cell);
* ``uid``: used verbatim if the file has the column; otherwise ``<task>-<sha1 of the
  text(s)>[:12]``, so two rows with the same text get the same uid (a duplicate).

CSV use standard quoting (``"a, b"``, ``""`` for a quote), TSV none (GLUE's convention: a
quote is text), unless ``tasks.N.quoting`` says otherwise; every cell is read as text, so
"NA", "007" or "1" stay as written. Labels are matched by value (:mod:`mtkd.tasks.labels`).
See :mod:`mtkd.tasks.validation` for row numbers and docs/DATA_FILES.md for every rule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from mtkd.config.schema import COLUMN_ROLES, TaskConfig
from mtkd.errors import DataError
from mtkd.storage import Storage
from mtkd.tasks.examples import CANDIDATES, LABEL, SPLITS, TEXT, TEXT_PAIR, UID, make_split
from mtkd.tasks.labels import label_key, label_name
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
    check_label_range,
    class_label_parser,
    decode_lines,
    deterministic_subset,
    drop_duplicate_uids,
    empty_split_error,
    headerless_error,
    looks_like_data,
    missing_column_error,
    no_label_set,
    normalize_cell,
    ranking_parser,
    regression_parser,
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
    roles: dict[str, str] = {}
    for role in ("text", "text_pair", "candidates", "label", "uid"):
        if (role == "candidates" and not kind.layout.candidates) or (
                role == "text_pair" and kind.takes_text_pair is False):
            continue
        column = configured.get(role, defaults.get(role, role))
        required = (role in ("text", "candidates")
                    or (role == "text_pair" and kind.takes_text_pair)
                    or (role == "label" and split != "test")
                    or (role in configured and role != "label"))
        if column in found:
            roles[role] = column
        elif required:
            raise missing_column_error(task, file, role, column, found, key, role in configured)
    return roles


def read_table(path: str, fmt: str, resolve: Callable[[list[str]], dict[str, str]],
               bad_rows: BadRows, quoting: str = "auto", header: bool = True,
               labels: list[Any] | tuple[Any, ...] = ()) -> Table:
    """Read one file via Storage; ``resolve`` maps the columns found to role -> column.

    ``quoting`` (CSV/TSV): "csv", "none" or "auto" (csv for CSV, none for TSV); ``header``:
    whether line 1 names the columns (CSV/TSV); ``labels``: the task's class labels, to
    recognise a first row that is data. Every record read is a record counted: CSV/TSV
    records against data lines (:func:`~mtkd.tasks.validation.scan_csv`), JSON lines one
    per line, Parquet rows against the file's metadata.
    """
    parent, _, name = path.rstrip("/").rpartition("/")
    raw = Storage.from_uri(parent or ("/" if path.startswith("/") else ".")).read_bytes(name)
    if fmt == "parquet":
        found, roles, data, rows = _read_parquet(raw, path, resolve, bad_rows.task)
        return Table(path, found, roles, data, rows)
    lines, bad_lines = decode_lines(raw, path, bad_rows.task)
    if fmt == "jsonl":
        found, objects, rows = scan_jsonl(lines, bad_lines, path, bad_rows)
        roles = resolve(found) if found else {}  # empty file: an empty split
        data = {c: [normalize_cell(obj.get(c)) for obj in objects]
                for c in dict.fromkeys(roles.values())}
        return Table(path, found, roles, data, rows)
    delimiter = "\t" if fmt == "tsv" else ","
    if quoting == "auto":
        quoting = "none" if fmt == "tsv" else "csv"
    found, records, rows = scan_csv(lines, bad_lines, delimiter, path, bad_rows, quoting,
                                    header)
    try:
        roles = resolve(found) if found else {}  # empty file: an empty split
    except DataError:
        if header and looks_like_data(found, labels):
            raise headerless_error(bad_rows.task, path, bad_rows.key, found, labels) from None
        raise
    positions = {c: found.index(c) for c in dict.fromkeys(roles.values())}
    data = {c: [record[i] for record in records] for c, i in positions.items()}
    return Table(path, found, roles, data, rows)


def _read_parquet(raw: bytes, path: str, resolve: Callable[[list[str]], dict[str, str]],
                  task: str) -> tuple[list[str], dict[str, str], dict[str, list[Any]],
                                      list[int]]:
    try:
        parquet = pq.ParquetFile(pa.BufferReader(raw))
        found = list(parquet.schema_arrow.names)
    except Exception as exc:
        raise DataError(f"task {task!r}: {path} is not a Parquet file ({exc}) (fix: give a "
                        "Parquet file, or name a text file *.csv, *.tsv or *.jsonl)") from None
    roles = resolve(found)
    kept = list(dict.fromkeys(roles.values()))
    try:
        table = parquet.read(columns=kept)
    except Exception as exc:
        raise DataError(f"task {task!r}: {path}: the Parquet file cannot be read ({exc}) "
                        "(fix: re-write it, e.g. with pandas.DataFrame.to_parquet)") from None
    expected = parquet.metadata.num_rows
    if table.num_rows != expected:
        raise DataError(f"task {task!r}: {path}: read {table.num_rows} rows but the file's "
                        f"metadata says {expected} (fix: re-write the file)")
    data = {c: [normalize_cell(v) for v in table.column(c).to_pylist()] for c in kept}
    return found, roles, data, list(range(1, table.num_rows + 1))


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
                per_split: dict[str, tuple[Table, list[dict[str, Any]], list[Place]]],
                labels: list[str] | tuple[str, ...] = ()) -> dict[str, datasets.Dataset]:
    """Check label ranges, drop duplicate uids (across splits, in train/dev/test order),
    check for empty splits, build the Datasets and apply max_train_examples /
    max_dev_examples (stratified by class for classification). ``labels``: class names."""
    for split, (_, examples, places) in per_split.items():
        check_label_range(examples, places, split, kind.name, len(labels), task.name, key)
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
        out[split] = deterministic_subset(
            make_split(kept, kind), limits.get(split), stratify=kind.has_classes,
            label_names=labels, where=f"task {task.name!r}, {split} split")
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
    no_label = no_label_set(kind.name, task.no_label, key)
    labels: list[Any] = []
    if kind.is_regression:
        parse_label: LabelParser = regression_parser(no_label)
    elif not kind.has_classes:  # the index of the right candidate
        parse_label = ranking_parser(no_label)
    else:
        labels = _labels(task, key)
        parse_label = class_label_parser(labels, key, no_label)
    configured = configured_roles(task, kind, key)
    bad_rows = BadRows(task.bad_rows, key, task.name)
    tables: dict[str, Table] = {}
    for split in (s for s in SPLITS if s in task.files):
        path = task.files[split]
        fmt = file_format(path, task.format, key, task.name)
        if not task.header and fmt not in ("csv", "tsv"):
            raise DataError(f"task {task.name!r}: {key}.header: false is for CSV/TSV files, "
                            f"but {path} is {fmt} (fix: remove {key}.header)")

        def resolve(found: list[str], split: str = split, path: str = path) -> dict[str, str]:
            return resolve_roles(task.name, key, kind, split, path, found, configured,
                                 {"text": kind.layout.text_column(found)})

        tables[split] = read_table(path, fmt, resolve, bad_rows, task.quoting, task.header,
                                   labels)
    check_roles_across_splits(task.name, key, tables)
    per_split = {split: (table, *to_examples(table, split, task.name, parse_label, bad_rows))
                 for split, table in tables.items()}
    names = tuple(label_name(label) for label in labels)
    return finish_task(task, kind, key, bad_rows, per_split, names), bad_rows.summary


def check_roles_across_splits(task: str, key: str, tables: dict[str, Table]) -> None:
    """An optional column (text_pair of a regression task, uid) must be in every split's
    file or in none: a task must not train on single sentences and evaluate on pairs."""
    for role in ("text_pair", "uid"):
        have = [s for s, t in tables.items() if role in t.roles and t.rows]
        lack = [s for s, t in tables.items() if role not in t.roles and t.rows]
        if have and lack:
            with_it = tables[have[0]]
            without = tables[lack[0]]
            raise DataError(
                f"task {task!r}: column {with_it.roles[role]!r} (role {role!r}) is in "
                f"{with_it.file} ({have[0]} split) but not in {without.file} ({lack[0]} "
                f"split; its columns: {', '.join(repr(c) for c in without.columns)}) "
                f"(fix: give every split the column, or none; or set {key}.columns.{role} "
                "to a column every file has)")


def _labels(task: TaskConfig, key: str) -> list[Any]:
    if not task.labels:
        raise DataError(f"task {task.name!r}: {key}.labels is required for a {task.type} task "
                        "from files (fix: list the label values in head order, e.g. labels: "
                        "[negative, positive])")
    if len(task.labels) < 2:
        raise DataError(f"task {task.name!r}: {key}.labels lists one label; a {task.type} "
                        "task needs at least 2 (fix: list every class, e.g. [ham, spam])")
    keys = [label_key(label) for label in task.labels]
    if len(set(keys)) != len(keys):
        raise DataError(f"task {task.name!r}: {key}.labels lists a label twice: "
                        f"{[label_name(x) for x in task.labels]} (numbers and true/false are "
                        "compared by value)")
    return list(task.labels)


def configured_roles(task: TaskConfig, kind: TaskType, key: str) -> dict[str, str]:
    """``tasks.N.columns`` checked against the task type (``query`` becomes ``text``)."""
    configured = dict(task.columns)
    candidates = kind.layout.candidates
    for role in configured:
        if role not in ROLES:
            problem = f"unknown role {role!r}", f"use roles from {', '.join(ROLES)}"
        elif role == "candidates" and not candidates:
            problem = "candidates is for ranking tasks only", "remove it, or use type ranking"
        elif role == "text_pair" and kind.takes_text_pair is False:
            problem = (f"a {task.type} task has no text_pair",
                       "remove it" + ("" if candidates else ", or use type pair_classification"))
        elif role == "query" and "text" in configured:
            problem = "query and text are the same role", "set only one of them"
        else:
            continue
        raise DataError(f"task {task.name!r}: {key}.columns.{role}: {problem[0]} (fix: "
                        f"{problem[1]})")
    if "query" in configured:
        configured["text"] = configured.pop("query")
    return configured
