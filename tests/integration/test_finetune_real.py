"""Fine-tune the bundled MiniLM on a few hundred real examples of two tasks, through the
training path of a single-process teacher member (build_training_loop, run_training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtkd.config import TrainingConfig, config_from_dict
from mtkd.metrics import majority_baseline, task_score
from mtkd.model.io import load_mtdnn, save_mtdnn
from mtkd.pipeline import experiment_store, run_pipeline
from mtkd.training.evaluate import predict_outputs
from mtkd.training.recipe import build_training_loop, load_prepared_tasks, run_training


def test_mtdnn_beats_majority_on_two_real_tasks(tmp_path: Path) -> None:
    config = config_from_dict({
        "name": "finetune", "storage_path": str(tmp_path / "runs"),
        "tasks": [
            {"name": "rotten_tomatoes", "max_length": 64, "max_train_examples": 256,
             "max_dev_examples": 120},
            {"name": "trec", "max_length": 32, "max_train_examples": 256,
             "max_dev_examples": 120},
        ],
    })
    run_pipeline(config, to_stage="prepare")
    store = experiment_store(config)
    data = load_prepared_tasks(store, ["rotten_tomatoes", "trec"])
    training = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-4, warmup_ratio=0.1,
                              precision="auto", dropout=0.1)
    loop = build_training_loop(config, data, encoder=config.encoder.path, num_layers=None,
                               training=training, seed=0, name="finetune", log_every=20)
    result = run_training(loop, config.encoder.path, seed=0)

    final = result.loop.evaluate()["tasks"]
    for task, spec in data.specs.items():
        majority = majority_baseline(spec, np.asarray(data.train[task]["label"]),
                                     np.asarray(data.dev[task]["label"]))
        assert task_score(final[task]) > task_score(majority) + 5.0, (task, final, majority)

    # The saved model predicts exactly what the in-memory model predicts.
    saved = save_mtdnn(result.model, result.tokenizer, tmp_path / "model")
    loaded, _ = load_mtdnn(saved)
    for task, spec in data.specs.items():
        before = predict_outputs(result.model, spec, data.dev[task])
        after = predict_outputs(loaded, spec, data.dev[task])
        np.testing.assert_allclose(before, after, atol=1e-5)
