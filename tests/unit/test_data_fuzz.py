"""Data fuzzer: each file fault applied to a small valid task in every format where it
makes sense (csv, tsv, jsonl, parquet), with the documented outcome asserted:

* "read": the task loads, and its rows equal values computed here from the fault's
  definition (never from mtkd's readers);
* "refuse": ``mtkd run CONFIG --to prepare`` through the CLI entry function, in-process,
  exits 2 naming the file, the row (as the user sees it), the column where there is one
  and a fix, without a traceback and with nothing written under the experiment.

Rows as a user sees them: CSV/TSV line numbers (the header is row 1), JSONL line numbers,
Parquet record positions from 1 (mtkd.tasks.validation).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mtkd.cli import main
from mtkd.config.schema import TaskConfig
from mtkd.tasks.examples import NO_LABEL
from mtkd.tasks.resolve import load_task

FORMATS = ("csv", "tsv", "jsonl", "parquet")
TEXT_FORMATS = ("csv", "tsv", "jsonl")
TRAIN = [("a fine film", "pos"), ("dull and long", "neg"), ("great cast", "pos"),
         ("weak plot", "neg"), ("loved it", "pos"), ("not good", "neg")]
DEV = [("fun to watch", "pos"), ("a bore", "neg"), ("well made", "pos")]
LABELS = ["neg", "pos"]


def first_row(fmt: str) -> int:
    """The row number a user sees for the first data record."""
    return 2 if fmt in ("csv", "tsv") else 1


def write(fmt: str, header: list[str], rows: list[list[Any]]) -> bytes:
    """A well-formed file of ``rows`` (lists of cell values) under ``header``."""
    if fmt == "parquet":
        buffer = io.BytesIO()
        columns = {h: [r[i] for r in rows] for i, h in enumerate(header)}
        pq.write_table(pa.table(columns), buffer)
        return buffer.getvalue()
    if fmt == "jsonl":
        return "".join(json.dumps(dict(zip(header, r, strict=True))) + "\n"
                       for r in rows).encode()
    if fmt == "tsv":  # GLUE style: no quoting at all
        return "".join("\t".join(map(str, r)) + "\n" for r in [header, *rows]).encode()
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    return out.getvalue().encode()


@dataclass
class Case:
    """One fault: how to build the train file, and what must come of it."""

    name: str
    formats: tuple[str, ...]
    train: Callable[[str], bytes]
    expect: str  # "read" or "refuse"
    rows: Callable[[str], list[tuple[str, int]]] | None = None
    """read: the train split's (text, label index) in file order."""
    where: Callable[[str], list[str]] = lambda fmt: []
    """refuse: strings the message must hold (row, column, fix)."""
    task: dict[str, Any] = field(default_factory=dict)
    test: Callable[[str], bytes] | None = None
    test_labels: list[int] | None = None
    dev: Callable[[str], bytes] | None = None
    """The dev file (default: DEV in the plain layout)."""


def plain(fmt: str, rows: list[tuple[Any, ...]] = tuple(TRAIN),
          header: tuple[str, ...] = ("text", "label")) -> bytes:
    return write(fmt, list(header), [list(r) for r in rows])


def with_row(i: int, row: tuple[Any, ...]) -> Callable[[str], bytes]:
    rows = list(TRAIN)
    rows[i] = row
    return lambda fmt: plain(fmt, rows)


def read_as(rows: list[tuple[str, str]]) -> Callable[[str], list[tuple[str, int]]]:
    return lambda fmt: [(t, LABELS.index(label)) for t, label in rows]


def text_bytes(transform: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """The plain file's text re-encoded by ``transform``."""
    return lambda fmt: transform(plain(fmt).decode())


def glue_tsv(n: int = 40, close: str = "no") -> tuple[bytes, list[tuple[str, int]]]:
    """A QQP/MNLI-style TSV (no quoting) with quotes in fields, as GLUE has them; a CSV
    reader's quote opened in row 6 closes in row 11 at ``he said "<close>``."""
    lines, rows = ["sentence\tlabel"], []
    for i in range(n):
        text = f"sentence number {i}"
        if i == 4:
            text = '"The movie'          # opens a "quote" that a CSV reader would run on
        if i == 9:
            text = 'he said "' + close   # ... to here: rows 6-11 would be merged
        if i == 20:
            text = '"quoted" start and "more" inside'
        lines.append(f"{text}\t{i % 2}")
        rows.append((text, i % 2))
    return ("\n".join(lines) + "\n").encode(), rows


GLUE_BYTES, GLUE_ROWS = glue_tsv()
GLUE_CLOSING_AT_TAB, _ = glue_tsv(close="")
GLUE_TASK = {"labels": ["0", "1"], "columns": {"text": "sentence"}}


def dev_of(header: list[str], rows: list[list[Any]]) -> Callable[[str], bytes]:
    return lambda fmt: write(fmt, header, rows)


HEADERLESS = ["gj04", "1", "", "The sailors rode the breeze clear."]
QUOTED = [*TRAIN[:2], ('"Hello" he said', "pos"), *TRAIN[3:]]
CASES = [
    # ---- quoting
    Case("quote inside a field", FORMATS, lambda fmt: plain(fmt, QUOTED), "read",
         rows=read_as(QUOTED)),
    Case("GLUE TSV with quotes in fields: all 40 rows", ("tsv",), lambda fmt: GLUE_BYTES,
         "read", rows=lambda fmt: GLUE_ROWS, task=GLUE_TASK,
         dev=dev_of(["sentence", "label"], [["fine", 1]])),
    Case("GLUE TSV read with CSV quoting: refused at the stray quote", ("tsv",),
         lambda fmt: GLUE_BYTES, "refuse", task={**GLUE_TASK, "quoting": "csv"},
         dev=dev_of(["sentence", "label"], [["fine", 1]]),
         where=lambda fmt: ["row 6", "quoting: none"]),
    Case("GLUE TSV read with CSV quoting: swallowed rows refused", ("tsv",),
         lambda fmt: GLUE_CLOSING_AT_TAB, "refuse", task={**GLUE_TASK, "quoting": "csv"},
         dev=dev_of(["sentence", "label"], [["fine", 1]]),
         where=lambda fmt: ["row 6", "rows of their own", "quoting: none"]),
    Case("unescaped leading quote in CSV", ("csv",),
         lambda fmt: b'text,label\na fine film,pos\n"Hello" he said,pos\n', "refuse",
         where=lambda fmt: ["row 3", "quoting: none"]),
    Case("unclosed quote in CSV", ("csv",),
         lambda fmt: b'text,label\na fine film,pos\n"never closed,neg\nmore,pos\n', "refuse",
         where=lambda fmt: ["row 3", "never closed"]),
    # ---- encodings and line ends
    Case("UTF-8 byte-order mark", TEXT_FORMATS,
         text_bytes(lambda s: codecs.BOM_UTF8 + s.encode()), "read", rows=read_as(TRAIN)),
    Case("UTF-16 LE with BOM (spreadsheet 'Unicode text')", TEXT_FORMATS,
         text_bytes(lambda s: s.encode("utf-16")), "read", rows=read_as(TRAIN)),
    Case("UTF-16 BE with BOM, CRLF", TEXT_FORMATS,
         text_bytes(lambda s: codecs.BOM_UTF16_BE + s.replace("\n", "\r\n").encode(
             "utf-16-be")), "read", rows=read_as(TRAIN)),
    Case("UTF-32 with BOM", TEXT_FORMATS, text_bytes(lambda s: s.encode("utf-32")), "read",
         rows=read_as(TRAIN)),
    Case("UTF-16 without a BOM", TEXT_FORMATS,
         text_bytes(lambda s: s.encode("utf-16-le")), "refuse",
         where=lambda fmt: ["UTF-16", "iconv -f utf-16le"]),
    Case("CR line ends (old Mac)", TEXT_FORMATS,
         text_bytes(lambda s: s.replace("\n", "\r").encode()), "read", rows=read_as(TRAIN)),
    Case("CRLF line ends", TEXT_FORMATS,
         text_bytes(lambda s: s.replace("\n", "\r\n").encode()), "read", rows=read_as(TRAIN)),
    Case("Latin-1 byte", TEXT_FORMATS,
         text_bytes(lambda s: s.replace("great", "caf\xe9").encode("latin-1")), "refuse",
         where=lambda fmt: [f"row {first_row(fmt) + 2}", "column 'text'", "UTF-8"]),
    Case("an .xlsx saved as .csv", ("csv",), lambda fmt: b"PK\x03\x04rest-of-zip", "refuse",
         where=lambda fmt: ["zip", "export the sheet as CSV"]),
    # ---- rows and columns
    Case("ragged row", ("csv", "tsv"),
         lambda fmt: plain(fmt).replace(b"great cast", b"great cast" + (
             b"," if fmt == "csv" else b"\t") + b"extra"), "refuse",
         where=lambda fmt: ["row 4", "expected 2 fields", "fix:"]),
    Case("missing column (typo)", FORMATS,
         lambda fmt: plain(fmt, header=("text", "labl")), "refuse",
         where=lambda fmt: ["column 'label'", "did you mean 'labl'", "columns.label"]),
    Case("header with spaces", ("csv",),
         lambda fmt: plain(fmt, header=("Text ", " Label")), "refuse",
         where=lambda fmt: ["column 'text'", "'Text '", "did you mean 'Text '"]),
    Case("empty text", FORMATS, with_row(2, ("", "pos")), "refuse",
         where=lambda fmt: [f"row {first_row(fmt) + 2}", "column 'text'", "text is empty"]),
    Case("zero-width text", FORMATS, with_row(2, ("\u200b\u200d \ufeff", "pos")), "refuse",
         where=lambda fmt: [f"row {first_row(fmt) + 2}", "column 'text'", "U+200B"]),
    Case("unknown label", FORMATS, with_row(3, ("weak plot", "meh")), "refuse",
         where=lambda fmt: [f"row {first_row(fmt) + 3}", "column 'label'", "'meh'",
                            "tasks.0.labels"]),
    Case("no-gold label '-' in train: skipped", FORMATS, with_row(3, ("weak plot", "-")),
         "read", rows=read_as([r for i, r in enumerate(TRAIN) if i != 3])),
    Case("no-gold label '-1' in train, no_label: [] makes it an error", FORMATS,
         with_row(3, ("weak plot", "-1")), "refuse", task={"no_label": []},
         where=lambda fmt: [f"row {first_row(fmt) + 3}", "column 'label'", "'-1'"]),
    Case("no-gold labels in test: kept unlabelled", FORMATS, plain, "read",
         rows=read_as(TRAIN),
         test=lambda fmt: plain(fmt, [("x one", "-1"), ("x two", "-"), ("x three", ""),
                                      ("x four", "pos")]),
         test_labels=[NO_LABEL, NO_LABEL, NO_LABEL, 1]),
    Case("one-class task", FORMATS, plain, "refuse", task={"labels": ["pos"]},
         where=lambda fmt: ["tasks.0.labels", "at least 2"]),
    Case("duplicate uid", FORMATS,
         lambda fmt: write(fmt, ["id", "text", "label"],
                           [["u1", "a", "pos"], ["u2", "b", "neg"], ["u1", "c", "pos"]]),
         "refuse", task={"columns": {"uid": "id"}},
         dev=dev_of(["id", "text", "label"], [["d1", "fun", "pos"]]),
         where=lambda fmt: [f"row {first_row(fmt) + 2}", "column 'id'", "uid 'u1'",
                            f"row {first_row(fmt)}"]),
    Case("duplicate text (content uid)", FORMATS, with_row(4, ("a fine film", "pos")),
         "refuse", where=lambda fmt: [f"row {first_row(fmt) + 4}", f"row {first_row(fmt)}",
                                      "columns.uid"]),
    Case("0-byte file", FORMATS, lambda fmt: b"", "refuse",
         where=lambda fmt: ["not a Parquet file"] if fmt == "parquet" else
         ["split 'train' has no examples", "fix:"]),
    Case("headerless TSV (CoLA's shape)", ("csv", "tsv"),
         lambda fmt: write(fmt, HEADERLESS, [["gj04", "0", "*", "The more he ate, the fatter."]]),
         "refuse", task={"labels": ["0", "1"]},
         where=lambda fmt: ["row 1 looks like data", "header: false",
                            'columns: {text: "3", label: "1"}']),
    Case("headerless TSV named by position", ("csv", "tsv"),
         lambda fmt: write(fmt, HEADERLESS, [["gj04", "0", "*", "The more he ate the fatter."]]),
         "read", task={"labels": ["0", "1"], "header": False,
                       "columns": {"text": "3", "label": "1"}},
         dev=dev_of(["x", "0", "", "Another one."], []),
         rows=lambda fmt: [("The sailors rode the breeze clear.", 1),
                           ("The more he ate the fatter.", 0)]),
    # ---- label spellings (YAML ints, floats, booleans; cells 5.0, ' 4', 03, True)
    Case("numeric labels written any usual way", FORMATS,
         lambda fmt: plain(fmt, [("one", "5.0"), ("two", " 4"), ("three", "03"),
                                 ("four", "1"), ("five", "+2")]),
         "read", task={"labels": [1, 2, 3, 4, 5]}, dev=dev_of(["text", "label"], [["d", 3]]),
         rows=lambda fmt: [("one", 4), ("two", 3), ("three", 2), ("four", 0), ("five", 1)]),
    Case("boolean labels: True/false/yes", FORMATS,
         lambda fmt: plain(fmt, [("one", "True"), ("two", "false"), ("three", "yes"),
                                 ("four", "NO")]),
         "read", task={"labels": [False, True]},
         dev=dev_of(["text", "label"], [["d", "on"]]),
         rows=lambda fmt: [("one", 1), ("two", 0), ("three", 1), ("four", 0)]),
    Case("typed cells (parquet/jsonl ints and bools)", ("jsonl", "parquet"),
         lambda fmt: write(fmt, ["text", "label", "flag"],
                           [["one", 1, True], ["two", 0, False]]),
         "read", task={"labels": [0, 1]}, rows=lambda fmt: [("one", 1), ("two", 0)],
         dev=dev_of(["text", "label", "flag"], [["d", 0, False]])),
    Case("label >= number of classes (GLUE indices)", ("tsv", "parquet", "jsonl"),
         lambda fmt: write(fmt, ["sentence", "label", "idx"],
                           [["good", 1, 0], ["bad", 0, 1], ["odd", 2, 2]]),
         "refuse", task={"source": "glue", "glue_task": "sst2", "type": None,
                         "labels": None},
         where=lambda fmt: [f"row {first_row(fmt) + 2}", "column 'label'", "'2'",
                            "0 to 1"]),
]


def _task_dict(tmp_path: Path, case: Case, fmt: str) -> dict[str, Any]:
    files = {}
    dev = case.dev(fmt) if case.dev else plain(fmt, DEV)
    for split, body in (("train", case.train(fmt)), ("dev", dev),
                        ("test", case.test(fmt) if case.test else None)):
        if body is None:
            continue
        if case.task.get("source") == "glue" and split == "dev":
            body = write(fmt, ["sentence", "label", "idx"], [["fine", 1, 9]])
        path = tmp_path / f"{split}.{fmt}"
        path.write_bytes(body)
        files[split] = str(path)
    task = {"name": "fuzz", "source": "files", "type": "classification", "labels": LABELS,
            "files": files, **case.task}
    return {k: v for k, v in task.items() if v is not None}


def _encoder(tmp_path: Path) -> str:
    """An encoder folder with a config.json only: enough for every refusal (they all come
    before tokenization) and for the max_length check."""
    folder = tmp_path / "encoder"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert",
                                                    "max_position_embeddings": 512}))
    return str(folder)


PARAMS = [(c, fmt) for c in CASES for fmt in c.formats]


@pytest.mark.parametrize(("case", "fmt"), PARAMS, ids=[f"{c.name} [{f}]" for c, f in PARAMS])
def test_file_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: Case,
                    fmt: str) -> None:
    task = _task_dict(tmp_path, case, fmt)
    if case.expect == "read":
        loaded = load_task(TaskConfig(**task), 0)
        train = loaded.splits["train"]
        assert list(zip(train["text"], train["label"], strict=True)) == case.rows(fmt)
        if case.test_labels is not None:
            assert loaded.splits["test"]["label"] == case.test_labels
        return
    storage = tmp_path / "runs"
    config = {"name": "fuzzexp", "storage_path": str(storage),
              "encoder": {"path": _encoder(tmp_path)}, "tasks": [task]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path), "--to", "prepare"])
    output = capsys.readouterr().err
    assert code == 2, output
    assert "Traceback" not in output and output.startswith("mtkd: error:")
    assert "fix:" in output, output
    if not any(w.startswith("tasks.0") for w in case.where(fmt)):
        assert f"train.{fmt}" in output, output  # the file is named
    for expected in case.where(fmt):
        assert expected in output, f"{expected!r} not in: {output}"
    assert not (storage / "fuzzexp").exists()  # nothing written under the experiment


def test_unlabelled_rows_are_counted_with_their_own_message(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name.startswith("no-gold label '-' in train"))
    loaded = load_task(TaskConfig(**_task_dict(tmp_path, case, "csv")), 0)
    assert loaded.dropped == {"unlabelled": 1}
    assert loaded.notes[0].startswith("task 'fuzz': skipped 1 unlabelled row(s)")
    assert "train.csv, row 5, column 'label'" in loaded.notes[0]


def _regression(tmp_path: Path, train: bytes, dev: bytes) -> dict[str, Any]:
    (tmp_path / "train.csv").write_bytes(train)
    (tmp_path / "dev.csv").write_bytes(dev)
    return {"name": "sts", "source": "files", "type": "regression",
            "files": {"train": str(tmp_path / "train.csv"), "dev": str(tmp_path / "dev.csv")}}


@pytest.mark.parametrize(("train", "dev", "expected"), [
    # some empty text_pair cells: an error naming the row (never a mix of encodings)
    (b"text,text_pair,label\na,b,1.5\nc,,2.0\n", b"text,text_pair,label\nx,y,1\n",
     ["train.csv, row 3, column 'text_pair'", "text_pair is empty"]),
    # the text_pair column only in dev: refused, naming both files
    (b"text,label\na,1.5\nc,2.0\n", b"text,text_pair,label\nx,y,1\n",
     ["column 'text_pair'", "dev.csv (dev split)", "train.csv (train split"]),
])
def test_regression_pairs_are_all_or_nothing(tmp_path: Path, train: bytes, dev: bytes,
                                            expected: list[str]) -> None:
    from mtkd.errors import DataError

    with pytest.raises(DataError) as info:
        load_task(TaskConfig(**_regression(tmp_path, train, dev)), 0)
    for text in expected:
        assert text in str(info.value)


def test_regression_minus_one_is_a_score_and_dash_is_unlabelled(tmp_path: Path) -> None:
    task = _regression(tmp_path, b"text,label\na,-1\nb,-\nc,0.5\n", b"text,label\nx,1\n")
    train = load_task(TaskConfig(**task), 0).splits["train"]
    assert train["text"] == ["a", "c"] and train["label"] == [-1.0, 0.5]
    test = tmp_path / "test.csv"
    test.write_bytes(b"text,label\nq,\nr,-\n")
    task["files"]["test"] = str(test)
    labels = load_task(TaskConfig(**task), 0).splits["test"]["label"]
    assert all(math.isnan(x) for x in labels)


def test_pair_or_single_is_decided_once_per_split() -> None:
    from mtkd.data.tokenize import split_is_pair
    from mtkd.errors import DataError
    from mtkd.tasks.examples import make_split
    from mtkd.tasks.spec import TaskSpec
    from mtkd.tasks.types import task_type

    spec = TaskSpec(name="sts", type="regression")
    kind = task_type("regression")

    def split(pairs: list[str]) -> Any:
        return make_split([{"uid": f"u{i}", "text": f"t{i}", "text_pair": p, "label": 1.0}
                           for i, p in enumerate(pairs)], kind)

    assert split_is_pair(split(["b"] * 1001), spec) is True
    assert split_is_pair(split([""] * 1001), spec) is False
    # the old rule decided per 1000-row batch: single for rows 1-1000, pairs for row 1001
    with pytest.raises(DataError, match=r"text_pair is empty in example 1 \(uid 'u0'\) but "
                                        r"given in example 1001 \(uid 'u1000'\)"):
        split_is_pair(split([""] * 1000 + ["b"]), spec)
    assert split_is_pair(split([""]), TaskSpec(name="p", type="pair_classification")) is True
