"""Run an MT-DNN on raw texts: tokenize, batch by length, predict, restore input order.

Tokenization matches :mod:`mtkd.data.tokenize` (per-task ``max_length``, pairs truncated
``longest_first``) and the batches go through :func:`mtkd.model.infer.predict_rows`, the
inference core of the training/evaluation pipeline, so predictions equal its own. Sorting by
length before batching is what makes CPU inference fast (FACTS "Speed ceiling": 148 → 260
ex/s).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mtkd.errors import MtkdError
from mtkd.model.infer import predict_rows
from mtkd.model.mtdnn import MTDNN
from mtkd.padding import PAD_SCORE


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
                  precision: str = "fp32") -> np.ndarray:
    """``task``'s outputs for N examples, in input order, as float32:

    * classification: logits [N, C] (``probs``: softmax probabilities);
    * regression: scores [N];
    * ranking (``texts`` = queries, ``text_pairs`` = a list of candidate texts per query):
      scores [N, K] with K the most candidates of any query, missing candidates
      :data:`mtkd.padding.PAD_SCORE` (``probs``: softmax over each query's candidates,
      missing ones 0).

    ``model`` is moved to ``device`` and run by :func:`mtkd.model.infer.predict_rows` in
    eval mode (its train/eval mode is restored afterwards) under the autocast of
    ``precision``, a resolved one (fp32, bf16, fp16; see :mod:`mtkd.precision`).
    """
    if task not in model.specs:
        raise MtkdError(f"the model has no task {task!r} (it has: {', '.join(model.specs)})")
    spec = model.specs[task]
    rows = _rows(model, tokenizer, task, texts, text_pairs, max_length or spec.max_length)
    for i, row in enumerate(rows):
        row["uid"] = i
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.to(device)
    outputs = predict_rows(model, task, rows, batch_size=batch_size, device=device,
                           precision=precision, pad_id=pad_id,
                           lengths=[_length(r) for r in rows],
                           probabilities=probs and not spec.kind.is_regression)
    if not outputs:
        return np.zeros((0, *spec.kind.output_shape(len(spec.labels))), dtype=np.float32)
    return spec.kind.layout.stack(outputs, fill=0.0 if probs else PAD_SCORE)
