"""Bad user data: every case names file, row and column; skip mode counts per reason."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from mtkd.config.schema import TaskConfig
from mtkd.errors import DataError
from mtkd.tasks.examples import NO_LABEL, make_split
from mtkd.tasks.files import load_file_task
from mtkd.tasks.types import task_type
from mtkd.tasks.validation import (
    BAD_CSV_ROW,
    BAD_JSON_LINE,
    DUPLICATE_UID,
    EMPTY_TEXT,
    NOT_UTF8,
    UNKNOWN_LABEL,
    UNLABELLED,
    BadRow,
    BadRowSummary,
    decode_lines,
    deterministic_subset,
)

TRAIN = b"text,label\ngood one,pos\nbad one,neg\nfine,pos\n"


def _task(tmp_path: Path, files: dict[str, bytes], **kw: Any) -> TaskConfig:
    paths = {}
    for split, body in files.items():
        name = kw.pop(f"{split}_name", f"{split}.csv")
        (tmp_path / name).write_bytes(body)
        paths[split] = str(tmp_path / name)
    kw.setdefault("type", "classification")
    if kw["type"] in ("classification", "pair_classification"):
        kw.setdefault("labels", ["neg", "pos"])
    return TaskConfig(name="reviews", source="files", files=paths, **kw)


def _error(task: TaskConfig, index: int | None = 0) -> str:
    with pytest.raises(DataError) as info:
        load_file_task(task, index)
    return str(info.value)


def _dev(tmp_path: Path, body: bytes, name: str = "dev.csv", **kw: Any) -> TaskConfig:
    return _task(tmp_path, {"train": TRAIN, "dev": body}, dev_name=name, **kw)


# ------------------------------------------------------------------ error mode, one per case


def test_missing_column_lists_found_columns_and_config_key(tmp_path: Path) -> None:
    msg = _error(_dev(tmp_path, b"review,stars\nnice,pos\n"), index=2)
    assert "dev.csv" in msg and "column 'text'" in msg and "role 'text'" in msg
    assert "columns found: 'review', 'stars'" in msg and "tasks.2.columns.text" in msg


def test_configured_column_missing(tmp_path: Path) -> None:
    task = _task(tmp_path, {"train": b"review,label\nok,pos\n"}, columns={"text": "sentence"})
    msg = _error(task)
    assert "column 'sentence'" in msg and "columns found: 'review', 'label'" in msg
    assert "tasks.0.columns.text" in msg and "default" not in msg


def test_label_not_in_list(tmp_path: Path) -> None:
    msg = _error(_dev(tmp_path, b"text,label\nhi there,pos\nmeh,neutral\n"))
    assert "dev.csv, row 3, column 'label'" in msg
    assert "'neutral'" in msg and "['neg', 'pos']" in msg and "tasks.0.labels" in msg
    assert "bad_rows: skip" in msg


def test_empty_split_header_only_and_empty_file(tmp_path: Path) -> None:
    msg = _error(_dev(tmp_path, b"text,label\n"))
    assert "dev.csv" in msg and "split 'dev' has no examples" in msg
    msg = _error(_dev(tmp_path, b"", name="empty.csv", bad_rows="skip"))
    assert "empty.csv" in msg and "no examples" in msg


def test_non_utf8_bytes_give_line_byte_offset_and_column(tmp_path: Path) -> None:
    body = b"text,label\nhello,pos\nsome \xff\xfe text,neg\n"
    offset = body.index(b"\xff")
    msg = _error(_dev(tmp_path, body))
    assert "dev.csv, row 3, column 'text'" in msg
    assert f"byte 0xff at byte offset {offset} is not valid UTF-8" in msg


def test_non_utf8_in_header_always_fails(tmp_path: Path) -> None:
    msg = _error(_dev(tmp_path, b"te\xe9xt,label\nhi,pos\n", bad_rows="skip"))
    assert "dev.csv, row 1 (the header)" in msg and "byte 0xe9" in msg


@pytest.mark.parametrize(("row", "found", "column"), [
    (b"a,pos,extra", "found 3", None), (b"lonely", "found 1", "label")])
def test_wrong_number_of_csv_fields(tmp_path: Path, row: bytes, found: str,
                                    column: str | None) -> None:
    msg = _error(_dev(tmp_path, b"text,label\n\"two\nlines\",pos\n" + row + b"\n"))
    # the header is row 1, the quoted record spans rows 2-3, so the bad record is row 4
    assert "dev.csv, row 4" in msg and "expected 2 fields ('text', 'label')" in msg
    assert found in msg
    assert (f"column '{column}'" in msg) == (column is not None)


@pytest.mark.parametrize("tail", [b'"never closed,neg\nmore,pos\n', b'"never closed,neg\n'])
def test_unclosed_quote(tmp_path: Path, tail: bytes) -> None:
    msg = _error(_dev(tmp_path, b"text,label\nok,pos\n" + tail))
    assert "dev.csv, row 3" in msg and "never closed" in msg


def test_literal_quote_in_unquoted_field_is_fine(tmp_path: Path) -> None:
    task = _task(tmp_path, {"train": b'text,label\nsay 12" pipe, pos \n'})
    assert load_file_task(task)[0]["train"][0]["text"] == 'say 12" pipe'  # label ' pos ' too


def test_invalid_json_line_and_non_object(tmp_path: Path) -> None:
    body = b'{"text": "a", "label": "pos"}\n\n{"text": "b", "label": pos}\n'
    msg = _error(_dev(tmp_path, body, name="dev.jsonl"))
    assert "dev.jsonl, row 3" in msg and "invalid JSON at character" in msg  # blank line 2
    msg = _error(_dev(tmp_path, b'["a", "pos"]\n', name="list.jsonl"))
    assert "list.jsonl, row 1" in msg and "expected a JSON object" in msg and "an array" in msg


@pytest.mark.parametrize(("body", "column"), [
    (b'{"text": "a", "label": "pos"}\n{"text": null, "label": "neg"}\n', "text"),
    (b'{"text": "a", "label": "pos"}\n{"label": "neg"}\n', "text"),
    (b'{"text": "a", "label": "pos"}\n{"text": "   ", "label": "neg"}\n', "text")])
def test_null_or_blank_text(tmp_path: Path, body: bytes, column: str) -> None:
    msg = _error(_dev(tmp_path, body, name="dev.jsonl"))
    assert f"dev.jsonl, row 2, column '{column}'" in msg and "text is empty" in msg


def test_empty_pair_text_and_empty_label(tmp_path: Path) -> None:
    train = b"a,b,label\nx,y,pos\n"
    task = _task(tmp_path, {"train": train, "dev": b"a,b,label\nx2,,pos\n"},
                 type="pair_classification", columns={"text": "a", "text_pair": "b"})
    assert "dev.csv, row 2, column 'b': text_pair is empty" in _error(task)
    # an empty label is "no gold label" (the default no_label set): skipped and counted
    msg = _error(_dev(tmp_path, b"text,label\nsomething,\n"))
    assert "split 'dev' has no examples: all 1 row(s) were bad or unlabelled" in msg
    msg = _error(_dev(tmp_path, b"text,label\nsomething,\n", no_label=[]))
    assert "dev.csv, row 2, column 'label': label '' is not one of the labels" in msg


def test_non_numeric_regression_label(tmp_path: Path) -> None:
    body = b"text,score\nfine,3.5\nodd,high\n"
    task = _task(tmp_path, {"train": body}, type="regression", columns={"label": "score"})
    msg = _error(task)
    assert "train.csv, row 3, column 'score'" in msg and "'high' is not a number" in msg


def test_duplicate_uids_name_both_rows(tmp_path: Path) -> None:
    body = b"id,text,label\nu1,first,pos\nu2,second,neg\nu1,third,pos\n"
    msg = _error(_task(tmp_path, {"train": body}, columns={"uid": "id"}))
    assert "train.csv, row 4, column 'id'" in msg and "uid 'u1'" in msg
    assert "train.csv, row 2" in msg and "unique" in msg


def test_same_text_in_train_and_dev_is_a_duplicate(tmp_path: Path) -> None:
    msg = _error(_dev(tmp_path, b"text,label\nnew,pos\nfine,pos\n"))
    assert "dev.csv, row 3, column 'text'" in msg and "train.csv, row 4" in msg
    assert "same text" in msg and "tasks.0.columns.uid" in msg


def test_one_file_as_train_and_dev_is_named(tmp_path: Path) -> None:
    task = _task(tmp_path, {"train": TRAIN})
    task.files["dev"] = task.files["train"]
    msg = _error(task)
    assert "train.csv, row 2, column 'text': uid 'reviews-" in msg
    assert "is also the uid of " in msg and "train.csv, row 2 in the train split; the same " \
        "file is given as the train and the dev split" in msg


def test_labels_required_for_classification(tmp_path: Path) -> None:
    task = _task(tmp_path, {"train": TRAIN})
    task.labels = None
    msg = _error(task, index=1)
    assert "tasks.1.labels is required" in msg


@pytest.mark.parametrize(("kw", "expected"), [
    ({"columns": {"text_pair": "b"}}, "columns.text_pair: a classification task has no "
     "text_pair (fix: remove it, or use type pair_classification)"),
    ({"columns": {"sentence": "b"}}, "columns.sentence: unknown role 'sentence'"),
    ({"columns": {"text": "a", "query": "b"}}, "columns.query: query and text are the same"),
    ({"columns": {"candidates": "c"}}, "columns.candidates: candidates is for ranking tasks")])
def test_column_roles_checked_against_the_type(tmp_path: Path, kw: dict, expected: str) -> None:
    assert f"tasks.0.{expected}" in _error(_task(tmp_path, {"train": TRAIN}, **kw))


def test_unknown_extension_and_split(tmp_path: Path) -> None:
    msg = _error(_task(tmp_path, {"train": TRAIN}, train_name="train.txt"))
    assert "train.txt" in msg and "tasks.0.format" in msg
    task = _task(tmp_path, {"train": TRAIN})
    task.files["validation"] = task.files["train"]
    assert "unknown split(s) validation" in _error(task)


# ------------------------------------------------------------------ skip mode


def test_skip_mode_counts_every_reason(tmp_path: Path) -> None:
    dev = (b"text,label\n"
           b"kept one,pos\n"          # 2
           b"unknown,meh\n"           # 3 unknown_label
           b"a,b,c\n"                 # 4 bad_csv_row
           b"caf\xe9,neg\n"           # 5 not_utf8
           b",neg\n"                  # 6 empty_text
           b"kept two,neg\n"          # 7
           b"kept one,neg\n"          # 8 duplicate_uid (same text as row 2)
           b"fine,pos\n"              # 9 duplicate of train row 4
           b"also,\n")                # 10 bad_label (empty)
    splits, summary = load_file_task(_dev(tmp_path, dev, bad_rows="skip"), 0)
    assert [r["text"] for r in splits["dev"]] == ["kept one", "kept two"]
    assert len(splits["train"]) == 3
    assert summary.counts() == {UNKNOWN_LABEL: 1, BAD_CSV_ROW: 1, NOT_UTF8: 1, EMPTY_TEXT: 1,
                                DUPLICATE_UID: 2, UNLABELLED: 1}
    assert summary.total == 7 and summary.task == "reviews"
    rows = {(b.row, b.column, b.reason) for b in summary.examples}
    assert len(summary.examples) == 5
    assert (3, "label", UNKNOWN_LABEL) in rows and (5, "text", NOT_UTF8) in rows
    assert all(b.file.endswith("dev.csv") for b in summary.examples)
    lines = summary.lines()
    assert lines[0].startswith("task 'reviews': skipped 1 unlabelled row(s) in train/dev")
    assert "dev.csv, row 10, column 'label': no gold label (empty" in lines[0]
    assert lines[1].startswith("task 'reviews': skipped 6 bad row(s) (")
    assert "1 not_utf8" in lines[1] and "2 duplicate_uid" in lines[1]
    assert "unlabelled" not in lines[1]
    assert lines[-1] == "  ... and 1 more"
    assert json.loads(json.dumps(summary.to_json()))["counts"]["duplicate_uid"] == 2


def test_skip_mode_jsonl(tmp_path: Path) -> None:
    body = (b'{"text": "a", "label": "pos"}\nnot json\n[1]\n{"text": "b\xff", "label": "neg"}\n'
            b'{"text": "c", "label": "neg"}\n')
    splits, summary = load_file_task(_task(tmp_path, {"train": body}, train_name="t.jsonl",
                                           bad_rows="skip"))
    assert [r["text"] for r in splits["train"]] == ["a", "c"]
    assert summary.counts() == {BAD_JSON_LINE: 2, NOT_UTF8: 1}
    assert [(b.row, b.column) for b in summary.examples] == [(2, None), (3, None), (4, "text")]


def test_skip_mode_still_fails_on_missing_column_and_all_rows_bad(tmp_path: Path) -> None:
    msg = _error(_dev(tmp_path, b"review,label\nx,pos\n", bad_rows="skip"))
    assert "column 'text'" in msg
    msg = _error(_dev(tmp_path, b"text,label\nx,bad\ny,worse\n", bad_rows="skip"))
    assert "split 'dev' has no examples: all 2 row(s) were bad or unlabelled and skipped" in msg


def test_no_bad_rows_empty_summary(tmp_path: Path) -> None:
    _, summary = load_file_task(_task(tmp_path, {"train": TRAIN}))
    assert summary.total == 0 and summary.lines() == [] and "no bad rows" in str(summary)


# ------------------------------------------------------------------ values and helpers


def test_cells_stay_text_and_uid_is_verbatim(tmp_path: Path) -> None:
    body = b"id,text,label\n007,NA,1\n008,null,0\n009,\"a, \"\"quoted\"\"\nline\",1\n"
    task = _task(tmp_path, {"train": body}, labels=["0", "1"], columns={"uid": "id"})
    rows = load_file_task(task)[0]["train"].to_list()
    assert [r["uid"] for r in rows] == ["007", "008", "009"]
    assert [r["text"] for r in rows] == ["NA", "null", 'a, "quoted"\nline']
    assert [r["label"] for r in rows] == [1, 0, 1]


def test_test_split_without_labels(tmp_path: Path) -> None:
    task = _task(tmp_path, {"train": TRAIN, "test": b"text\nunseen\n"})
    assert load_file_task(task)[0]["test"].to_list()[0]["label"] == NO_LABEL
    task = _task(tmp_path, {"train": b"text,label\na,1.5\n", "test": b"text,label\nb,\n"},
                 type="regression")
    assert math.isnan(load_file_task(task)[0]["test"][0]["label"])


def test_content_uid_is_stable(tmp_path: Path) -> None:
    first = load_file_task(_task(tmp_path, {"train": TRAIN}))[0]["train"]
    swapped = b"text,label\nfine,pos\ngood one,pos\nbad one,neg\n"
    second = load_file_task(_task(tmp_path, {"train": swapped}))[0]["train"]
    assert sorted(first["uid"]) == sorted(second["uid"])
    assert all(u.startswith("reviews-") and len(u) == len("reviews-") + 12 for u in first["uid"])


def test_deterministic_subset_ignores_row_order() -> None:
    kind = task_type("classification")
    rows = [{"uid": f"u{i}", "text": f"t{i}", "label": i % 2} for i in range(50)]
    a = deterministic_subset(make_split(rows, kind), 10)
    b = deterministic_subset(make_split(rows[::-1], kind), 10)
    assert len(a) == 10 and sorted(a["uid"]) == sorted(b["uid"])
    assert list(a["uid"]) == sorted(a["uid"], key=lambda u: int(u[1:]))  # original order kept
    assert set(a["uid"]) <= set(deterministic_subset(make_split(rows, kind), 20)["uid"])
    assert deterministic_subset(a, None) is a and deterministic_subset(a, 99) is a


def test_max_examples_use_the_subset(tmp_path: Path) -> None:
    train = b"text,label\n" + b"".join(b"row %d,pos\n" % i for i in range(30))
    dev = b"text,label\n" + b"".join(b"dev %d,neg\n" % i for i in range(30))
    task = _task(tmp_path, {"train": train, "dev": dev}, max_train_examples=7,
                 max_dev_examples=4)
    splits = load_file_task(task)[0]
    assert (len(splits["train"]), len(splits["dev"])) == (7, 4)
    assert splits["train"]["uid"] == load_file_task(task)[0]["train"]["uid"]


def test_decode_lines_reports_offsets_past_a_bom() -> None:
    lines, bad = decode_lines(b"\xef\xbb\xbfa,b\r\nok\r\nx\x80y\n")
    assert lines == ["a,b", "ok", "x\ufffdy"]  # CRLF line ends read as line ends
    assert bad == {3: "byte 0x80 at byte offset 13 is not valid UTF-8"}


def test_summary_merge_keeps_counts_and_first_examples() -> None:
    a, b = BadRowSummary("x", max_examples=2), BadRowSummary("y")
    for i in range(2):
        a.add(BadRow("f.csv", i + 2, "text", EMPTY_TEXT, "text is empty"))
    b.add(BadRow("g.csv", 9, "label", UNKNOWN_LABEL, "label 'z' ..."))
    a.merge(b)
    assert a.counts() == {EMPTY_TEXT: 2, UNKNOWN_LABEL: 1} and len(a.examples) == 2
    assert str(a.examples[0]) == "f.csv, row 2, column 'text': text is empty"


def test_stratified_subset_keeps_every_class_and_warns_about_rare_ones(
        caplog: pytest.LogCaptureFixture) -> None:
    kind = task_type("classification")
    # 97 of class 0, 3 of class 1: a plain 10-row hash subset may keep none of class 1
    rows = [{"uid": f"u{i}", "text": f"t{i}", "label": int(i % 33 == 0)} for i in range(99)]
    subsets = {n: deterministic_subset(make_split(rows, kind), n, stratify=True,
                                       label_names=("neg", "pos"), where="t") for n in range(1, 60)}
    for n, subset in subsets.items():
        labels = subset["label"]
        assert len(labels) == n and set(labels) == ({0} if n == 1 else {0, 1})
        # D'Hondt quotas (96 : 3, at least one each): class 1 gets a 2nd seat only when
        # 3 / 2 beats 96 / (seats of class 0 + 1), i.e. once class 0 holds 64
        assert labels.count(1) == (0 if n == 1 else 1 if n < 66 else 2)
        if n > 1:
            assert set(subsets[n - 1]["uid"]) <= set(subset["uid"])  # larger n only adds
    assert "class 'pos' keeps 1 of its 3 examples" in caplog.text
