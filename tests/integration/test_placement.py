"""The model work after training (the student's export and scoring, the report's speed
measurement) runs as one Ray task with a student worker's resources, placed by Ray; on a
local Ray it gives what the same work gives in this process.

A small local Ray of this process declares 2 CPUs and 1 GPU (Ray lets a node declare GPUs
it lacks: a task asking for one is scheduled, gets CUDA_VISIBLE_DEVICES, and torch finds
no CUDA, so the work falls back to the CPU as on a laptop)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tiny import toy_experiment

from mtkd.config import config_from_dict
from mtkd.experiment import member_dir, student_dir
from mtkd.model.remote import save_model_to
from mtkd.pipeline import experiment_store, run_pipeline
from mtkd.raycluster import Placement
from mtkd.report.collect import measure_models
from mtkd.resources import ray_resources
from mtkd.student.stage import StudentRun, export_run
from mtkd.student.worker import best_weights_file, save_safetensors
from mtkd.training.recipe import build_model, load_prepared_tasks

GIB = 2**30


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """This process's own local Ray (2 CPUs, 1 declared GPU), shut down afterwards."""
    import ray

    if ray.is_initialized():  # another module's Ray in this process: ours needs a GPU
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
             logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def test_the_task_gets_the_student_workers_resources(local_ray: None,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    config = config_from_dict({
        "name": "p", "tasks": [{"name": "rotten_tomatoes"}],
        "student": {"use_gpu": True, "resources_per_worker": {"cpu": 0.5, "memory_gb": 0.25}}})
    def cuda_visible(*, device: str) -> tuple[str | None, str]:
        """What the work sees where it runs: CUDA_VISIBLE_DEVICES, the device it got.
        (Nested, so that cloudpickle ships it by value: the test module is not importable
        on Ray's workers.)"""
        import os

        return os.environ.get("CUDA_VISIBLE_DEVICES"), device

    placement = Placement.student(config, "report")
    expected = {"CPU": 0.5, "GPU": 1.0, "memory": float(int(0.25 * GIB))}
    assert placement.request == expected == ray_resources(
        config.student.worker_resources)
    with caplog.at_level(logging.INFO, logger="mtkd"):
        (visible, device), where = placement.run("probe", cuda_visible)
    # Ray scheduled it with exactly the student worker's request, GPU included ...
    assert where["resources"] == expected
    assert visible == "0"  # ... and handed it the (declared) GPU
    assert device == "cpu"  # no CUDA behind it: the device rule falls back to the CPU
    assert where["node_id"] and where["device"].startswith("cpu ")
    line = next(r.getMessage() for r in caplog.records if "probe ran on node" in r.getMessage())
    assert where["node"] in line and where["device"] in line and "'GPU': 1.0" in line

    # The same work in this process: no Ray resources, no GPU handed over.
    (visible_here, device_here), here = Placement().run("probe", cuda_visible)
    assert here["resources"] == {} and device_here == "cpu"
    assert visible_here == os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A prepared two-task toy experiment with a saved student (its best-step weights, as
    student.keep: best exports them, and a final model) and one saved member model."""
    root = tmp_path_factory.mktemp("placement")
    data = toy_experiment(root, "place")
    data["student"] = {**data["student"], "num_workers": 1, "keep": "best"}
    data["report"] = {"precision": "fp32"}
    config = config_from_dict(data)
    run_pipeline(config, only="prepare")
    store = experiment_store(config)
    prepared = load_prepared_tasks(store, [t.name for t in config.tasks])
    specs = list(prepared.specs.values())
    student = build_model(config, specs, encoder=config.encoder.path, num_layers=2,
                          dropout=0.0, seed=3)
    store.write_atomic(f"{student_dir('student')}/{best_weights_file(4)}",
                       save_safetensors(student.state_dict()))
    store.write_json(f"{student_dir('student')}/train_state.json",
                     {"best_step": 4, "steps": 6, "best_score": 50.0})
    member = build_model(config, specs, encoder=config.encoder.path, num_layers=None,
                         dropout=0.0, seed=4)
    from mtkd.data.tokenize import load_tokenizer

    tokenizer = load_tokenizer(config.encoder.path)
    save_model_to(store.child(member_dir("m0")), "model", member, tokenizer)
    return {"config": config, "store": store}


def test_export_and_scoring_on_ray_equal_this_process(local_ray: None, toy: dict) -> None:
    config, store = toy["config"], toy["store"]
    run = StudentRun("student", 3, True)
    here = export_run(config, store, run, None)  # keep: best reads the best step's file
    placed, where = Placement.student(config, "student").run(
        "export and scoring", export_run, config, store, run, None)
    assert where["resources"] == {"CPU": 1.0}  # student.resources_per_worker of the toy
    assert placed["params"] == here["params"] and placed["selected"] == here["selected"]
    assert placed["scored_in"]["precision"] == here["scored_in"]["precision"] == "fp32"
    for key in ("metrics", "test_metrics"):
        assert placed[key].keys() == here[key].keys()
        for task, metrics in here[key].items():
            assert placed[key][task] == pytest.approx(metrics, abs=1e-6), (key, task)
    assert placed["average"] == pytest.approx(here["average"], abs=1e-6)
    assert set(here["metrics"]) == {"toy", "score"}


def test_speed_measurement_on_ray_times_the_same_work(local_ray: None, toy: dict) -> None:
    store = toy["store"]
    student = (f"{student_dir('student')}/final", None)
    members = {f"{member_dir('m0')}/model": None}
    here = measure_models(store, student, members, 16, "fp32")
    placed, where = Placement.student(toy["config"], "report").run(
        "speed measurement", measure_models, store, student, members, 16, "fp32")
    assert where["resources"] == {"CPU": 1.0}
    assert placed["resolved"] == here["resolved"]
    for model in ("student", "ensemble"):
        # the same models, parameters and examples per task (16 of each dev split) ...
        assert placed[model]["params"] == here[model]["params"]
        assert placed[model]["examples"] == here[model]["examples"] == {"toy": 16, "score": 16}
        # ... timed: rates are measurements, positive and finite on both sides
        assert np.isfinite([placed[model]["together"], here[model]["together"]]).all()
        assert min(placed[model]["together"], here[model]["together"]) > 0
    # the member is 4 layers, the student 2: the member has more parameters
    assert sum(placed["ensemble"]["params"].values()) > sum(placed["student"]["params"].values())


def test_report_stage_records_where_the_speed_was_measured(local_ray: None, toy: dict,
                                                           tmp_path: Path) -> None:
    from mtkd.config import ReportConfig
    from mtkd.records import StudentRecord
    from mtkd.report.stage import write_report

    config, store = toy["config"], toy["store"]
    # a finished student run as the student stage records it (from the export above)
    exported = export_run(config, store, StudentRun("student", 3, False), None)
    record = StudentRecord(lineage="l", name="student", seed=3, distill=False, seconds=1.0,
                           **exported)
    store.write_json("manifests/student.json", {"seconds": 1.0,
                                                "runs": {"student": record.to_json()}})
    report = write_report(store, ReportConfig(plot=False, speed_examples=8, precision="fp32",
                                              bootstrap_samples=0),
                          placement=Placement.student(config, "report"))
    where = report["speed_where"]
    assert where["resources"] == {"CPU": 1.0}
    (row,) = [h for h in report["hardware"] if h["stage"] == "report"]
    assert row["node"] == where["node"] and row["precision"] == "fp32"
    assert report["baseline"]["examples_per_s"] > 0
    assert f"node {where['node']}" in store.read_text("report/report.md")
