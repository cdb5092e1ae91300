"""Predict and evaluate on tokenized splits, in length-sorted batches (little padding)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np
import torch

from mtkd.data.columns import random_access_columns
from mtkd.metrics import average_score, compute_task_metrics, labelled
from mtkd.model.infer import predict_rows
from mtkd.progress import EVERY_SECONDS, Progress
from mtkd.tasks.spec import TaskSpec


def predict_outputs(model: torch.nn.Module, spec: TaskSpec, split: datasets.Dataset, *,
                    batch_size: int = 64, device: torch.device | str = "cpu",
                    precision: str = "fp32", pad_id: int = 0,
                    progress: str | None = None) -> np.ndarray:
    """Model outputs for every row of a tokenized split, in the split's row order, from
    :func:`mtkd.model.infer.predict_rows` over length-sorted batches.

    ``precision`` is a resolved one (fp32, bf16, fp16; see :mod:`mtkd.precision`).
    ``progress`` names the work in progress lines, logged when it runs longer than 30 s.
    Returns float32 [N, C] logits (classification), [N] scores (regression) or [N, K]
    candidate scores (ranking, K the most candidates of any row, absent ones
    :data:`mtkd.padding.PAD_SCORE`).
    """
    columns = random_access_columns(split, ("uid", "input_ids", "token_type_ids", "length"))
    rows = [{"uid": u, "input_ids": i, "token_type_ids": t} for u, i, t in
            zip(columns["uid"], columns["input_ids"], columns["token_type_ids"], strict=True)]
    watch = Progress(f"{progress} {spec.name}", len(rows), "ex",
                     first_after=EVERY_SECONDS) if progress else None
    outputs = predict_rows(model, spec.name, rows, batch_size=batch_size, device=device,
                           precision=precision, pad_id=pad_id, lengths=columns["length"],
                           on_batch=watch.update if watch else None)
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return spec.kind.layout.stack(outputs)


def evaluate(model: torch.nn.Module, specs: Mapping[str, TaskSpec],
             splits: Mapping[str, datasets.Dataset], *, keep_outputs: bool = False,
             **kwargs: Any) -> dict[str, Any]:
    """Metrics per task plus their average: {"tasks": {task: {metric: value}},
    "average": float | None}. Rows without a label are left out; a task without any
    labelled row is left out (test splits may be unlabelled); the average is None when no
    task is left. ``keep_outputs``: add "outputs": {task: (uids, labels, outputs)} of every
    scored task, all rows in the split's order. ``kwargs`` go to :func:`predict_outputs`."""
    per_task, kept = {}, {}
    for task, split in splits.items():
        labels = np.asarray(split["label"])
        if not labelled(specs[task], labels).any():
            continue
        outputs = predict_outputs(model, specs[task], split, **kwargs)
        per_task[task] = compute_task_metrics(specs[task], outputs, labels)
        if keep_outputs:
            kept[task] = (list(split["uid"]), labels, outputs)
    result = {"tasks": per_task, "average": average_score(per_task) if per_task else None}
    if keep_outputs:
        result["outputs"] = kept
    return result
