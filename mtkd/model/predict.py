"""Run an MT-DNN on raw texts: tokenize, batch by length, predict, restore input order.

Tokenization matches :mod:`mtkd.data.tokenize` (per-task ``max_length``, pairs truncated
``longest_first``) and batches are padded by :func:`mtkd.data.collate.collate`, so
predictions equal those of the training/evaluation pipeline. Sorting by length before
batching is what makes CPU inference fast (see FACTS "Speed ceiling": 148 → 260 ex/s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mtkd.data.collate import collate
from mtkd.errors import MtkdError
from mtkd.model.mtdnn import MTDNN


def _encode(tokenizer: PreTrainedTokenizerBase, first: list[str], second: list[str] | None,
            max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    enc = tokenizer(first, second, truncation="longest_first" if second is not None else True,
                    max_length=max_length, return_attention_mask=False)
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    return enc["input_ids"], types


def _rows(model: MTDNN, tokenizer: PreTrainedTokenizerBase, task: str, texts: Sequence[str],
          text_pairs: Sequence[Any] | None, max_length: int) -> list[dict[str, Any]]:
    kind = model.specs[task].kind
    problem = kind.layout.input_problem(task, texts, text_pairs, kind.pair)
    if problem:
        raise MtkdError(problem)
    columns = kind.layout.encode(partial(_encode, tokenizer, max_length=max_length), texts,
                                 text_pairs)
    return [{"input_ids": i, "token_type_ids": t}
            for i, t in zip(columns["input_ids"], columns["token_type_ids"], strict=True)]


def _length(row: dict[str, Any]) -> int:
    ids = row["input_ids"]
    return max(len(c) for c in ids) * len(ids) if ids and isinstance(ids[0], list) else len(ids)


def predict_texts(model: MTDNN, tokenizer: PreTrainedTokenizerBase, task: str,
                  texts: Sequence[str], text_pairs: Sequence[Any] | None = None, *,
                  batch_size: int = 32, device: str | torch.device = "cpu",
                  max_length: int | None = None, probs: bool = False,
                  autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """``task``'s outputs for N examples, in input order, as float32:

    * classification: logits [N, C] (``probs``: softmax probabilities);
    * regression: scores [N];
    * ranking (``texts`` = queries, ``text_pairs`` = a list of candidate texts per query):
      scores [N, K] with K the most candidates of any query, missing candidates -inf
      (``probs``: softmax over each query's candidates, missing ones 0).

    ``model`` is moved to ``device`` and run in eval mode (its train/eval mode is restored
    afterwards). ``autocast_dtype`` (e.g. torch.bfloat16) runs the encoder under autocast.
    """
    if task not in model.specs:
        raise MtkdError(f"the model has no task {task!r} (it has: {', '.join(model.specs)})")
    spec = model.specs[task]
    rows = _rows(model, tokenizer, task, texts, text_pairs, max_length or spec.max_length)
    for i, row in enumerate(rows):
        row["uid"] = i
    order = sorted(range(len(rows)), key=lambda i: _length(rows[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    outputs: list[np.ndarray] = [np.empty(0)] * len(rows)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())
    try:
        with torch.inference_mode(), autocast:
            for start in range(0, len(order), batch_size):
                batch = collate([rows[i] for i in order[start:start + batch_size]], pad_id)
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                         for k, v in batch.items()}
                out = model.forward_batch(task, batch).float()
                if "candidate_mask" in batch:
                    out = out.masked_fill(~batch["candidate_mask"], float("-inf"))
                if probs and not spec.kind.is_regression:
                    out = torch.softmax(out, dim=-1)
                for uid, value in zip(batch["uids"], out.cpu().numpy(), strict=True):
                    outputs[int(uid)] = value
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros((0, *spec.kind.output_shape(len(spec.labels))), dtype=np.float32)
    fill = 0.0 if probs else -np.inf  # missing candidates of a query
    return spec.kind.layout.concat([o[None] for o in outputs], fill).astype(np.float32)
