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
import difflib
import hashlib
import heapq
import json
import logging
import math
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mtkd.errors import DataError
from mtkd.tasks.examples import CANDIDATES, LABEL, NO_LABEL, UID
from mtkd.tasks.labels import (
    DEFAULT_NO_LABEL,
    DEFAULT_NO_LABEL_REGRESSION,
    is_blank,
    label_key,
    label_name,
)

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("mtkd")
NOT_UTF8 = "not_utf8"
BAD_CSV_ROW = "bad_csv_row"  # wrong number of fields, unclosed quote
BAD_JSON_LINE = "bad_json_line"  # invalid JSON, or not a JSON object
EMPTY_TEXT = "empty_text"  # null or blank text / text_pair
EMPTY_UID = "empty_uid"
UNKNOWN_LABEL = "unknown_label"  # a class label missing from tasks.N.labels
BAD_LABEL = "bad_label"  # empty, non-numeric, or not a candidate index
BAD_CANDIDATES = "bad_candidates"  # ranking: not a non-empty list of non-empty strings
DUPLICATE_UID = "duplicate_uid"
UNLABELLED = "unlabelled"  # a no_label cell in train/dev: always skipped and counted
LabelParser = Callable[[Any, str, "list[str] | None"], "int | float"]
"""(cell value, split, candidates) -> label; raises RowProblem."""
csv.field_size_limit(2**31 - 1)  # long texts are fine; the default stops at 128 KiB
REASONS = (NOT_UTF8, BAD_CSV_ROW, BAD_JSON_LINE, EMPTY_TEXT, EMPTY_UID, UNKNOWN_LABEL,
           BAD_LABEL, BAD_CANDIDATES, DUPLICATE_UID, UNLABELLED)


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
    first_unlabelled: list[BadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Things a user should know that are not errors (e.g. rows spanning several lines)."""

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def counts(self) -> dict[str, int]:
        """Skipped rows per reason."""
        return dict(self.by_reason)

    def add(self, bad: BadRow) -> None:
        self.by_reason[bad.reason] = self.by_reason.get(bad.reason, 0) + 1
        if bad.reason == UNLABELLED:
            if not self.first_unlabelled:
                self.first_unlabelled.append(bad)
        elif len(self.examples) < self.max_examples:
            self.examples.append(bad)

    def merge(self, other: BadRowSummary) -> None:
        for reason, count in other.by_reason.items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count
        room = self.max_examples - len(self.examples)
        self.examples.extend(other.examples[:max(room, 0)])
        self.notes.extend(other.notes)
        if not self.first_unlabelled:
            self.first_unlabelled.extend(other.first_unlabelled[:1])

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "total": self.total, "counts": self.counts(),
                "examples": [{"file": b.file, "row": b.row, "column": b.column,
                              "reason": b.reason, "detail": b.detail}
                             for b in self.examples + self.first_unlabelled],
                "notes": list(self.notes)}

    def lines(self) -> list[str]:
        """What to print at the end of a run: ``task 'x': skipped 3 bad row(s) (...)`` and the
        first examples, unlabelled rows skipped, and notes; empty when there is nothing."""
        lines: list[str] = []
        unlabelled = self.by_reason.get(UNLABELLED, 0)
        if unlabelled:
            first = self.first_unlabelled[0] if self.first_unlabelled else None
            lines.append(f"task {self.task!r}: skipped {unlabelled} unlabelled row(s) in "
                         f"train/dev (label in tasks.N.no_label)"
                         + (f", first: {first}" if first else ""))
        bad = self.total - unlabelled
        if bad:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.by_reason.items())
                                if r != UNLABELLED)
            lines.append(f"task {self.task!r}: skipped {bad} bad row(s) ({reasons})")
            lines += [f"  - {b}" for b in self.examples]
            if bad > len(self.examples):
                lines.append(f"  ... and {bad - len(self.examples)} more")
        lines += [f"task {self.task!r}: {note}" for note in self.notes]
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines()) or f"task {self.task!r}: no bad rows"


class BadRows:
    """A task's ``bad_rows`` policy: raise at the first bad row, or skip and count it.
    Unlabelled rows (reason ``unlabelled``) are always skipped and counted."""

    def __init__(self, mode: str, key: str, task: str) -> None:
        self.mode, self.key, self.task = mode, key, task
        self.summary = BadRowSummary(task)
        self.per_file: dict[str, int] = {}

    @property
    def notes(self) -> list[str]:
        return self.summary.notes

    def report(self, file: str, row: int | None, column: str | None, reason: str,
               detail: str, fix: str = "") -> None:
        bad = BadRow(file, row, column, reason, detail)
        if self.mode == "skip" or reason == UNLABELLED:
            self.summary.add(bad)
            self.per_file[file] = self.per_file.get(file, 0) + 1
            return
        skip = f"set {self.key}.bad_rows: skip to skip and count such rows"
        raise DataError(f"task {self.task!r}: {bad} (fix: {fix + '; or ' if fix else ''}{skip})")


def missing_column_error(task: str, file: str, role: str, column: str, found: list[str],
                         key: str, configured: bool) -> DataError:
    how = "" if configured else f" (the default for role {role!r}: {key}.columns.{role} is unset)"
    near = next((c for c in found if c.strip().lower() == column.strip().lower()), None)
    if near is None:
        close = difflib.get_close_matches(column, found, n=1, cutoff=0.6)
        near = close[0] if close else None
    hint = f"did you mean {near!r}? " if near is not None else ""
    return DataError(
        f"task {task!r}: {file}: column {column!r} for role {role!r} not found{how}; columns "
        f"found: {', '.join(repr(c) for c in found) or '(none)'} (fix: {hint}set "
        f"{key}.columns.{role} to one of them, or rename the column in the file)")


def looks_like_data(header: list[str], labels: list[Any] = ()) -> bool:
    """Whether a first row reads as a data row rather than column names: an empty cell, a
    number, a class label, or a sentence (four words or more)."""
    keys = {label_key(label) for label in labels}
    for cell in header:
        text = cell.strip()
        if not text or len(text.split()) >= 4 or label_key(text) in keys:
            return True
        try:
            float(text)
            return True
        except ValueError:
            continue
    return False


def headerless_error(task: str, file: str, key: str, header: list[str],
                     labels: list[Any] = ()) -> DataError:
    """Row 1 looks like data: show the columns by position and how to name them."""
    keys = {label_key(label) for label in labels}
    text = max(range(len(header)), key=lambda i: len(header[i]))
    label = next((i for i, c in enumerate(header) if i != text and label_key(c) in keys), None)
    if label is None:
        label = next((i for i, c in enumerate(header) if i != text and c.strip()
                      and label_key(c).lstrip("-").replace(".", "", 1).isdigit()), None)
    cells = ", ".join(f"{i}: {c[:40] + '...' if len(c) > 40 else c!r}"
                      for i, c in enumerate(header))
    example = f'text: "{text}"' + (f', label: "{label}"' if label is not None else "")
    return DataError(
        f"task {task!r}: {file}: row 1 looks like data, not a header ({cells}); the file "
        f"seems to have no header row (fix: set {key}.header: false and name the roles by "
        f"column position, e.g. {key}.columns: {{{example}}}; or add a first line naming "
        "the columns)")


def empty_split_error(task: str, file: str, split: str, skipped: int) -> DataError:
    why = f": all {skipped} row(s) were bad or unlabelled and skipped" if skipped else ""
    return DataError(f"task {task!r}: {file}: split {split!r} has no examples{why} (fix: give "
                     "a file with at least one valid row, or remove the split from files)")


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))
"""Byte-order marks, longest first (UTF-32 LE starts with UTF-16 LE's mark)."""
_BINARY = ((b"PK\x03\x04", "a zip archive (an .xlsx/.ods spreadsheet?)",
            "export the sheet as CSV (UTF-8) or 'Unicode text' (TSV)"),
           (b"\xd0\xcf\x11\xe0", "an old Excel (.xls) or Office file",
            "export the sheet as CSV (UTF-8)"),
           (b"\x1f\x8b", "gzip-compressed", "decompress it (gunzip)"),
           (b"PAR1", "a Parquet file", "name it *.parquet or set tasks.N.format: parquet"),
           (b"BZh", "bzip2-compressed", "decompress it (bunzip2)"))


def file_encoding_error(file: str, task: str, what: str, fix: str) -> DataError:
    return DataError(f"task {task!r}: {file}: {what} (fix: {fix})")


def split_lines(text: str) -> list[str]:
    """Lines of ``text`` with LF, CRLF or (old Mac) CR line ends: a file without any LF is
    split at CR; otherwise at LF, with one CR before it dropped. A last empty line (the
    final line end) is not a line."""
    lines = text.split("\r") if "\n" not in text else [
        line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def decode_lines(raw: bytes, file: str = "", task: str = ""
                 ) -> tuple[list[str], dict[int, str]]:
    """The lines of a text file (:func:`split_lines`) and ``{line number: detail}`` of
    lines that are not valid UTF-8.

    A byte-order mark picks the encoding (UTF-8, UTF-16 or UTF-32, either byte order; a
    spreadsheet's "Unicode text" export is UTF-16) and is dropped; without one the file
    must be UTF-8. Bad UTF-8 lines are decoded with U+FFFD replacements so their row can
    still be parsed (to find the column). A file that is not text at all (NUL bytes: UTF-16
    without a mark, a spreadsheet, a compressed file) raises DataError naming the fix.
    """
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            if encoding == "utf-8":
                break
            try:
                return split_lines(raw[len(bom):].decode(encoding)), {}
            except UnicodeDecodeError as exc:
                raise file_encoding_error(
                    file, task, f"starts with a {encoding.upper()} byte-order mark but byte "
                    f"offset {len(bom) + exc.start} is not valid {encoding.upper()} "
                    f"({exc.reason})", "re-save the file as UTF-8 text") from None
    for magic, what, fix in _BINARY:
        if raw.startswith(magic):
            raise file_encoding_error(file, task, f"is {what}, not a text file", fix)
    if b"\x00" in raw:
        head = raw[:4096]
        odd_zeros = head[1::2].count(0) > len(head) // 4
        even_zeros = head[0::2].count(0) > len(head) // 4
        if odd_zeros != even_zeros:
            order = "le" if odd_zeros else "be"
            raise file_encoding_error(
                file, task, f"looks like UTF-16 ({order.upper()}) without a byte-order mark",
                f"re-save it as UTF-8, e.g. `iconv -f utf-16{order} -t utf-8 IN > OUT`")
        raise file_encoding_error(file, task, f"holds NUL bytes (first at byte offset "
                                  f"{raw.index(0)}): not a text file",
                                  "give a CSV/TSV/JSONL text file saved as UTF-8")
    offset = 3 if raw.startswith(codecs.BOM_UTF8) else 0
    raw = raw[offset:]
    try:
        return split_lines(raw.decode("utf-8")), {}
    except UnicodeDecodeError:
        pass
    bad: dict[int, str] = {}
    separator = b"\r" if b"\n" not in raw else b"\n"
    lines: list[str] = []
    for number, line in enumerate(raw.split(separator), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            lines.append(line.decode("utf-8", errors="replace"))
            bad[number] = (f"byte 0x{line[exc.start]:02x} at byte offset {offset + exc.start}"
                           " is not valid UTF-8")
        offset += len(line) + 1
    if separator == b"\n":
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if lines and lines[-1] == "":
        lines.pop()
    return lines, bad


UTF8_FIX = ("save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`, or "
            "a spreadsheet's \"CSV UTF-8\" export)")


CSV_FIX = ('quote fields that contain the delimiter, quotes or line breaks ("a, b"; a quote '
           'inside is ""), or correct the row')


def _looks_like_row(line: str, delimiter: str, width: int) -> bool:
    """A line that on its own splits into a whole row and holds no quote."""
    return width > 1 and '"' not in line and len(line.split(delimiter)) == width


def scan_csv(lines: list[str], bad_lines: dict[int, str], delimiter: str, file: str,
             bad_rows: BadRows, quoting: str = "csv", header_row: bool = True
             ) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, good records and their first line numbers; bad records are reported.

    ``quoting`` "csv": standard quoting, strict (a quote that closes a field must be
    followed by the delimiter or the line end), and a quoted field may span lines unless
    a line inside it would be a whole row of its own (a stray quote swallowing rows is
    reported, never merged silently). "none": a quote is text and every line is one row.
    Without ``header_row`` the columns are named "0", "1", ... and line 1 is data.
    """
    fix = CSV_FIX if quoting == "csv" else (
        f"a field cannot hold the delimiter when {bad_rows.key}.quoting is none: remove it, "
        "or quote the fields and set quoting: csv")
    quote_fix = (f"if quotes are text in this file (as in GLUE's TSV files) set "
                 f"{bad_rows.key}.quoting: none; otherwise {CSV_FIX}")
    options: dict[str, Any] = ({"quoting": csv.QUOTE_NONE} if quoting == "none"
                               else {"strict": True})
    reader = csv.reader((line + "\n" for line in lines), delimiter=delimiter, **options)
    header: list[str] | None = None
    records: list[list[str]] = []
    rows: list[int] = []
    multiline: list[int] = []
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if "new-line" in str(exc):
                why = "a carriage return (\\r) inside a field that is not quoted"
            elif "unexpected end of data" in str(exc):
                why = ("a quoted field opened in this row is never closed (it runs to the "
                       "end of the file)")
            elif "expected after" in str(exc):
                why = (f"a quote closes a quoted field but is not followed by the delimiter "
                       f"({exc}): the field started with a quote that is text")
            else:
                why = f"cannot parse the row ({exc})"
            if header is None and header_row:
                raise DataError(f"task {bad_rows.task!r}: {file}, row {start} (the header): "
                                f"{why} (fix: {quote_fix})") from None
            bad_rows.report(file, start, None, BAD_CSV_ROW, why,
                            quote_fix if "quote" in why else fix)
            if "never closed" in why:
                break
            continue
        end = reader.line_num
        if len(record) <= 1 and is_blank("".join(record)):
            continue  # a blank line holds no row
        if header is None:
            if not header_row:
                header = [str(i) for i in range(len(record))]
            else:
                if start in bad_lines:
                    raise DataError(f"task {bad_rows.task!r}: {file}, row {start} (the "
                                    f"header): {bad_lines[start]} (fix: {UTF8_FIX})")
                twice = sorted({c for c in record if record.count(c) > 1})
                if twice:
                    raise DataError(f"task {bad_rows.task!r}: {file}, row {start} (the "
                                    f"header): column name(s) "
                                    f"{', '.join(repr(c) for c in twice)} appear twice "
                                    "(fix: rename)")
                header = record
                continue
        bad = next((bad_lines[n] for n in range(start, end + 1) if n in bad_lines), None)
        swallowed = [n for n in range(start + 1, end)
                     if _looks_like_row(lines[n - 1], delimiter, len(header))]
        if delimiter != "\t":  # commas in a multi-line text are common: counted, not refused
            swallowed = []
            if end > start:
                multiline.append(start)
        if bad is not None:
            column = next((c for c, v in zip(header, record, strict=False) if "\ufffd" in v), None)
            bad_rows.report(file, start, column, NOT_UTF8, bad, UTF8_FIX)
        elif (end == len(lines) and sum(x.count('"') for x in lines[start - 1:end]) % 2
              and (end > start or len(record) != len(header))):
            bad_rows.report(file, start, None, BAD_CSV_ROW, "a quoted field opened in this "
                            "row is never closed (it runs to the end of the file)", quote_fix)
        elif swallowed:
            bad_rows.report(file, start, None, BAD_CSV_ROW,
                            f"a quoted field opened in this row runs to row {end} and holds "
                            f"row(s) {', '.join(map(str, swallowed[:5]))}, which look like "
                            f"rows of their own ({len(header)} fields): a quote at the start "
                            "of a field that is text", quote_fix)
        elif len(record) != len(header):
            column = header[len(record)] if len(record) < len(header) else None
            bad_rows.report(file, start, column, BAD_CSV_ROW, f"expected {len(header)} fields "
                            f"({', '.join(repr(c) for c in header)}), found {len(record)}",
                            fix)
        else:
            records.append(record)
            rows.append(start)
    if multiline:
        bad_rows.notes.append(
            f"{file}: {len(multiline)} row(s) hold quoted line breaks, so {len(rows)} rows "
            f"come from {sum(1 for x in lines if not is_blank(x)) - int(header_row)} data "
            f"lines (first at row {multiline[0]}); if a quote there is text, set "
            f"{bad_rows.key}.quoting: none")
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


class NoLabel:
    """The cells that mean "no gold label" (``tasks.N.no_label``, compared by
    :func:`mtkd.tasks.labels.label_key`): in a test split the row is kept unlabelled (an
    empty or missing label there always is), in train and dev it is skipped and counted
    (reason ``unlabelled``)."""

    def __init__(self, values: list[Any] | tuple[Any, ...], key: str) -> None:
        self.keys = {label_key(v) for v in values}
        self.shown = [label_name(v) for v in values]
        self.key = key

    def __call__(self, text: str | None, split: str, unlabelled: float) -> float | None:
        """``unlabelled`` if ``text`` means no label (None otherwise); raises RowProblem in
        train/dev."""
        empty = text is None or is_blank(text)
        if split == "test" and empty:  # test labels are optional
            return unlabelled
        if label_key("" if text is None else text) not in self.keys:
            return None
        if split == "test":
            return unlabelled
        shown = "empty" if text is None or is_blank(text) else repr(text)
        raise RowProblem(UNLABELLED, f"no gold label ({shown}, in {self.key}.no_label)")


def no_label_set(task_type_name: str, configured: list[Any] | None, key: str) -> NoLabel:
    """The task's no_label set: as configured, or the type's default."""
    if configured is not None:
        return NoLabel(configured, key)
    default = DEFAULT_NO_LABEL_REGRESSION if task_type_name == "regression" else DEFAULT_NO_LABEL
    return NoLabel(default, key)


def class_label_parser(labels: list[Any], key: str, no_label: NoLabel | None = None
                       ) -> LabelParser:
    """Cell -> class index by :func:`mtkd.tasks.labels.label_key` (``1.0``, `` 1``, ``01``
    match ``1``; ``True``/``yes`` match ``true``)."""
    index = {label_key(label): i for i, label in enumerate(labels)}
    names = [label_name(label) for label in labels]
    no_label = no_label or NoLabel(DEFAULT_NO_LABEL, key)

    def parse(value: Any, split: str, candidates: list[str] | None = None) -> int:
        text = as_text(value)
        if text is not None and label_key(text) in index:
            return index[label_key(text)]
        missing = no_label(text, split, NO_LABEL)
        if missing is not None:
            return int(missing)
        raise RowProblem(UNKNOWN_LABEL, f"label {text!r} is not one of the labels {names}",
                         f"add it to {key}.labels, or correct the row (labels match by "
                         "text, number or true/false value; see docs/DATA_FILES.md)")
    return parse


def regression_parser(no_label: NoLabel) -> LabelParser:
    def parse(value: Any, split: str, candidates: list[str] | None = None) -> float:
        text = as_text(value)
        missing = no_label(text, split, math.nan)
        if missing is not None:
            return missing
        return regression_label(value, split)
    return parse


def regression_label(value: Any, split: str, candidates: list[str] | None = None) -> float:
    text = as_text(value)
    if text is None or is_blank(text):
        if split == "test":
            return math.nan
        raise RowProblem(BAD_LABEL, "label is empty", "fill in the label, or remove the row")
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise RowProblem(BAD_LABEL, f"label {text!r} is not a number", "use a number like 3.5")
    return score


def ranking_parser(no_label: NoLabel) -> LabelParser:
    def parse(value: Any, split: str, candidates: list[str] | None = None) -> int:
        text, count = as_text(value), len(candidates or [])
        key = label_key(text) if text is not None else ""
        if key.lstrip("-").isdigit() and 0 <= int(key) < count:
            return int(key)
        missing = no_label(text, split, NO_LABEL)
        if missing is not None:
            return int(missing)
        raise RowProblem(BAD_LABEL, f"label {text!r} is not the index of a candidate (0 to "
                         f"{count - 1})", "give the 0-based position of the right candidate")
    return parse


def ranking_label(value: Any, split: str, candidates: list[str] | None = None) -> int:
    return ranking_parser(NoLabel(DEFAULT_NO_LABEL, "tasks.N"))(value, split, candidates)


def cell_text(value: Any, role: str) -> str:
    """The text of a cell; empty (None, NaN, or only whitespace and zero-width/format
    characters) raises RowProblem."""
    text = as_text(value)
    if text is None or is_blank(text):
        what = "is empty" if text is None or not text.strip() else (
            "holds only invisible characters (" + ", ".join(
                f"U+{ord(c):04X}" for c in dict.fromkeys(text) if not c.isspace()) + ")")
        raise RowProblem(EMPTY_TEXT, f"{role} {what}", f"write the {role}, or remove the row")
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


RARE_CLASS = 5
"""A class with fewer examples than this in a subset is warned about."""


def check_label_range(examples: list[dict[str, Any]], places: list[Any], split: str,
                      kind_name: str, num_classes: int, task: str, key: str) -> None:
    """Every class label is a class index (0 to num_classes - 1), or NO_LABEL in a test
    split; a ranking label indexes one of its row's candidates. DataError names the file
    and row: nothing may reach the loss that it would have to ignore."""
    for ex, place in zip(examples, places, strict=True):
        label = ex.get(LABEL)
        if kind_name == "regression" or label is None:
            continue
        count = len(ex.get(CANDIDATES) or ()) if kind_name == "ranking" else num_classes
        if 0 <= label < count or (label == NO_LABEL and split == "test"):
            continue
        _, file, row, _, _ = place
        what = (f"the {count} candidates" if kind_name == "ranking"
                else f"the {count} classes of {key}.labels")
        raise DataError(f"task {task!r}: {file}, row {row}: label index {label} is outside "
                        f"{what} (0 to {count - 1}) (fix: correct the row, or list every "
                        f"class in {key}.labels)")


def deterministic_subset(ds: datasets.Dataset, n: int | None, stratify: bool = False,
                         label_names: list[str] | tuple[str, ...] = (),
                         where: str = "") -> datasets.Dataset:
    """At most ``n`` rows, kept in their original order, chosen by sha1(uid): the same
    data and ``n`` always give the same subset, whatever the row order, and a larger ``n``
    only adds rows.

    ``stratify`` (classification): every class present keeps at least one row (when ``n``
    allows), and the rest is shared in proportion to the classes' sizes (D'Hondt's divisor
    method, so a larger ``n`` never takes a row away); within a class the rows with the
    smallest sha1(uid) are kept. A class left with fewer than RARE_CLASS rows is warned
    about (``where`` and ``label_names`` name it).
    """
    if n is None or n >= len(ds):
        return ds
    digests = [hashlib.sha1(str(uid).encode("utf-8")).hexdigest() for uid in ds[UID]]
    if not stratify:
        keep = sorted(sorted(range(len(ds)), key=digests.__getitem__)[:n])
        return ds.select(keep)
    groups: dict[Any, list[int]] = {}
    for i, label in enumerate(ds[LABEL]):
        groups.setdefault(label, []).append(i)
    for rows in groups.values():
        rows.sort(key=digests.__getitem__)
    order = sorted(groups, key=lambda c: (-len(groups[c]), str(c)))
    seats = dict.fromkeys(order, 0)
    for c in order[:n]:
        seats[c] = 1
    heap = [(-len(groups[c]) / (seats[c] + 1), i, c) for i, c in enumerate(order)
            if seats[c] < len(groups[c])]
    heapq.heapify(heap)
    for _ in range(n - sum(seats.values())):
        _, i, c = heapq.heappop(heap)
        seats[c] += 1
        if seats[c] < len(groups[c]):
            heapq.heappush(heap, (-len(groups[c]) / (seats[c] + 1), i, c))
    for c in order:
        if seats[c] < RARE_CLASS and c != NO_LABEL:
            name = (label_names[c] if isinstance(c, int) and 0 <= c < len(label_names)
                    else c)
            log.warning("%sclass %r keeps %d of its %d examples in the subset of %d: too few "
                        "to learn or score it reliably (raise the max_*_examples limit)",
                        f"{where}: " if where else "", name, seats[c], len(groups[c]), n)
    keep = sorted(i for c in order for i in groups[c][:seats[c]])
    return ds.select(keep)
