"""Bad input data: a clear error naming file, row and column, or a counted skip.

Row numbers in messages are what a user sees in the file, counted from 1:

* CSV/TSV: the line number in a text editor. The header is row 1, so the first data
  row is row 2; a record whose quoted field spans several lines is named by its first line.
* JSONL: the line number (blank lines count as lines but hold no row).
* Parquet and datasets from the hub: the record's position, 1 for the first record.

Byte offsets (for non-UTF-8 bytes) are 0-based from the start of the file, as ``cmp`` and
hex editors show them. With ``bad_rows: error`` (the default) the first bad row raises
:class:`DataError`; with ``bad_rows: skip`` the row is left out and counted per reason in a
:class:`BadRowSummary` that the caller prints at the end. A missing column or an empty
split always raises: skipping cannot repair them.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import math
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mtkd.errors import DataError
from mtkd.tasks.examples import NO_LABEL, UID

if TYPE_CHECKING:
    import datasets

NOT_UTF8 = "not_utf8"
BAD_CSV_ROW = "bad_csv_row"  # wrong number of fields, unclosed quote
BAD_JSON_LINE = "bad_json_line"  # invalid JSON, or not a JSON object
EMPTY_TEXT = "empty_text"  # null or blank text / text_pair
EMPTY_UID = "empty_uid"
UNKNOWN_LABEL = "unknown_label"  # a class label missing from tasks.N.labels
BAD_LABEL = "bad_label"  # empty, non-numeric, or not a candidate index
BAD_CANDIDATES = "bad_candidates"  # ranking: not a non-empty list of non-empty strings
DUPLICATE_UID = "duplicate_uid"
LabelParser = Callable[[Any, str, "list[str] | None"], "int | float"]
"""(cell value, split, candidates) -> label; raises RowProblem."""
csv.field_size_limit(2**31 - 1)  # long texts are fine; the default stops at 128 KiB
REASONS = (NOT_UTF8, BAD_CSV_ROW, BAD_JSON_LINE, EMPTY_TEXT, EMPTY_UID, UNKNOWN_LABEL,
           BAD_LABEL, BAD_CANDIDATES, DUPLICATE_UID)


@dataclass(frozen=True)
class BadRow:
    """One bad row: where it is and what is wrong with it."""

    file: str
    row: int | None
    column: str | None
    reason: str
    detail: str

    def where(self) -> str:
        parts = [self.file]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        return ", ".join(parts)

    def __str__(self) -> str:
        return f"{self.where()}: {self.detail}"


class RowProblem(Exception):
    """Raised by a cell parser; the loader adds file, row and column and reports it."""

    def __init__(self, reason: str, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.reason, self.detail, self.fix = reason, detail, fix


@dataclass
class BadRowSummary:
    """Rows skipped under ``bad_rows: skip``: counts per reason and the first examples."""

    task: str = ""
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[BadRow] = field(default_factory=list)
    max_examples: int = 5

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def counts(self) -> dict[str, int]:
        """Skipped rows per reason."""
        return dict(self.by_reason)

    def add(self, bad: BadRow) -> None:
        self.by_reason[bad.reason] = self.by_reason.get(bad.reason, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append(bad)

    def merge(self, other: BadRowSummary) -> None:
        for reason, count in other.by_reason.items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count
        room = self.max_examples - len(self.examples)
        self.examples.extend(other.examples[:max(room, 0)])

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "total": self.total, "counts": self.counts(),
                "examples": [{"file": b.file, "row": b.row, "column": b.column,
                              "reason": b.reason, "detail": b.detail} for b in self.examples]}

    def lines(self) -> list[str]:
        """What to print at the end of a run: ``task 'x': skipped 3 bad row(s) (...)`` and the
        first examples; empty when nothing was skipped."""
        if not self.total:
            return []
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.by_reason.items()))
        lines = [f"task {self.task!r}: skipped {self.total} bad row(s) ({reasons})"]
        lines += [f"  - {b}" for b in self.examples]
        if self.total > len(self.examples):
            lines.append(f"  ... and {self.total - len(self.examples)} more")
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines()) or f"task {self.task!r}: no bad rows"


class BadRows:
    """A task's ``bad_rows`` policy: raise at the first bad row, or skip and count it."""

    def __init__(self, mode: str, key: str, task: str) -> None:
        self.mode, self.key, self.task = mode, key, task
        self.summary = BadRowSummary(task)
        self.per_file: dict[str, int] = {}

    def report(self, file: str, row: int | None, column: str | None, reason: str,
               detail: str, fix: str = "") -> None:
        bad = BadRow(file, row, column, reason, detail)
        if self.mode == "skip":
            self.summary.add(bad)
            self.per_file[file] = self.per_file.get(file, 0) + 1
            return
        skip = f"set {self.key}.bad_rows: skip to skip and count such rows"
        raise DataError(f"task {self.task!r}: {bad} (fix: {fix + '; or ' if fix else ''}{skip})")


def missing_column_error(task: str, file: str, role: str, column: str, found: list[str],
                         key: str, configured: bool) -> DataError:
    how = "" if configured else f" (the default for role {role!r}: {key}.columns.{role} is unset)"
    return DataError(
        f"task {task!r}: {file}: column {column!r} for role {role!r} not found{how}; columns "
        f"found: {', '.join(found) or '(none)'} (fix: set {key}.columns.{role} to one of them, "
        "or rename the column in the file)")


def empty_split_error(task: str, file: str, split: str, skipped: int) -> DataError:
    why = f": all {skipped} row(s) were bad and skipped" if skipped else ""
    return DataError(f"task {task!r}: {file}: split {split!r} has no examples{why} (fix: give "
                     "a file with at least one valid row, or remove the split from files)")


def decode_lines(raw: bytes) -> tuple[list[str], dict[int, str]]:
    """``raw`` split at ``\\n`` (a ``\\r`` before it is kept) and ``{line number: detail}``
    of its non-UTF-8 lines.

    Bad lines are decoded with U+FFFD replacements so their row can still be parsed (to
    find the column); a UTF-8 byte-order mark is dropped.
    """
    offset = 3 if raw.startswith(codecs.BOM_UTF8) else 0
    raw = raw[offset:]
    bad: dict[int, str] = {}
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            try:
                lines.append(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                lines.append(line.decode("utf-8", errors="replace"))
                bad[number] = (f"byte 0x{line[exc.start]:02x} at byte offset {offset + exc.start}"
                               " is not valid UTF-8")
            offset += len(line) + 1
    if lines and lines[-1] == "":
        lines.pop()
    return lines, bad


UTF8_FIX = "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)"


CSV_FIX = ('quote fields that contain the delimiter, quotes or line breaks ("a, b"; a quote '
           'inside is ""), or correct the row')


def scan_csv(lines: list[str], bad_lines: dict[int, str], delimiter: str, file: str,
             bad_rows: BadRows) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, good records and their first line numbers; bad records are reported."""
    reader = csv.reader((line + "\n" for line in lines), delimiter=delimiter)
    header: list[str] | None = None
    records: list[list[str]] = []
    rows: list[int] = []
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            why = ("a line break (\\r) inside an unquoted field" if "new-line" in str(exc)
                   else f"cannot parse the row ({exc})")
            bad_rows.report(file, start, None, BAD_CSV_ROW, why, CSV_FIX)
            continue
        end = reader.line_num
        if len(record) <= 1 and not "".join(record).strip():
            continue  # a blank line holds no row
        if header is None:
            if start in bad_lines:
                raise DataError(f"task {bad_rows.task!r}: {file}, row {start} (the header): "
                                f"{bad_lines[start]} (fix: {UTF8_FIX})")
            twice = sorted({c for c in record if record.count(c) > 1})
            if twice:
                raise DataError(f"task {bad_rows.task!r}: {file}, row {start} (the header): "
                                f"column name(s) {', '.join(twice)} appear twice (fix: rename)")
            header = record
            continue
        bad = next((bad_lines[n] for n in range(start, end + 1) if n in bad_lines), None)
        if bad is not None:
            column = next((c for c, v in zip(header, record, strict=False) if "\ufffd" in v), None)
            bad_rows.report(file, start, column, NOT_UTF8, bad, UTF8_FIX)
        elif (end == len(lines) and sum(x.count('"') for x in lines[start - 1:end]) % 2
              and (end > start or len(record) != len(header))):
            bad_rows.report(file, start, None, BAD_CSV_ROW, "a quoted field opened in this "
                            "row is never closed (it runs to the end of the file)", CSV_FIX)
        elif len(record) != len(header):
            column = header[len(record)] if len(record) < len(header) else None
            bad_rows.report(file, start, column, BAD_CSV_ROW, f"expected {len(header)} fields "
                            f"({', '.join(header)}), found {len(record)}", CSV_FIX)
        else:
            records.append(record)
            rows.append(start)
    return header or [], records, rows


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true/false", type(None): "null"}


def scan_jsonl(lines: list[str], bad_lines: dict[int, str], file: str, bad_rows: BadRows
               ) -> tuple[list[str], list[dict[str, Any]], list[int]]:
    """Columns (keys in order of first appearance), good objects and their line numbers."""
    columns: dict[str, None] = {}
    objects: list[dict[str, Any]] = []
    rows: list[int] = []
    fix = 'write one JSON object per line, e.g. {"text": "...", "label": "..."}'
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            obj = exc
        if number in bad_lines:
            column = next((k for k, v in obj.items() if "\ufffd" in json.dumps(
                v, ensure_ascii=False)), None) if isinstance(obj, dict) else None
            bad_rows.report(file, number, column, NOT_UTF8, bad_lines[number], UTF8_FIX)
        elif isinstance(obj, json.JSONDecodeError):
            bad_rows.report(file, number, None, BAD_JSON_LINE,
                            f"invalid JSON at character {obj.pos + 1}: {obj.msg}", fix)
        elif not isinstance(obj, dict):
            bad_rows.report(file, number, None, BAD_JSON_LINE, "expected a JSON object "
                            f"{{...}}, found {_JSON_TYPES.get(type(obj), 'a value')}", fix)
        else:
            columns.update(dict.fromkeys(obj))
            objects.append(obj)
            rows.append(number)
    return list(columns), objects, rows


def as_text(value: Any) -> str | None:
    """A cell as text: None and NaN are None; true/false, numbers and lists become text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def normalize_cell(value: Any) -> Any:
    return [as_text(v) for v in value] if isinstance(value, (list, tuple)) else as_text(value)


def _missing(split: str, unlabelled: float) -> float:
    if split == "test":
        return unlabelled
    raise RowProblem(BAD_LABEL, "label is empty", "fill in the label, or remove the row")


def class_label_parser(labels: list[str], key: str) -> LabelParser:
    index = {label: i for i, label in enumerate(labels)}

    def parse(value: Any, split: str, candidates: list[str] | None = None) -> int:
        text = as_text(value)
        if text is None or not text.strip():
            return int(_missing(split, NO_LABEL))
        found = index.get(text, index.get(text.strip()))
        if found is None and text.replace(".", "", 1).lstrip("-").isdigit():
            found = index.get(str(int(float(text)))) if float(text).is_integer() else None
        if found is None:
            raise RowProblem(UNKNOWN_LABEL, f"label {text!r} is not one of the labels "
                             f"{list(labels)}", f"add it to {key}.labels, or correct the row")
        return found
    return parse


def regression_label(value: Any, split: str, candidates: list[str] | None = None) -> float:
    text = as_text(value)
    if text is None or not text.strip():
        return _missing(split, math.nan)
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise RowProblem(BAD_LABEL, f"label {text!r} is not a number", "use a number like 3.5")
    return score


def ranking_label(value: Any, split: str, candidates: list[str] | None = None) -> int:
    text, count = as_text(value), len(candidates or [])
    if text is None or not text.strip():
        return int(_missing(split, NO_LABEL))
    try:
        index = int(float(text)) if float(text).is_integer() else -1
    except ValueError:
        index = -1
    if not 0 <= index < count:
        raise RowProblem(BAD_LABEL, f"label {text!r} is not the index of a candidate (0 to "
                         f"{count - 1})", "give the 0-based position of the right candidate")
    return index


def cell_text(value: Any, role: str) -> str:
    text = as_text(value)
    if text is None or not text.strip():
        raise RowProblem(EMPTY_TEXT, f"{role} is empty", f"write the {role}, or remove the row")
    return text


def cell_candidates(value: Any) -> list[str]:
    if isinstance(value, str):
        with suppress(ValueError):
            value = json.loads(value)
    items = [as_text(v) for v in value] if isinstance(value, (list, tuple)) else None
    if not items or any(c is None or not c.strip() for c in items):
        raise RowProblem(BAD_CANDIDATES, "candidates must be a non-empty list of non-empty "
                         "strings", 'e.g. ["first answer", "second answer"] (JSON in CSV)')
    return [str(c) for c in items]


def drop_duplicate_uids(entries: list[tuple[str, str, int | None, str | None, str]],
                        bad_rows: BadRows, fix: str) -> set[int]:
    """Positions of ``(uid, file, row, column, split)`` entries whose uid came earlier (each
    reported, naming both rows)."""
    first: dict[str, int] = {}
    dropped: set[int] = set()
    for i, (uid, file, row, column, split) in enumerate(entries):
        j = first.setdefault(uid, i)
        if j != i:
            _, other_file, other_row, _, other_split = entries[j]
            other = BadRow(other_file, other_row, None, DUPLICATE_UID, "").where()
            same = (f"; the same file is given as the {other_split} and the {split} split"
                    if other_file == file and other_split != split else "")
            bad_rows.report(file, row, column, DUPLICATE_UID, f"uid {uid!r} is also the uid of "
                            f"{other} in the {other_split} split{same}", fix)
            dropped.add(i)
    return dropped


def deterministic_subset(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    """At most ``n`` rows: those whose sha1(uid) is smallest, kept in their original order.

    The same data and ``n`` always give the same subset, whatever the row order, and a
    larger ``n`` only adds rows.
    """
    if n is None or n >= len(ds):
        return ds
    digests = [hashlib.sha1(str(uid).encode("utf-8")).hexdigest() for uid in ds[UID]]
    keep = sorted(sorted(range(len(ds)), key=digests.__getitem__)[:n])
    return ds.select(keep)
