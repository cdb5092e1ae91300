"""A narrow, every-nth-layer student distilled with representation distillation, through
the real pipeline (Ray Tune members, Ray Data soft targets, Ray Train + DeepSpeed student):
the representation teacher is the best member, the exported model is the plain narrow
student (no projection) and predicts what the trained one did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import toy_experiment

from mtkd.config import config_from_dict
from mtkd.data.prepared import read_prepared, read_task_spec
from mtkd.model.io import load_mtdnn
from mtkd.pipeline import experiment_store, run_pipeline
from mtkd.training.evaluate import predict_outputs

pytestmark = pytest.mark.slow


def test_narrow_student_learns_from_the_best_members_hidden_states(tmp_path: Path) -> None:
    experiment = toy_experiment(tmp_path, "shapes")  # tiny BERT: 4 layers, hidden 64
    data = {**experiment, "student": {
        **experiment["student"], "num_workers": 1, "resources_per_worker": {"cpu": 1},
        "deepspeed": {"zero_stage": 0}, "checkpoint_every": 100,
        "num_layers": 2, "layer_selection": "every_nth", "hidden_size": 32,
        "kd": {"hidden_weight": 1.0},
        "training": {**experiment["student"]["training"], "epochs": 1, "max_steps": 8,
                     "precision": "fp32", "eval_every": 0}},
        "report": {"precision": "fp32"}}
    config = config_from_dict(data)
    for stage in ("prepare", "teachers", "soft", "student"):
        run_pipeline(config, only=stage)
    store = experiment_store(config)
    members = store.read_json("teachers/teachers.json")["members"]
    best = max(members, key=lambda m: (m["average"], [-ord(c) for c in m["name"]]))
    state = store.read_json("student/student/train_state.json")
    assert state["hidden_teacher"] == {"member": best["name"], "weight": 1.0,
                                       "layers": [[1, 2], [2, 4]]}
    losses = [s[3] for s in state["step_log"]]
    assert len(losses) == 8 and all(np.isfinite(losses))

    store.download_dir("student/student/final", tmp_path / "export")
    model, _ = load_mtdnn(tmp_path / "export")
    assert model.encoder.config.hidden_size == 32
    assert model.encoder.config.num_hidden_layers == 2
    recorded = store.read_json("student/student/in_training_dev_outputs.json")
    for task, saved in recorded.items():
        split = read_prepared(store, task, "dev")
        ours = predict_outputs(model, read_task_spec(store, task), split)
        np.testing.assert_allclose(ours, np.asarray(saved["outputs"]), atol=1e-5)

    # the representation teacher is part of the run's lineage: another weight retrains
    record = store.read_json("student/student/student.json")
    heavier = config_from_dict({**data, "student": {**data["student"],
                                                    "kd": {"hidden_weight": 2.0}}})
    from mtkd.data.prepared import encoder_tokenization, task_lineages
    from mtkd.student.stage import plan_runs, run_lineage

    lineages = task_lineages(store, encoder_tokenization(store, config.encoder.path))
    soft = store.read_json("manifests/soft.json")["lineages"]
    assert run_lineage(config, plan_runs(config)[0], lineages, soft,
                       best["lineage"]) == record["lineage"]
    assert run_lineage(heavier, plan_runs(heavier)[0], lineages, soft,
                       best["lineage"]) != record["lineage"]
