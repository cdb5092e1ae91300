"""The one inference core: an MT-DNN over tokenized rows, in batches, under the precision rule.

Every place that runs a model for its outputs calls :func:`predict_rows`: dev evaluation
and the student's scoring (:func:`mtkd.training.evaluate.predict_outputs`), ``mtkd
predict`` and the Python API (:func:`mtkd.model.predict.predict_texts`), the soft stage's
Ray Data actors (:class:`mtkd.soft.predictor.MemberPredictor`) and the benchmarks. It
batches the rows (length-sorted when lengths are given: batches of similar lengths waste
little padding, FACTS "Speed ceiling": 148 → 260 ex/s on CPU), pads each batch with
:func:`mtkd.data.collate.collate`, runs the forward pass without gradients under the
autocast of a resolved precision (:func:`mtkd.precision.autocast`) and hands back one
float32 output per row, in the rows' order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mtkd.data.collate import collate
from mtkd.precision import autocast


def model_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The collated tensors the model's forward takes, moved to ``device``."""
    names = ("input_ids", "attention_mask", "token_type_ids", "candidate_mask")
    return {k: batch[k].to(device, non_blocking=True) for k in names if k in batch}


def predict_rows(model: torch.nn.Module, task: str, rows: Sequence[Mapping[str, Any]], *,
                 batch_size: int = 64, device: torch.device | str = "cpu",
                 precision: str = "fp32", pad_id: int = 0,
                 lengths: Sequence[int] | np.ndarray | None = None,
                 probabilities: bool = False, pad_to_multiple_of: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """``task``'s output for every row, in the rows' order.

    ``rows``: tokenized examples as :func:`~mtkd.data.collate.collate` takes them
    (``uid``, ``input_ids``, ``token_type_ids``: lists of ints; ranking: one list per
    candidate). ``lengths``: when given, the rows are batched in ascending
    (stable) order of these; None batches them in the given order. ``precision``: a
    *resolved* precision (fp32, bf16, fp16; see :mod:`mtkd.precision`). ``model`` must be
    on ``device``; it runs in eval mode and its train/eval mode is restored afterwards.
    ``probabilities``: softmax over the classes or the row's candidates (not for
    regression). ``pad_to_multiple_of`` goes to collate. ``on_batch(done)`` is called after
    every batch with the number of rows done.

    Returns one float32 array per row: classification [C] logits (or probabilities; SAN
    heads' logits are log-probabilities), regression a 0-d score, ranking [k] scores (or
    probabilities) of the row's own k candidates (batch padding removed).
    """
    device = torch.device(device)
    order = (np.argsort(np.asarray(lengths), kind="stable") if lengths is not None
             else np.arange(len(rows)))
    outputs: list[np.ndarray] = [np.empty(0, np.float32)] * len(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                batch = collate([rows[i] for i in index], pad_id,
                                pad_to_multiple_of=pad_to_multiple_of)
                with autocast(device, precision):
                    out = model(task, **model_inputs(batch, device))
                out = out.float()
                if probabilities:  # padded candidates (PAD_SCORE) get exactly 0
                    out = torch.softmax(out, dim=-1)
                values = out.cpu().numpy()
                ranking = "candidate_mask" in batch
                for value, i in zip(values, index, strict=True):
                    outputs[i] = value[: len(rows[i]["input_ids"])] if ranking else value
                if on_batch:
                    on_batch(min(start + batch_size, len(order)))
    finally:
        model.train(was_training)
    return outputs
