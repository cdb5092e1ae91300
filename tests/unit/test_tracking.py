"""Training curves: the loop's scalars reach TensorBoard event files (read back with
TensorBoard's own reader), a resume neither repeats nor forks them, s3:// storage gets
them uploaded, and MLflow gets the same values."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training_loop import make_loop

from mtkd.config import TrackingConfig, TrainingConfig
from mtkd.storage import Storage
from mtkd.tracking import TENSORBOARD_DIR, Tracker
from mtkd.training.loop import (
    LoopHooks,
    LoopState,
    TrainingLoop,
    capture_rng,
    chain_hooks,
)

CONFIG = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-3, dropout=0.1,
                        eval_every=4)
RUN = "m000-0123456789"


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def tracked_run(encoder_dir: Path, store: Storage, config: TrackingConfig,
                checkpoint: Callable[[TrainingLoop], LoopHooks] | None = None,
                resume: dict | None = None) -> tuple[LoopState, TrainingLoop]:
    """One run with tracking; ``checkpoint(loop)``: the checkpointing hooks, chained first
    as the member and the student do; ``resume``: a checkpoint to continue from."""
    start = resume["state"]["step"] if resume else 0
    tracker = Tracker.open(config, store, RUN, experiment="exp", start_step=start,
                           params={"training": {"learning_rate": 1e-3, "batch_size": 16}})
    assert tracker is not None
    loop = make_loop(encoder_dir, CONFIG, record_steps=True, log_every=3)
    loop.hooks = chain_hooks(checkpoint(loop) if checkpoint else LoopHooks(),
                             tracker.hooks())
    try:
        if resume:
            loop.backend.load_state_dict(resume["backend"])
            state = loop.run(LoopState.from_json(resume["state"]), rng=resume["rng"])
        else:
            state = loop.run(seed=1)
    finally:
        tracker.close()
    return state, loop


def test_tensorboard_scalars_are_the_loops_values(tiny_encoder_dir: Path,
                                                  tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path))
    state, loop = tracked_run(tiny_encoder_dir, store, TrackingConfig(tensorboard=True))
    scalars = read_scalars(tmp_path / TENSORBOARD_DIR / RUN)
    assert {"train/loss", "train/lr", "train/examples_per_s", "train/tokens_per_s",
            "dev/score", "dev/average", "dev/cls/accuracy", "dev/reg/pearson"} <= set(scalars)
    # One loss per optimizer step, equal (float32) to the loop's step log.
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, state.step + 1))
    for (step, value), logged in zip(scalars["train/loss"], state.step_log, strict=True):
        assert step == logged[0] and value == pytest.approx(logged[3], rel=1e-6)
    # The learning rate warms up then decays; evaluations at their steps with their scores.
    assert scalars["train/lr"][-1][1] < max(v for _, v in scalars["train/lr"])
    assert [s for s, _ in scalars["dev/score"]] == [h["step"] for h in state.history]
    assert [v for _, v in scalars["dev/score"]] == pytest.approx(
        [h["score"] for h in state.history])
    assert all(v > 0 for _, v in scalars["train/examples_per_s"])
    assert loop.total_steps == state.step


def test_a_resumed_run_neither_repeats_nor_forks_the_curves(tiny_encoder_dir: Path,
                                                            tmp_path: Path) -> None:
    """Attempt 1 checkpoints at step 4 and runs on (to the end: it 'crashed' after its
    last step); attempt 2 resumes from step 4. TensorBoard shows each step once, with
    attempt 2's values after the checkpoint."""
    store = Storage.from_uri(str(tmp_path))
    saved: dict = {}

    def checkpointing(loop: TrainingLoop) -> LoopHooks:
        def checkpoint(state: LoopState) -> None:
            if state.step == 4:
                saved.update(state=copy.deepcopy(state.to_json()), rng=capture_rng(),
                             backend=copy.deepcopy(loop.backend.state_dict()))
        return LoopHooks(on_checkpoint=checkpoint, checkpoint_every=4)

    first_state, _ = tracked_run(tiny_encoder_dir, store, TrackingConfig(), checkpointing)
    time.sleep(1.1)  # event file names order by their creation second
    state, _ = tracked_run(tiny_encoder_dir, store, TrackingConfig(), resume=saved)
    assert saved["state"]["step"] == 4 and first_state.step == state.step > 4
    folder = tmp_path / TENSORBOARD_DIR / RUN
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one file per attempt
    scalars = read_scalars(folder)
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, state.step + 1))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(
        [row[3] for row in state.step_log], rel=1e-6)
    assert [s for s, _ in scalars["dev/score"]] == [h["step"] for h in state.history]


@pytest.mark.s3
def test_event_files_are_uploaded_to_s3(tiny_encoder_dir: Path, s3_env: str,
                                        tmp_path: Path) -> None:
    store = Storage.from_uri(s3_env).child("exp")
    state, _ = tracked_run(tiny_encoder_dir, store, TrackingConfig())
    files = store.list(f"{TENSORBOARD_DIR}/{RUN}")
    assert len(files) == 1 and "tfevents" in files[0]
    store.download_dir(f"{TENSORBOARD_DIR}/{RUN}", tmp_path / "copy")
    scalars = read_scalars(tmp_path / "copy")
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, state.step + 1))


def test_no_tracking_no_tracker(tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path))
    assert Tracker.open(TrackingConfig(tensorboard=False), store, RUN, experiment="e") is None
    assert not (tmp_path / "storage" / TENSORBOARD_DIR).exists()


def test_mlflow_gets_the_same_metrics_and_params(tiny_encoder_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")  # mlflow-skinny is in the dev extras
    from mlflow.tracking import MlflowClient

    # MLflow's file store (no server here; MLflow 3 asks for an explicit opt-in to it)
    uri = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = Storage.from_uri(str(tmp_path / "storage"))
    state, _ = tracked_run(tiny_encoder_dir, store,
                           TrackingConfig(tensorboard=False, mlflow=True))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("exp")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == RUN and run.info.status == "FINISHED"
    assert run.data.params["training.learning_rate"] == "0.001"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(1, state.step + 1))
    assert [m.value for m in losses] == pytest.approx([r[3] for r in state.step_log])
    scores = client.get_metric_history(run.info.run_id, "dev/score")
    assert [m.value for m in scores] == pytest.approx([h["score"] for h in state.history])
    assert not (tmp_path / "storage" / TENSORBOARD_DIR).exists()
