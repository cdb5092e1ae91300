"""Mixed ensembles: members and the student with encoders of different tokenizers.

Two tiny random BERTs built here, one with a word-level WordPiece vocabulary
(``encoder.path``) and one with a BPE vocabulary trained with the ``tokenizers`` library,
so the same text gets other token ids. The whole pipeline runs (prepare -> teachers ->
soft -> student -> report) with one member and the student on the BPE encoder, and the
tests check that every model read the tokenization of its own encoder, that the soft
targets join by uid across the tokenizations, and that every saved model ships the
tokenizer its inputs were made with.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny import make_tiny_bert, make_tiny_bpe_bert, write_regression, write_task

from mtkd.config import config_from_dict
from mtkd.data.prepared import encoder_tokenization, read_prepared, read_task_spec
from mtkd.data.tokenize import load_tokenizer
from mtkd.experiment import read_manifest
from mtkd.model.remote import load_model_from
from mtkd.pipeline import experiment_store, run_pipeline
from mtkd.pretrained import tokenizer_fingerprint
from mtkd.soft.aggregate import softmax
from mtkd.storage import Storage
from mtkd.tasks.resolve import load_task
from mtkd.training.evaluate import predict_outputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mixed")
    wordpiece = make_tiny_bert(root / "wordpiece", hidden=32, layers=2)
    bpe = make_tiny_bpe_bert(root / "bpe", hidden=32, layers=2, seed=1)
    cls = {"name": "toy", "source": "files", "type": "classification",
           "labels": ["neg", "pos"], "max_length": 24,
           "files": {"train": str(write_task(root / "c_train.csv", 96, 0)),
                     "dev": str(write_task(root / "c_dev.csv", 24, 1)),
                     "test": str(write_task(root / "c_test.csv", 16, 5))}}
    reg = {"name": "score", "source": "files", "type": "regression", "max_length": 24,
           "files": {"train": str(write_regression(root / "r_train.csv", 64, 2)),
                     "dev": str(write_regression(root / "r_dev.csv", 16, 3))}}
    config = {
        "name": "mixed", "storage_path": str(root / "runs"), "ray": {"num_cpus": 2},
        "encoder": {"path": str(wordpiece)}, "tasks": [cls, reg],
        "teachers": {"size": 2, "max_concurrent": 2, "max_failures": 0,
                     "variation": {"strategy": "list",
                                   "members": [{"seed": 1}, {"seed": 2, "encoder": str(bpe)}]},
                     "training": {"epochs": 1, "batch_size": 16, "learning_rate": 0.002,
                                  "precision": "fp32"}},
        "soft_targets": {"batch_size": 16, "precision": "fp32",
                         "resources_per_actor": {"cpu": 0.5}},
        "student": {"encoder": str(bpe), "num_layers": 2, "num_workers": 1,
                    "resources_per_worker": {"cpu": 1},
                    "training": {"epochs": 1, "batch_size": 16, "learning_rate": 0.002,
                                 "precision": "fp32"}},
        "report": {"bootstrap_samples": 0, "plot": False},
    }
    return {"config": config, "wordpiece": wordpiece, "bpe": bpe,
            "bpe_fp": tokenizer_fingerprint(bpe)}


def _ids(tokenizer: object, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def test_prepare_tokenizes_once_per_tokenizer_and_adds_only_what_is_new(setup: dict) -> None:
    """Prepare alone: first with encoder.path only; then a member on the BPE encoder adds
    the BPE tokenization and reuses the WordPiece one untouched."""
    data = json.loads(json.dumps(setup["config"]))
    data["name"] = "prepare-only"
    data["teachers"]["variation"]["members"][1].pop("encoder")
    data["student"].pop("encoder")
    plain = config_from_dict(data)
    run_pipeline(plain, only="prepare")
    store = experiment_store(plain)
    first = read_manifest(store, "prepare")
    assert first["tokenizations"] == {} and set(first["encoders"]) == {str(setup["wordpiece"])}
    meta = store.child("data/toy").read_json("meta.json")

    data["teachers"]["variation"]["members"][1]["encoder"] = str(setup["bpe"])
    mixed = config_from_dict(data)
    run_pipeline(mixed, only="prepare")
    second = read_manifest(store, "prepare")
    fp = setup["bpe_fp"]
    assert second["tasks"] == first["tasks"]  # encoder.path's: reused as it was
    assert store.child("data/toy").read_json("meta.json") == meta
    assert list(second["tokenizations"]) == [fp]
    assert second["tokenizations"][fp]["dir"] == f"tok-{fp[:10]}"
    assert second["encoders"] == {str(setup["wordpiece"]): second["tokenizer"],
                                  str(setup["bpe"]): fp}
    assert second["output_fingerprint"] != first["output_fingerprint"]
    assert store.exists(f"data/toy/tok-{fp[:10]}/train.parquet")
    # and a third run reuses both
    run_pipeline(mixed, only="prepare")
    assert read_manifest(store, "prepare")["tokenizations"] == second["tokenizations"]


def test_mixed_ensemble_pipeline(setup: dict) -> None:
    config = config_from_dict(setup["config"])
    run_pipeline(config)
    store = experiment_store(config)
    fp = setup["bpe_fp"]
    wordpiece = load_tokenizer(setup["wordpiece"])
    bpe = load_tokenizer(setup["bpe"])
    assert encoder_tokenization(store, str(setup["bpe"])) == fp
    assert encoder_tokenization(store, str(setup["wordpiece"])) is None

    # 1. Both tokenizations hold the same canonical rows: uids, labels, splits; the token
    # ids are each tokenizer's own (and differ between them).
    loaded = load_task(config.tasks[0], 0)
    for split in ("train", "dev", "test"):
        default = read_prepared(store, "toy", split)
        other = read_prepared(store, "toy", split, fp)
        assert list(default["uid"]) == list(other["uid"]) == list(loaded.splits[split]["uid"])
        assert list(default["label"]) == list(other["label"])
        texts = list(loaded.splits[split]["text"])
        assert list(default["input_ids"]) == _ids(wordpiece, texts, 24)
        assert list(other["input_ids"]) == _ids(bpe, texts, 24)
        assert list(default["input_ids"]) != list(other["input_ids"])
    assert list(read_prepared(store, "score", "train")["uid"]) == list(read_prepared(
        store, "score", "train", fp)["uid"])

    # 2. Each member trained on its own encoder's tokenization and ships its tokenizer.
    members = {m: store.read_json(f"teachers/{m}/member.json") for m in ("m000", "m001")}
    assert members["m000"]["encoder"] == str(setup["wordpiece"])
    assert members["m000"]["tokenization"] is None
    assert members["m001"]["encoder"] == str(setup["bpe"])
    assert members["m001"]["tokenization"] == fp
    text = str(loaded.splits["dev"][0]["text"])
    with tempfile.TemporaryDirectory() as tmp:
        models = {m: load_model_from(store, f"teachers/{m}/model", Path(tmp) / m)
                  for m in members}
        student, student_tokenizer = load_model_from(store, "student/student/final",
                                                     Path(tmp) / "student")
    assert models["m000"][1](text)["input_ids"] == wordpiece(text)["input_ids"]
    assert models["m001"][1](text)["input_ids"] == bpe(text)["input_ids"]
    assert student_tokenizer(text)["input_ids"] == bpe(text)["input_ids"]
    assert models["m001"][0].encoder.config.vocab_size == len(bpe.get_vocab())

    # 3. The soft stage fed each member its own tokenization: its stored outputs equal its
    # predictions on its own rows (by uid), not on the other tokenizer's ids.
    spec = read_task_spec(store, "toy")
    own = {}
    for member, tokenization in (("m000", None), ("m001", fp)):
        rows = read_prepared(store, "toy", "train", tokenization)
        outputs = predict_outputs(models[member][0], spec, rows)
        own[member] = dict(zip(rows["uid"], outputs, strict=True))
        stored = pq.read_table(io.BytesIO(store.read_bytes(
            f"soft_targets/_members/{member}/toy.parquet")))
        train = stored.filter(stored["split"].to_numpy(zero_copy_only=False) == "train")
        for uid, logits in zip(train["uid"].to_pylist(), train["logits"].to_pylist(),
                               strict=True):
            np.testing.assert_allclose(logits, own[member][uid], atol=1e-4)
    wrong = predict_outputs(models["m001"][0], spec, read_prepared(store, "toy", "train"))
    uids = list(read_prepared(store, "toy", "train")["uid"])
    assert not np.allclose(wrong, np.stack([own["m001"][u] for u in uids]), atol=1e-3)

    # 4. Soft targets: one row per uid, the mean of the members' probabilities joined by
    # uid across the two tokenizations (whose rows the soft stage sorted differently).
    table = pq.read_table(io.BytesIO(store.read_bytes("soft_targets/toy/train.parquet")))
    assert sorted(table["uid"].to_pylist()) == sorted(uids)
    for uid, target in zip(table["uid"].to_pylist(), table["soft_target"].to_pylist(),
                           strict=True):
        expected = np.mean([softmax(own[m][uid][None])[0] for m in own], axis=0)
        np.testing.assert_allclose(target, expected, atol=1e-4)

    # 5. The student read the BPE tokenization and learnt from both members' targets.
    record = store.read_json("student/student/student.json")
    assert record["encoder"] == str(setup["bpe"]) and record["tokenization"] == fp
    assert student.encoder.config.vocab_size == len(bpe.get_vocab())

    # 6. The report names each member's encoder and tokenization.
    report = Storage.from_uri(store.uri).read_text("report/report.md")
    assert "## Encoders" in report
    assert f"| member m000 | `{setup['wordpiece']}` | encoder.path's |" in report
    assert f"| member m001 | `{setup['bpe']}` | tok-{fp[:10]} |" in report
    assert f"| student (KD) | `{setup['bpe']}` | tok-{fp[:10]} |" in report
