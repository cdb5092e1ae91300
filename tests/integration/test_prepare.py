"""The prepare stage on real bundled data and user files: storage layout, reuse, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtkd.config import config_from_dict
from mtkd.data.prepared import read_prepared, read_task_spec
from mtkd.errors import DataError
from mtkd.pipeline import read_manifest, run_pipeline
from mtkd.storage import Storage

REPO = Path(__file__).resolve().parents[2]


def experiment(storage: str, csv_path: Path, dev_path: Path | None = None) -> dict:
    return {
        "name": "prep",
        "storage_path": storage,
        "tasks": [
            {"name": "rotten_tomatoes", "max_length": 48, "max_train_examples": 300,
             "max_dev_examples": 100},
            {"name": "boolq", "max_length": 96, "max_train_examples": 120,
             "max_dev_examples": 40},
            {"name": "mine", "source": "files", "type": "classification",
             "labels": ["neg", "pos"],
             "files": {"train": str(csv_path), "dev": str(dev_path or csv_path)},
             "columns": {"text": "sentence", "label": "sentiment"}},
        ],
    }


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("sentence,sentiment\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    return path


ROWS = [("a fine film", "pos"), ("dull and long", "neg"), ("loved it", "pos"),
        ("not for me", "neg")]
DEV_ROWS = [("quite good", "pos"), ("too slow", "neg")]


def test_prepare_writes_reuses_and_redoes_changed_tasks(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "mine.csv", ROWS)
    dev_path = write_csv(tmp_path / "mine_dev.csv", DEV_ROWS)
    config = config_from_dict(experiment(str(tmp_path / "runs"), csv_path, dev_path))
    [outcome] = run_pipeline(config, to_stage="prepare")
    store = Storage.from_uri(str(tmp_path / "runs")).child("prep")

    train = read_prepared(store, "rotten_tomatoes", "train")
    assert len(train) == 300
    assert set(train.column_names) == {"uid", "label", "input_ids", "token_type_ids", "length"}
    assert max(train["length"]) <= 48
    assert all(len(ids) == n for ids, n in zip(train["input_ids"], train["length"],
                                               strict=True))
    boolq = read_prepared(store, "boolq", "train")
    assert max(boolq["length"]) <= 96
    assert any(1 in types for types in boolq["token_type_ids"])  # pairs got segment ids
    assert len(read_prepared(store, "boolq", "dev")) == 40
    assert read_task_spec(store, "boolq").labels == ("false", "true")
    rt_meta = outcome.manifest["tasks"]["rotten_tomatoes"]["splits"]["train"]
    assert rt_meta["padding_bucketed"] < rt_meta["padding_unbucketed"]
    assert len(read_prepared(store, "mine", "train")) == 4

    stamp = {t: (tmp_path / "runs/prep/data" / t / "meta.json").stat().st_mtime_ns
             for t in ("rotten_tomatoes", "boolq", "mine")}
    first_fp = outcome.manifest["output_fingerprint"]
    [again] = run_pipeline(config, to_stage="prepare")
    assert again.manifest["output_fingerprint"] == first_fp
    assert stamp == {t: (tmp_path / "runs/prep/data" / t / "meta.json").stat().st_mtime_ns
                     for t in stamp}

    write_csv(csv_path, [*ROWS, ("a late addition", "pos")])
    [changed] = run_pipeline(config, to_stage="prepare")
    assert changed.manifest["output_fingerprint"] != first_fp
    assert len(read_prepared(store, "mine", "train")) == 5
    for task in ("rotten_tomatoes", "boolq"):
        meta = tmp_path / "runs/prep/data" / task / "meta.json"
        assert meta.stat().st_mtime_ns == stamp[task]


def test_same_file_as_train_and_dev_is_refused(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "mine.csv", ROWS)
    data = experiment(str(tmp_path / "runs"), csv_path)
    data["tasks"] = data["tasks"][2:]
    with pytest.raises(DataError, match="train and the dev split"):
        run_pipeline(config_from_dict(data), to_stage="prepare")


def test_bad_user_file_exits_2_naming_file_row_column(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "mine.csv", [*ROWS, ("so so", "meh")])
    data = experiment(str(tmp_path / "runs"), csv_path, write_csv(tmp_path / "d.csv", DEV_ROWS))
    data["tasks"] = data["tasks"][2:]
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "mtkd", "run", str(config_file)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "mine.csv" in result.stderr and "sentiment" in result.stderr
    assert "meh" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs/prep/data/mine/meta.json").exists()
    store = Storage.from_uri(str(tmp_path / "runs")).child("prep")
    assert read_manifest(store, "prepare") is None


@pytest.mark.s3
def test_prepare_on_s3_storage(s3_env: str, tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "mine.csv", ROWS)
    data = experiment(s3_env, csv_path, write_csv(tmp_path / "d.csv", DEV_ROWS))
    data["tasks"] = [data["tasks"][0], data["tasks"][2]]
    run_pipeline(config_from_dict(data), to_stage="prepare")
    store = Storage.from_uri(s3_env).child("prep")
    assert len(read_prepared(store, "rotten_tomatoes", "dev")) == 100
    assert store.exists("manifests/prepare.json") and store.exists("config.yaml")
