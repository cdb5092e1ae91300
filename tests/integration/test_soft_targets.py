"""Soft targets with Ray Data: 3 members on a classification and a regression task, the
averaging checked against member outputs computed separately, a missing uid caught, and
a 4th member added with only its own inference run."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny import make_tiny_bert, write_regression, write_task

from mtkd.config import config_from_dict
from mtkd.data.prepared import read_prepared, read_task_spec
from mtkd.errors import DataError
from mtkd.model.remote import load_model_from
from mtkd.pipeline import experiment_store, run_pipeline
from mtkd.soft.aggregate import softmax
from mtkd.storage import Storage
from mtkd.training.evaluate import predict_outputs

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("soft")
    encoder = make_tiny_bert(root / "encoder", hidden=32, layers=2)
    cls = {"name": "toy", "source": "files", "type": "classification",
           "labels": ["neg", "pos"], "max_length": 32,
           "files": {"train": str(write_task(root / "c_train.csv", 160, 0)),
                     "dev": str(write_task(root / "c_dev.csv", 40, 1)),
                     "test": str(write_task(root / "c_test.csv", 30, 5))}}
    reg = {"name": "score", "source": "files", "type": "regression", "max_length": 32,
           "files": {"train": str(write_regression(root / "r_train.csv", 120, 2)),
                     "dev": str(write_regression(root / "r_dev.csv", 40, 3))}}
    return {
        "name": "soft", "storage_path": str(root / "runs"), "ray": {"num_cpus": 2},
        "encoder": {"path": str(encoder)}, "tasks": [cls, reg],
        "teachers": {"size": 3, "max_concurrent": 2, "max_failures": 0,
                     "variation": {"strategy": "grid", "seed": [1, 2, 3, 4]},
                     "training": {"epochs": 2, "batch_size": 16, "learning_rate": 0.002}},
        "soft_targets": {"batch_size": 16, "precision": "fp32",
                         "resources_per_actor": {"cpu": 0.5}},
        "student": {"num_layers": 2},  # the encoder has 2
    }


def member_outputs(store: Storage, member: str, task: str, split: str = "train") -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load_model_from(store, f"teachers/{member}/model", Path(tmp) / "m")
        return predict_outputs(model, read_task_spec(store, task),
                               read_prepared(store, task, split))


def targets(store: Storage, task: str, split: str = "train") -> dict:
    table = pq.read_table(io.BytesIO(store.read_bytes(f"soft_targets/{task}/{split}.parquet")))
    return {u: (s, n) for u, s, n in zip(table["uid"].to_pylist(),
                                         table["soft_target"].to_pylist(),
                                         table["num_members"].to_pylist(), strict=True)}


def test_soft_targets_average_members_and_grow_incrementally(experiment: dict) -> None:
    config = config_from_dict(experiment)
    outcomes = {o.name: o for o in run_pipeline(config, to_stage="soft")}
    store = experiment_store(config)
    members = ["m000", "m001", "m002"]

    # Classification: the mean of the members' probabilities, joined by uid.
    uids = read_prepared(store, "toy", "train")["uid"]
    expected = np.mean([softmax(member_outputs(store, m, "toy")) for m in members], axis=0)
    soft = targets(store, "toy")
    assert set(soft) == set(uids)
    for uid, row in zip(uids, expected, strict=True):
        np.testing.assert_allclose(soft[uid][0], row, atol=1e-4)
        assert soft[uid][1] == 3
    # Regression: the members' mean score.
    uids = read_prepared(store, "score", "train")["uid"]
    expected = np.mean([member_outputs(store, m, "score") for m in members], axis=0)
    soft = targets(store, "score")
    for uid, value in zip(uids, expected, strict=True):
        assert soft[uid][0] == pytest.approx([value], abs=1e-4)

    ensemble = store.read_json("teachers/ensemble.json")
    assert set(ensemble["tasks"]["toy"]["members"]) == set(members)
    assert "accuracy" in ensemble["tasks"]["toy"]["ensemble"]
    # The test split: every member and the ensemble scored on it, nothing written for it.
    gold = np.asarray(read_prepared(store, "toy", "test")["label"])
    outputs = {m: member_outputs(store, m, "toy", "test") for m in members}
    scored = ensemble["tasks"]["toy"]["test"]
    for m in members:
        accuracy = 100 * np.mean(outputs[m].argmax(-1) == gold)
        assert scored["members"][m]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    mean_probs = np.mean([softmax(o) for o in outputs.values()], axis=0)
    assert scored["ensemble"]["accuracy"] == pytest.approx(
        100 * np.mean(mean_probs.argmax(-1) == gold), abs=1e-6)
    assert "test" not in ensemble["tasks"]["score"]  # no test split
    assert not store.exists("soft_targets/toy/test.parquet")
    assert outcomes["soft"].manifest["ensemble_average"] == ensemble["ensemble_average"]

    # A 4th member: only its own inference runs; the other members' predictions are reused.
    # Its actor asks for every CPU of the 2-CPU Ray: that hung the stage while Ray Data cut
    # the blocks with tasks of their own (now the stage cuts them; the timeout would fail).
    done = {m: store.read_text(f"soft_targets/_members/{m}/done.json") for m in members}
    whole = {**experiment["soft_targets"], "resources_per_actor": {"cpu": 2}}
    bigger = config_from_dict({**experiment, "soft_targets": whole,
                               "teachers": {**experiment["teachers"], "size": 4}})
    run_pipeline(bigger, to_stage="soft")
    assert {m: store.read_text(f"soft_targets/_members/{m}/done.json") for m in members} == done
    assert store.exists("soft_targets/_members/m003/done.json")
    assert {n for _, n in targets(store, "toy").values()} == {4}

    # A member's predictions lose a uid: the stage stops with a clear error naming it.
    rel = "soft_targets/_members/m001/toy.parquet"
    table = pq.read_table(io.BytesIO(store.read_bytes(rel)))
    dropped = table["uid"][0].as_py()
    buffer = io.BytesIO()
    pq.write_table(table.slice(1), buffer)
    store.write_bytes(rel, buffer.getvalue())
    store.delete("manifests/soft.json")  # the stage runs again, reusing the predictions
    with pytest.raises(DataError, match=dropped):
        run_pipeline(bigger, only="soft")
