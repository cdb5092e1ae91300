"""Student distillation with Ray Train + DeepSpeed: 2 CPU workers, ZeRO-2 at precision auto
(bf16 mixed precision on a CPU with native bf16), S3 storage, a killed worker, exact
resume, export; ZeRO-0 vs ZeRO-2 losses in fp32."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny import toy_experiment

from mtkd.config import config_from_dict
from mtkd.data.prepared import read_prepared, read_task_spec
from mtkd.model.io import load_mtdnn
from mtkd.model.remote import load_model_from
from mtkd.pipeline import experiment_store, run_pipeline
from mtkd.precision import probe_device, resolve_precision
from mtkd.storage import Storage
from mtkd.training.evaluate import predict_outputs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return toy_experiment(tmp_path_factory.mktemp("student"), "stu")


def kill_rank(store: Storage, rank: int, after_step: int, killed: dict) -> None:
    path = f"student/student/progress/rank{rank}.json"
    deadline = time.time() + 400
    while time.time() < deadline:
        try:
            progress = store.read_json(path) if store.exists(path) else None
        except Exception:  # a read racing the atomic write; try again
            progress = None
        if progress and progress["step"] >= after_step and progress["attempt"] == 1:
            os.kill(progress["pid"], signal.SIGKILL)
            killed.update(progress)
            return
        time.sleep(0.05)


def test_two_workers_zero2_on_s3_survive_a_killed_worker(experiment: dict, s3_env: str,
                                                               tmp_path: Path) -> None:
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(yaml.safe_dump({**experiment, "storage_path": s3_env}))
    store = Storage.from_uri(s3_env).child("stu")
    killed: dict = {}
    watcher = threading.Thread(target=kill_rank, args=(store, 1, 10, killed))
    watcher.start()
    result = subprocess.run([sys.executable, "-m", "mtkd", "run", str(config_file)],
                            cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=os.environ.copy())
    watcher.join()
    assert result.returncode == 0, result.stderr[-5000:]
    assert killed, "no worker was killed"

    state = store.read_json("student/student/train_state.json")
    assert len(state["attempts"]) == 2, state["attempts"]
    resumed_at = state["attempts"][1]["start_step"]
    # Resumed from a checkpoint (every 5 steps), not from step 0; Ray may not have
    # registered the newest one before the kill, so it can be one checkpoint behind.
    assert resumed_at >= 5 and resumed_at % 5 == 0
    assert killed["step"] - 5 <= resumed_at <= killed["step"]
    # The surviving lineage has every step exactly once, in order, and consecutive batches.
    steps = [int(s[0]) for s in state["step_log"]]
    assert steps == list(range(1, state["steps"] + 1))
    batches = [(int(s[1]), int(s[2])) for s in state["step_log"]]
    for (epoch_a, pos_a), (epoch_b, pos_b) in itertools.pairwise(batches):
        assert (epoch_b, pos_b) in {(epoch_a, pos_a + 1), (epoch_a + 1, 1)}
    # Rank 0's curves were uploaded to S3; the resumed attempt's file purges what the killed
    # one logged after its checkpoint: one train/loss per step, the surviving lineage's.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # (the teacher members' curves are there too, one folder each)
    (run_dir,) = [name for name in (p.rsplit("/", 1)[-1] for p in store.list("tensorboard"))
                  if name.startswith("student-")]
    store.download_dir(f"tensorboard/{run_dir}", tmp_path / "tb")
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2  # two attempts
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == steps
    assert [e.value for e in losses] == pytest.approx([s[3] for s in state["step_log"]],
                                                      rel=1e-6)

    summary = store.read_json("student/student/student.json")
    assert summary["distill"] is True and set(summary["metrics"]) == {"toy", "score"}
    # auto: bf16 mixed precision where this CPU has it natively, else fp32
    auto = resolve_precision("auto", probe_device("cpu")).precision
    assert summary["precision"]["precision"] == auto, summary["precision"]
    assert store.exists("student/student/final/mtdnn.json")
    manifest = store.read_json("manifests/student.json")
    assert manifest["runs"]["student"]["average"] == summary["average"]
    # The exported model loads and predicts without Ray or DeepSpeed.
    model, _ = load_model_from(store, "student/student/final", tmp_path / "final")
    spec = read_task_spec(store, "toy")
    outputs = predict_outputs(model, spec, read_prepared(store, "toy", "dev"))
    assert outputs.shape == (60, 2) and np.isfinite(outputs).all()


def test_zero0_and_zero2_fp32_losses_match_and_export_equals_training(
        experiment: dict, tmp_path: Path) -> None:
    losses, stores = {}, {}
    for stage in (0, 2):
        data = {**experiment, "name": f"z{stage}", "storage_path": str(tmp_path / "runs"),
                "student": {**experiment["student"], "distill": False, "checkpoint_every": 100,
                            "deepspeed": {"zero_stage": stage},
                            "training": {**experiment["student"]["training"], "epochs": 1,
                                         "max_steps": 8, "precision": "fp32",
                                         "eval_every": 0}}}
        config = config_from_dict(data)
        run_pipeline(config, only="prepare")
        run_pipeline(config, only="student")
        stores[stage] = experiment_store(config)
        log = stores[stage].read_json("student/baseline/train_state.json")["step_log"]
        losses[stage] = [s[3] for s in log]
    assert len(losses[0]) == 8
    np.testing.assert_allclose(losses[0], losses[2], rtol=1e-5, atol=1e-6)

    # fp32: the exported (consolidated) model predicts exactly what the trained model did.
    store = stores[2]
    recorded = store.read_json("student/baseline/in_training_dev_outputs.json")
    store.download_dir("student/baseline/final", tmp_path / "export")
    model, _ = load_mtdnn(tmp_path / "export")
    for task, saved in recorded.items():
        split = read_prepared(store, task, "dev")
        assert list(split["uid"]) == saved["uids"]
        ours = predict_outputs(model, read_task_spec(store, task), split)
        np.testing.assert_allclose(ours, np.asarray(saved["outputs"]), atol=1e-5)


def test_keep_best_exports_the_best_dev_evaluation(experiment: dict, tmp_path: Path) -> None:
    """student.keep: best (the default) exports the weights of the best evaluation in the
    run's history (its first maximum), whose dev average the exported model reproduces;
    only that step's weights file is left; the report states the selection."""
    data = {**experiment, "name": "best", "storage_path": str(tmp_path / "runs"),
            "student": {**experiment["student"], "distill": False, "checkpoint_every": 3,
                        "deepspeed": {"zero_stage": 0},
                        "training": {**experiment["student"]["training"], "epochs": 1,
                                     "max_steps": 12, "precision": "fp32", "eval_every": 1,
                                     "learning_rate": 0.02}},
            # the export is scored at report.precision: fp32 like the training, so the
            # scores agree on every CPU (auto is bf16 where the CPU has it natively)
            "report": {"precision": "fp32"}}
    config = config_from_dict(data)
    run_pipeline(config, only="prepare")
    run_pipeline(config, only="student")
    store = experiment_store(config)
    state = store.read_json("student/baseline/train_state.json")
    history = state["history"]
    scores = [h["score"] for h in history]
    best = history[scores.index(max(scores))]
    record = store.read_json("student/baseline/student.json")
    assert record["selected"] == {"keep": "best", "step": best["step"], "steps": 12}
    assert state["best_step"] == best["step"]
    assert store.list("student/baseline/best") == [f"step-{best['step']:08d}.safetensors"]
    assert record["average"] == pytest.approx(best["average"], abs=1e-3)
    print(f"best step {best['step']} of 12, scores {scores}")
    run_pipeline(config, only="report")
    report = store.read_text("report/report.md")
    assert "## Model selection" in report
    assert f"| baseline | best dev evaluation | {best['step']} of 12 |" in report
    assert "| baseline (no KD) | dev | 1 seed, no spread |" in report

    # The exported run's per-example dev outputs are stored, in its record and content,
    # and give the metrics the record holds.
    from mtkd.metrics import compute_task_metrics
    from mtkd.records import digest
    from mtkd.student.predictions import read_predictions

    payload = store.read_bytes("student/baseline/predictions/dev.parquet")
    assert record["predictions"]["dev"] == digest(payload)
    for task, stored in read_predictions(payload).items():
        split = read_prepared(store, task, "dev")
        assert sorted(stored["uids"]) == sorted(split["uid"])
        spec = read_task_spec(store, task)
        got = compute_task_metrics(spec, stored["outputs"], stored["labels"].astype(
            np.float64 if spec.kind.is_regression else np.int64))
        assert got == pytest.approx(record["metrics"][task], abs=1e-6)

    # --force trains the run again from step 0 (not "finished before", not a resume of the
    # old Ray Train run), to the same result: the training is deterministic.
    # (The old record is marked first: equal content could not tell a rewritten record.)
    store.write_json("student/baseline/student.json", {**record, "seconds": -1.0})
    run_pipeline(config, only="student", force=True)
    again = store.read_json("student/baseline/train_state.json")
    assert [a["start_step"] for a in again["attempts"]] == [0]
    assert [h["score"] for h in again["history"]] == pytest.approx(scores, abs=1e-4)
    assert store.read_json("student/baseline/student.json")["seconds"] > 0  # a new record
    assert store.read_json("student/baseline/student.json")["selected"] == record["selected"]
