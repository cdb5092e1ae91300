"""Task transfer through the real pipeline (issue 18 item 4): a student distilled with
representation distillation on the toy tasks plus unlabelled transfer text (Ray Tune
members, Ray Data soft targets, Ray Train + DeepSpeed student), its encoder exported
alone, then fine-tuned as ``encoder.path`` of a second experiment on a held-out task."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import WORDS, toy_experiment, write_task

from mtkd.config import config_from_dict
from mtkd.data.transfer import TRANSFER_DIR, recorded_transfer
from mtkd.pipeline import experiment_store, run_pipeline

pytestmark = pytest.mark.slow


def test_distil_with_transfer_text_export_the_encoder_and_fine_tune(tmp_path: Path) -> None:
    from transformers import AutoModel

    from mtkd.data.prepared import encoder_tokenization, task_lineages
    from mtkd.export_encoder import export_encoder
    from mtkd.model.io import load_mtdnn
    from mtkd.student.stage import plan_runs, run_lineage

    rng = np.random.default_rng(5)
    texts = tmp_path / "transfer.txt"
    texts.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))
                               for _ in range(50)) + "\n")
    experiment = toy_experiment(tmp_path, "transfer")
    batch_size = 8
    data = {**experiment, "student": {
        **experiment["student"], "num_workers": 1, "resources_per_worker": {"cpu": 1},
        "deepspeed": {"zero_stage": 0}, "checkpoint_every": 100,
        "kd": {"hidden_weight": 1.0, "transfer_text": {"files": [str(texts)],
                                                       "max_length": 16}},
        "training": {**experiment["student"]["training"], "epochs": 1, "precision": "fp32",
                     "eval_every": 0, "batch_size": batch_size}},
        "report": {"precision": "fp32"}}
    config = config_from_dict(data)
    for stage in ("prepare", "teachers", "soft", "student"):
        run_pipeline(config, only=stage)
    store = experiment_store(config)
    transfer_meta = store.read_json(f"{TRANSFER_DIR}/meta.json")
    rows = transfer_meta["splits"]["train"]["rows"]
    assert rows == len(set(texts.read_text().split("\n")) - {""})
    # every task's batches and the transfer text's, one epoch (proportional sampling)
    sizes = [store.read_json(f"data/{t}/meta.json")["splits"]["train"]["rows"]
             for t in ("toy", "score")] + [rows]
    state = store.read_json("student/student/train_state.json")
    assert len(state["step_log"]) == sum(math.ceil(n / batch_size) for n in sizes)
    assert all(np.isfinite([s[3] for s in state["step_log"]]))
    record = store.read_json("student/student/student.json")
    best = state["hidden_teacher"]["member"]
    member = next(m for m in store.read_json("teachers/teachers.json")["members"]
                  if m["name"] == best)
    lineages = task_lineages(store, encoder_tokenization(store, config.encoder.path))
    soft = store.read_json("manifests/soft.json")["lineages"]
    transfer = recorded_transfer(store)
    assert transfer == transfer_meta["lineage"]
    run = plan_runs(config)[0]
    assert run_lineage(config, run, lineages, soft, member["lineage"], transfer) == \
        record["lineage"]

    # the encoder alone, as a plain transformers encoder
    store.download_dir("student/student/final", tmp_path / "final")
    exported = export_encoder(tmp_path / "final", tmp_path / "exported-encoder")
    student, tokenizer = load_mtdnn(tmp_path / "final")
    plain = AutoModel.from_pretrained(str(exported.path), add_pooling_layer=False).eval()
    batch = tokenizer(["the film was very good", "who"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**batch).last_hidden_state,
                              student.encoder.eval()(**batch).last_hidden_state, atol=1e-5)

    # fine-tuned on a held-out target task, hard labels only, from the exported encoder
    target = {"name": "target", "source": "files", "type": "classification",
              "labels": ["neg", "pos"], "max_length": 32,
              "files": {"train": str(write_task(tmp_path / "t_train.csv", 96, 7)),
                        "dev": str(write_task(tmp_path / "t_dev.csv", 32, 8))}}
    tuned = config_from_dict({
        "name": "target", "storage_path": str(tmp_path / "runs"), "ray": {"num_cpus": 2},
        "encoder": {"path": str(exported.path)}, "tasks": [target],
        "student": {"num_layers": None, "distill": False, "num_workers": 1,
                    "resources_per_worker": {"cpu": 1}, "deepspeed": {"zero_stage": 0},
                    "training": {"epochs": 1, "batch_size": 16, "precision": "fp32"}},
        "report": {"precision": "fp32", "plot": False}})
    run_pipeline(tuned, to_stage="student")  # prepare, student (no teachers: no KD)
    baseline = experiment_store(tuned).read_json("student/baseline/student.json")
    assert baseline["encoder"] == str(exported.path) and baseline["average"] is not None
