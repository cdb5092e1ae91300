"""User tasks from files (local and on a real S3 server) and GLUE from hub-format parquet.

The Hugging Face hub is never contacted: HF_HUB_OFFLINE is on for every test here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import datasets
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtkd.config.schema import TaskConfig
from mtkd.errors import DataError, MtkdError, StorageError
from mtkd.storage import Storage
from mtkd.tasks.examples import NO_LABEL, features_for
from mtkd.tasks.files import load_file_task
from mtkd.tasks.glue import GLUE_TASKS, glue_task_spec, load_glue_task
from mtkd.tasks.types import task_type


@pytest.fixture(autouse=True)
def hf_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No hub access, and an empty HF cache (the flags are read at import, so patch them)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    yield


REVIEWS_CSV = (
    "id,review,sentiment\n"
    'r1,"A warm, funny film.",positive\n'
    'r2,"Two hours I will never get back.",negative\n'
    'r3,"Not bad; ""okay"" at best",negative\n'
    'r4,"Multi-line\nreview that I loved",positive\n'
)
DEV_CSV = "id,review,sentiment\nd1,Great cast,positive\nd2,Dull,negative\n"


def _files_task(files: dict[str, str], **kw: object) -> TaskConfig:
    return TaskConfig(name="user", source="files", files=files, **kw)


# ------------------------------------------------------------------ user files on S3


@pytest.mark.s3
def test_csv_task_on_s3(s3_env: str) -> None:
    store = Storage.from_uri(s3_env)
    store.write_text("data/train.csv", REVIEWS_CSV)
    store.write_text("data/dev.csv", DEV_CSV)
    task = _files_task({"train": f"{s3_env}/data/train.csv", "dev": f"{s3_env}/data/dev.csv"},
                       type="classification", labels=["negative", "positive"],
                       columns={"text": "review", "label": "sentiment", "uid": "id"})
    splits, summary = load_file_task(task, 0)
    assert summary.total == 0
    train = splits["train"]
    assert train.features == features_for(task_type("classification"))
    assert train["uid"] == ["r1", "r2", "r3", "r4"] and train["label"] == [1, 0, 0, 1]
    assert train["text"][2] == 'Not bad; "okay" at best'
    assert train["text"][3] == "Multi-line\nreview that I loved"
    assert set(train["text_pair"]) == {""}
    assert splits["dev"]["uid"] == ["d1", "d2"]


@pytest.mark.s3
def test_s3_keys_with_spaces_and_non_ascii(s3_env: str) -> None:
    store = Storage.from_uri(s3_env)
    store.write_text("my data/café train.tsv", "review\tsentiment\n\"Quoted\" start\tpositive\n"
                     "plain\tnegative\n")
    store.write_text("my data/dév.tsv", "review\tsentiment\nthird\tnegative\n")
    task = _files_task({"train": f"{s3_env}/my data/café train.tsv",
                        "dev": f"{s3_env}/my data/dév.tsv"},
                       type="classification", labels=["negative", "positive"],
                       columns={"text": "review", "label": "sentiment"})
    splits, _ = load_file_task(task, 0)
    assert splits["train"]["text"] == ['"Quoted" start', "plain"]
    assert splits["train"]["label"] == [1, 0] and splits["dev"]["label"] == [0]


@pytest.mark.s3
def test_jsonl_task_on_s3_with_bad_rows_skipped(s3_env: str) -> None:
    rows = [{"q": "Is it good?", "a": "Yes it is.", "y": True},
            {"q": "Is it bad?", "a": "No.", "y": False},
            {"q": "Any notes?", "a": "", "y": True},         # empty text_pair: skipped
            {"q": "Odd label?", "a": "Maybe.", "y": "perhaps"}]  # unknown label: skipped
    body = "\n".join(json.dumps(r) for r in rows) + "\n{broken\n"  # invalid JSON: skipped
    store = Storage.from_uri(s3_env)
    store.write_text("qa/train.jsonl", body)
    store.write_text("qa/dev.jsonl", json.dumps({"q": "Dev?", "a": "Sure.", "y": True}) + "\n")
    task = _files_task({"train": f"{s3_env}/qa/train.jsonl", "dev": f"{s3_env}/qa/dev.jsonl"},
                       type="pair_classification", labels=["false", "true"], bad_rows="skip",
                       columns={"text": "q", "text_pair": "a", "label": "y"})
    splits, summary = load_file_task(task, 1)
    assert splits["train"]["text"] == ["Is it good?", "Is it bad?"]
    assert splits["train"]["label"] == [1, 0]
    assert splits["dev"]["label"] == [1]
    assert summary.counts() == {"empty_text": 1, "unknown_label": 1, "bad_json_line": 1}
    where = {(b.file.rsplit("/", 1)[-1], b.row, b.column) for b in summary.examples}
    assert where == {("train.jsonl", 3, "a"), ("train.jsonl", 4, "y"), ("train.jsonl", 5, None)}
    assert all(b.file.startswith("s3://") for b in summary.examples)


@pytest.mark.s3
def test_missing_s3_file_names_the_uri(s3_env: str) -> None:
    task = _files_task({"train": f"{s3_env}/nope/train.csv"}, type="regression")
    with pytest.raises(StorageError, match=r"not found: s3://.*/nope/train\.csv"):
        load_file_task(task)


@pytest.mark.s3
def test_bad_row_on_s3_names_the_s3_uri(s3_env: str) -> None:
    Storage.from_uri(s3_env).write_text("bad/train.csv", "text,label\nok,1\nx,y,z\n")
    task = _files_task({"train": f"{s3_env}/bad/train.csv"}, type="regression")
    with pytest.raises(DataError, match=r"s3://.*/bad/train\.csv, row 3: expected 2 fields"):
        load_file_task(task)


# ------------------------------------------------------------------ local TSV, Parquet, ranking


def test_tsv_regression_with_pair(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text(
        "text\ttext_pair\tlabel\nA man plays.\tA person plays.\t4.2\n"
        "A cat sleeps.\tStocks fell.\t0\nCommas, fine\tand \"quotes\" too\t2.5\n")
    task = _files_task({"train": str(tmp_path / "train.tsv")}, type="regression")
    train = load_file_task(task)[0]["train"]
    assert train.features["label"].dtype == "float32"
    assert train["text_pair"] == ["A person plays.", "Stocks fell.", 'and "quotes" too']
    assert train["label"] == pytest.approx([4.2, 0.0, 2.5])


def test_parquet_classification_with_int_and_bool_labels(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["spam spam", "hello mum", "win cash"],
                             "label": [1, 0, 1], "other": [[1], [2], [3]]}),
                   tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": ["call me", "free prize"], "label": [False, True]}),
                   tmp_path / "dev.parquet")
    pq.write_table(pa.table({"text": ["unseen"]}), tmp_path / "test.parquet")
    task = _files_task({"train": str(tmp_path / "train.parquet"),
                        "dev": str(tmp_path / "dev.parquet"),
                        "test": str(tmp_path / "test.parquet")},
                       type="classification", labels=["0", "1"])
    with pytest.raises(DataError, match=r"dev\.parquet, row 1, column 'label': label 'false'"):
        load_file_task(task)
    task.labels = ["false", "true"]
    with pytest.raises(DataError, match=r"train\.parquet, row 1, column 'label': label '1' is "):
        load_file_task(task)
    pq.write_table(pa.table({"text": ["call me", "free prize"], "label": [0, 1]}),
                   tmp_path / "dev.parquet")
    task.labels = ["0", "1"]
    splits = load_file_task(task)[0]
    assert splits["train"]["label"] == [1, 0, 1] and splits["dev"]["label"] == [0, 1]
    assert splits["test"]["label"] == [NO_LABEL]


def test_ranking_from_jsonl(tmp_path: Path) -> None:
    rows = [{"query": "capital of France?", "candidates": ["Berlin", "Paris", "Rome"],
             "label": 1},
            {"query": "2 + 2?", "candidates": ["4", "5"], "label": 0}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "dev.jsonl").write_text(
        json.dumps({"query": "sky colour?", "candidates": ["blue", "green"], "label": 2}) + "\n")
    task = _files_task({"train": str(tmp_path / "train.jsonl")}, type="ranking")
    train = load_file_task(task)[0]["train"]
    assert train.features == features_for(task_type("ranking"))
    assert train["text"] == ["capital of France?", "2 + 2?"]
    assert train["candidates"] == [["Berlin", "Paris", "Rome"], ["4", "5"]]
    assert train["label"] == [1, 0] and set(train["text_pair"]) == {""}
    task.files["dev"] = str(tmp_path / "dev.jsonl")
    with pytest.raises(DataError, match=r"dev\.jsonl, row 1, column 'label': label '2' is not "
                                        r"the index of a candidate \(0 to 1\)"):
        load_file_task(task)


def test_ranking_candidates_as_json_in_csv(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(
        'q,options,answer\nwho?,"[""me"", ""you""]",1\nwhat?,not a list,0\n')
    task = _files_task({"train": str(tmp_path / "train.csv")}, type="ranking", bad_rows="skip",
                       columns={"query": "q", "candidates": "options", "label": "answer"})
    splits, summary = load_file_task(task)
    assert splits["train"]["candidates"] == [["me", "you"]]
    assert summary.counts() == {"bad_candidates": 1}
    assert (summary.examples[0].row, summary.examples[0].column) == (3, "options")


# ------------------------------------------------------------------ GLUE


def _hub_parquet(path: Path, columns: dict[str, list], labels: list[str] | None) -> str:
    """A parquet file as the hub's nyu-mll/glue has them (ClassLabel metadata included)."""
    features = {name: datasets.Value("string") for name in columns if name not in ("label",
                                                                                   "idx")}
    features["label"] = (datasets.ClassLabel(names=labels) if labels
                         else datasets.Value("float32"))
    features["idx"] = datasets.Value("int32")
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(
        str(path))
    return str(path)


def test_glue_sst2_from_local_parquet(tmp_path: Path) -> None:
    names = ["negative", "positive"]
    files = {
        "train": _hub_parquet(tmp_path / "train.parquet",
                              {"sentence": ["a gem ", "a mess ", "quite fine "],
                               "label": [1, 0, 1], "idx": [0, 1, 2]}, names),
        "dev": _hub_parquet(tmp_path / "validation.parquet",
                            {"sentence": ["a gem ", "boring "], "label": [1, 0],
                             "idx": [0, 1]}, names),
        "test": _hub_parquet(tmp_path / "test.parquet",
                             {"sentence": ["who knows "], "label": [-1], "idx": [0]}, names)}
    task = TaskConfig(name="sst2", source="glue", glue_task="sst2", files=files)
    splits, summary = load_glue_task(task, 0)
    assert summary.total == 0
    assert splits["train"]["uid"] == ["sst2-train-0", "sst2-train-1", "sst2-train-2"]
    assert splits["dev"]["uid"] == ["sst2-dev-0", "sst2-dev-1"]  # same text, other uid: fine
    assert splits["train"]["label"] == [1, 0, 1] and splits["test"]["label"] == [NO_LABEL]
    spec = glue_task_spec(task)
    assert (spec.type, spec.labels, spec.metrics) == ("classification", tuple(names),
                                                      ("accuracy",))
    assert GLUE_TASKS["cola"].metrics == ("mcc",)


def test_glue_stsb_and_mrpc_from_local_parquet(tmp_path: Path) -> None:
    pair = {"sentence1": ["A man is cooking.", "A dog runs."],
            "sentence2": ["Someone cooks.", "A cat sleeps."], "idx": [0, 1]}
    stsb = {"train": _hub_parquet(tmp_path / "stsb-train.parquet",
                                  {**pair, "label": [4.6, 0.4]}, None),
            "test": _hub_parquet(tmp_path / "stsb-test.parquet",
                                 {**pair, "label": [-1.0, -1.0]}, None)}
    splits, _ = load_glue_task(TaskConfig(name="sts", source="glue", glue_task="stsb",
                                          files=stsb))
    assert splits["train"]["label"] == pytest.approx([4.6, 0.4])
    assert splits["train"]["text_pair"] == ["Someone cooks.", "A cat sleeps."]
    assert all(math.isnan(x) for x in splits["test"]["label"])
    assert splits["train"].features["label"].dtype == "float32"

    mrpc_labels = ["not_equivalent", "equivalent"]
    mrpc = {"train": _hub_parquet(tmp_path / "mrpc-train.parquet",
                                  {**pair, "label": [1, 0]}, mrpc_labels),
            "dev": _hub_parquet(tmp_path / "mrpc-dev.parquet",
                                {**pair, "label": [0, 0]}, mrpc_labels)}
    task = TaskConfig(name="mrpc", source="glue", glue_task="mrpc", files=mrpc)
    splits, _ = load_glue_task(task)
    assert splits["train"]["label"] == [1, 0] and splits["dev"]["uid"] == ["mrpc-dev-0",
                                                                          "mrpc-dev-1"]
    assert glue_task_spec(task).metrics == ("accuracy", "f1")


def test_glue_files_with_wrong_columns_or_labels(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": ["x"], "label": [0], "idx": [0]}), path)
    task = TaskConfig(name="rte", source="glue", glue_task="rte", files={"train": str(path)})
    with pytest.raises(DataError, match=r"column 'sentence1' for role 'text' not found; columns "
                                        r"found: 'text', 'label', 'idx'"):
        load_glue_task(task, 4)
    pq.write_table(pa.table({"sentence1": ["x"], "sentence2": ["y"], "label": [7]}), path)
    with pytest.raises(DataError, match=r"train\.parquet, row 1, column 'label': label '7' is "
                                        r"not a class index 0 to 1"):
        load_glue_task(task)


def test_glue_without_files_offline_is_a_clear_error() -> None:
    task = TaskConfig(name="sst2", source="glue", glue_task="sst2")
    with pytest.raises(MtkdError) as info:
        load_glue_task(task, 3)
    msg = str(info.value)
    assert isinstance(info.value, DataError)
    assert "nyu-mll/glue" in msg and "network" in msg and "tasks.3.files" in msg


def test_glue_unknown_task_and_wrong_type() -> None:
    with pytest.raises(DataError, match=r"tasks\.0\.glue_task 'sst5' is not a GLUE task.*cola"):
        load_glue_task(TaskConfig(name="x", source="glue", glue_task="sst5"), 0)
    with pytest.raises(DataError, match=r"qnli is a pair_classification task, not ranking"):
        load_glue_task(TaskConfig(name="x", source="glue", glue_task="qnli", type="ranking"))


def test_glue_hub_path_maps_mnli_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub branch, with load_dataset answered locally (the hub is unreachable here)."""
    names = list(GLUE_TASKS["mnli"].labels)

    def split(n: int, label: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"premise": [f"p{i}" for i in range(n)], "hypothesis": [f"h{i}" for i in range(n)],
             "label": [label] * n, "idx": list(range(n))},
            features=datasets.Features({"premise": datasets.Value("string"),
                                        "hypothesis": datasets.Value("string"),
                                        "label": datasets.ClassLabel(names=names),
                                        "idx": datasets.Value("int32")}))

    calls = []

    def fake_load_dataset(path: str, name: str) -> datasets.DatasetDict:
        calls.append((path, name))
        return datasets.DatasetDict({"train": split(3, 2), "validation_matched": split(2, 0),
                                     "validation_mismatched": split(2, 1),
                                     "test_matched": split(1, -1)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = TaskConfig(name="mnli", source="glue", glue_task="mnli", max_train_examples=2)
    splits, _ = load_glue_task(task)
    assert calls == [("nyu-mll/glue", "mnli")]
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "dev": 2, "test": 1}
    assert splits["dev"]["uid"] == ["mnli-dev-0", "mnli-dev-1"]
    assert splits["dev"]["text_pair"] == ["h0", "h1"] and splits["test"]["label"] == [NO_LABEL]
