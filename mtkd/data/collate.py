"""Collate tokenized rows of one task into padded tensors (dynamic padding).

A row is one example of a tokenized split: ``uid`` (str), ``input_ids``,
``token_type_ids`` (lists of ints; for ranking a list of such lists, one per candidate),
``label`` (int, float for regression, candidate index for ranking; optional). Sequences
are padded only to the longest one in the batch, so batches of similar lengths (see
:mod:`mtkd.data.sampler`) waste little. Soft targets never pass through here: the training
loop takes them by row index from the task's teacher arrays (:mod:`mtkd.training.data`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _is_ranking(input_ids: Any) -> bool:
    return len(input_ids) > 0 and np.ndim(input_ids[0]) > 0


def _fill(seqs: Sequence[Any], out: np.ndarray, mask: np.ndarray | None) -> None:
    for j, seq in enumerate(seqs):
        seq = np.asarray(seq, dtype=np.int64)
        out[j, : len(seq)] = seq
        if mask is not None:
            mask[j, : len(seq)] = 1


def collate(
    rows: Sequence[Mapping[str, Any]],
    pad_id: int = 0,
    *,
    regression: bool = False,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """Pad ``rows`` (all from one task) to the longest sequence in the batch.

    Returns, with B = len(rows), T = the longest sequence (rounded up to a multiple of
    ``pad_to_multiple_of`` if given; 8 suits GPU tensor cores):

    * ``input_ids``: [B, T] int64, padded with ``pad_id``;
    * ``token_type_ids``: [B, T] int64, padded with 0 (all 0 when rows lack them);
    * ``attention_mask``: [B, T] int64, 1 on real tokens, 0 on padding;
    * ``labels``: [B] int64, or float32 when ``regression`` (only when every row has a
      non-null ``label``);
    * ``uids``: list[str] of length B.

    Ranking rows (``input_ids`` a list of candidate sequences) give, with K = the most
    candidates of any row: ``input_ids``, ``token_type_ids``, ``attention_mask`` of shape
    [B, K, T]; ``candidate_mask`` [B, K] bool, False for padding candidates (whose
    attention mask is all 0: the model must mask their scores out); ``labels`` [B] int64
    (index of the right candidate).
    """
    if not rows:
        raise ValueError("cannot collate an empty batch")
    first = rows[0]["input_ids"]
    ranking = _is_ranking(first)
    if any(_is_ranking(r["input_ids"]) != ranking for r in rows):
        raise ValueError("batch mixes ranking rows (lists of candidates) with plain rows")
    b = len(rows)
    out: dict[str, Any] = {}
    if ranking:
        k = max(len(r["input_ids"]) for r in rows)
        t = max((len(c) for r in rows for c in r["input_ids"]), default=0)
        shape: tuple[int, ...] = (b, k, _round_up(t, pad_to_multiple_of))
    else:
        t = max(len(r["input_ids"]) for r in rows)
        shape = (b, _round_up(t, pad_to_multiple_of))
    ids = np.full(shape, pad_id, dtype=np.int64)
    types = np.zeros(shape, dtype=np.int64)
    mask = np.zeros(shape, dtype=np.int64)
    for i, row in enumerate(rows):
        tt = row.get("token_type_ids")
        if ranking:
            _fill(row["input_ids"], ids[i], mask[i])
            if tt is not None:
                _fill(tt, types[i], None)
        else:
            _fill([row["input_ids"]], ids[i : i + 1], mask[i : i + 1])
            if tt is not None:
                _fill([tt], types[i : i + 1], None)
    out["input_ids"] = torch.from_numpy(ids)
    out["token_type_ids"] = torch.from_numpy(types)
    out["attention_mask"] = torch.from_numpy(mask)
    if ranking:
        counts = torch.tensor([len(r["input_ids"]) for r in rows])
        out["candidate_mask"] = torch.arange(shape[1])[None, :] < counts[:, None]
    if all(r.get("label") is not None for r in rows):
        dtype = torch.float32 if regression else torch.int64
        out["labels"] = torch.tensor([r["label"] for r in rows], dtype=dtype)
    out["uids"] = [str(r["uid"]) for r in rows]
    return out
