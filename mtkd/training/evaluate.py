"""Predict and evaluate on tokenized splits, in length-sorted batches (little padding)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np
import torch

from mtkd.data.collate import collate
from mtkd.data.columns import random_access_columns
from mtkd.metrics import average_score, compute_task_metrics, labelled
from mtkd.precision import autocast
from mtkd.progress import EVERY_SECONDS, Progress
from mtkd.tasks.spec import TaskSpec


def model_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The collated tensors the model's forward takes, moved to ``device``."""
    names = ("input_ids", "attention_mask", "token_type_ids", "candidate_mask")
    return {k: batch[k].to(device, non_blocking=True) for k in names if k in batch}


CANDIDATE_FILL = float(np.finfo(np.float32).min / 2)
"""The score of a missing candidate when ranking outputs of different widths K are merged
into one [N, K_max] array (very negative, finite)."""


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, spec: TaskSpec, split: datasets.Dataset, *,
                    batch_size: int = 64, device: torch.device | str = "cpu",
                    precision: str = "fp32", pad_id: int = 0,
                    progress: str | None = None) -> np.ndarray:
    """Model outputs for every row of a tokenized split, in the split's row order.

    ``precision`` is a resolved one (fp32, bf16, fp16; see :mod:`mtkd.precision`).
    ``progress`` names the work in progress lines, logged when it runs longer than 30 s.
    Returns float32 [N, C] logits (classification), [N] scores (regression) or [N, K]
    candidate scores (ranking).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    columns = random_access_columns(split, ("uid", "input_ids", "token_type_ids", "length"))
    uids, ids, types = columns["uid"], columns["input_ids"], columns["token_type_ids"]
    order = np.argsort(np.asarray(columns["length"]), kind="stable")
    chunks: list[np.ndarray] = []
    watch = Progress(f"{progress} {spec.name}", len(order), "ex",
                     first_after=EVERY_SECONDS) if progress else None
    try:
        for start in range(0, len(order), batch_size):
            rows = [{"uid": uids[i], "input_ids": ids[i], "token_type_ids": types[i]}
                    for i in order[start:start + batch_size]]
            batch = collate(rows, pad_id)
            with autocast(device, precision):
                out = model(spec.name, **model_inputs(batch, device))
            chunks.append(out.float().cpu().numpy())
            if watch:
                watch.update(min(start + batch_size, len(order)))
    finally:
        model.train(was_training)
    if not chunks:
        return np.zeros((0,), dtype=np.float32)
    merged = spec.kind.layout.concat(chunks, CANDIDATE_FILL)
    result = np.empty_like(merged)
    result[order] = merged
    return result


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
