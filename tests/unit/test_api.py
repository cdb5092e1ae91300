"""The Python API (mtkd/api.py): ``import mtkd`` stays torch-free, ``load_student`` +
``predict`` equal ``predict_texts``, clear errors, and ``mtkd.run`` says where results are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny import toy_files_task

import mtkd
from mtkd.padding import PAD_SCORE

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["good film", "the plot was very bad and the movie was awful", "fine", "not good",
         "a great movie", "poor"]
PAIRS = ["bad", "good plot", "the film is fine", "awful", "very poor movie", "great"]


@pytest.fixture(scope="module")
def student(model_dir: Path) -> mtkd.Student:
    return mtkd.load_student(model_dir, device="cpu")


def test_import_mtkd_is_light() -> None:
    """``import mtkd`` (and touching the config names) imports neither torch nor Ray."""
    code = ("import sys, mtkd; mtkd.load_config; mtkd.ExperimentConfig; mtkd.MtkdError; "
            "print(sorted(m for m in ('torch', 'ray', 'transformers', 'numpy') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert set(mtkd.__all__) <= set(dir(mtkd))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mtkd.nope  # noqa: B018


def test_predict_equals_predict_texts_with_labels(student: mtkd.Student,
                                                  model_dir: Path) -> None:
    from mtkd.model.io import load_mtdnn
    from mtkd.model.predict import predict_texts

    assert student.tasks == ("sent", "sim", "nli", "qa")
    assert "sent" in repr(student)
    model, tokenizer = load_mtdnn(model_dir)
    qa_candidates = [["good", "bad plot"], ["a fine movie", "awful", "the film"]]

    out = student.predict("sent", TEXTS, precision="fp32")
    expected = predict_texts(model, tokenizer, "sent", TEXTS, probs=True)
    np.testing.assert_allclose(out.values, expected, atol=1e-6)
    assert out.values.shape == (6, 2) and out.values.dtype == np.float32
    assert out.probabilities and out.labels == ("neg", "pos") == student.labels("sent")
    assert list(out.label) == [("neg", "pos")[i] for i in expected.argmax(axis=1)]
    assert out.best_candidate is None and len(out) == 6

    logits = student.predict("sent", TEXTS, probabilities=False, batch_size=2,
                             precision="fp32")
    np.testing.assert_allclose(logits.values,
                               predict_texts(model, tokenizer, "sent", TEXTS), atol=1e-5)
    assert not logits.probabilities and list(logits.label) == list(out.label)

    nli = student.predict("nli", TEXTS, PAIRS, precision="fp32")
    np.testing.assert_allclose(
        nli.values, predict_texts(model, tokenizer, "nli", TEXTS, PAIRS, probs=True),
        atol=1e-6)
    assert nli.labels == ("entail", "neutral", "contra") and nli.type == "pair_classification"

    sim = student.predict("sim", TEXTS, precision="fp32")
    np.testing.assert_allclose(sim.values, predict_texts(model, tokenizer, "sim", TEXTS),
                               atol=1e-6)
    assert sim.values.shape == (6,) and sim.label is None and not sim.probabilities
    assert sim.labels == ()

    qa = student.predict("qa", ["what is good", "which film"], qa_candidates,
                         probabilities=False, precision="fp32")
    scores = predict_texts(model, tokenizer, "qa", ["what is good", "which film"],
                           qa_candidates)
    np.testing.assert_allclose(qa.values, scores, atol=1e-6)
    assert qa.values.shape == (2, 3) and qa.values[0, 2] == PAD_SCORE
    assert list(qa.best_candidate) == list(scores.argmax(axis=1))

    empty = student.predict("sent", [], precision="fp32")
    assert empty.values.shape == (0, 2) and len(empty.label) == 0


def test_auto_precision_matches_mtkd_predict_rule(student: mtkd.Student,
                                                  model_dir: Path) -> None:
    """precision="auto" resolves as `mtkd predict` does (bf16 only on native-bf16 CPUs)."""
    from mtkd.model.io import load_mtdnn
    from mtkd.model.predict import predict_texts
    from mtkd.precision import resolve_here

    resolved = resolve_here("auto", "cpu")
    model, tokenizer = load_mtdnn(model_dir)
    np.testing.assert_allclose(
        student.predict("sent", TEXTS).values,
        predict_texts(model, tokenizer, "sent", TEXTS, probs=True,
                      precision=resolved.precision),
        atol=1e-6)


def test_user_mistakes_are_clear_errors(student: mtkd.Student, tmp_path: Path) -> None:
    with pytest.raises(mtkd.UnknownTaskError, match=r"no task 'nope'.*sent, sim, nli, qa"):
        student.predict("nope", TEXTS)
    assert issubclass(mtkd.UnknownTaskError, mtkd.MtkdError)
    with pytest.raises(mtkd.DataError, match=r"list of strings.*wrap a single text"):
        student.predict("sent", "good film")
    with pytest.raises(mtkd.DataError, match=r"texts\[1\] is a int"):
        student.predict("sent", ["good", 3])
    with pytest.raises(mtkd.DataError, match="give text_pairs"):
        student.predict("nli", TEXTS)
    with pytest.raises(mtkd.DataError, match="one entry per text"):
        student.predict("nli", TEXTS, PAIRS[:2])
    with pytest.raises(mtkd.DataError, match="takes single texts"):
        student.predict("sent", TEXTS, PAIRS)
    with pytest.raises(mtkd.MtkdError, match="batch_size"):
        student.predict("sent", TEXTS, batch_size=0)
    with pytest.raises(mtkd.MtkdError, match="fp16"):
        student.predict("sent", TEXTS, precision="fp16")  # refused on a CPU
    with pytest.raises(mtkd.MtkdError, match="does not exist"):
        mtkd.load_student(tmp_path / "absent")
    with pytest.raises(mtkd.MtkdError, match=r"mtdnn\.json is missing"):
        mtkd.load_student(tmp_path)


@pytest.mark.s3
def test_load_student_from_s3(s3_env: str, model_dir: Path, student: mtkd.Student) -> None:
    from mtkd.storage import Storage

    uri = f"{s3_env}/api-model"
    Storage.from_uri(uri).upload_dir(model_dir, "")
    remote = mtkd.load_student(uri, device="cpu")
    assert remote.tasks == student.tasks and remote.source == uri
    np.testing.assert_allclose(remote.predict("sent", TEXTS, precision="fp32").values,
                               student.predict("sent", TEXTS, precision="fp32").values)


def test_run_prepare_only_says_where_results_are(tiny_encoder_dir: Path,
                                                 tmp_path: Path) -> None:
    task = toy_files_task(tmp_path)
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(yaml.safe_dump({
        "name": "api", "storage_path": str(tmp_path / "runs"),
        "encoder": {"path": str(tiny_encoder_dir)}, "tasks": [task],
        "student": {"num_layers": 2}}))
    config = mtkd.load_config(config_file, ["seed=1"])
    assert isinstance(config, mtkd.ExperimentConfig) and config.seed == 1

    result = mtkd.run(config, only="prepare")
    root = tmp_path / "runs" / "api"
    assert result.name == "api" and result.storage_uri == str(root)
    assert result.config_uri == str(root / "config.yaml") and Path(result.config_uri).is_file()
    assert list(result.stages) == ["prepare"]
    prepare = result.stages["prepare"]
    assert prepare.status == "ran" and prepare.seconds > 0
    assert prepare.manifest_uri == str(root / "manifests" / "prepare.json")
    assert json.loads(Path(prepare.manifest_uri).read_text())["lineage"] == (
        prepare.manifest["lineage"])
    assert result.report_uri is None
    assert result.pending == {"teachers": "not run yet", "soft": "not run yet",
                              "student": "not run yet", "report": "not run yet"}
    assert "results in" in str(result) and "prepare" in str(result)
    assert (root / "data" / "toy" / "train.parquet").is_file()

    again = mtkd.run(config_file, overrides=["seed=1"], only="prepare")
    assert again.stages["prepare"].status == "ran"  # prepare always runs (reusing its data)
    with pytest.raises(mtkd.MtkdError, match="--only nope: no such stage"):
        mtkd.run(config, only="nope")
    with pytest.raises(mtkd.MtkdError, match="overrides are applied"):
        mtkd.run(config, overrides=["seed=2"])
    with pytest.raises(mtkd.ConfigError, match="seed"):
        mtkd.run(config_file, overrides=["seed=abc"])
