"""Absent ranking candidates: the one score that pads them, how to recognise it, and the
softmax that gives them probability 0.

A ranking row has as many candidates as its query; a batch (or a split, or a stack of
ensemble members) is as wide as its widest row, and the empty slots hold
:data:`PAD_SCORE` everywhere in mtkd: the ranking head's output, the outputs of
:mod:`mtkd.model.infer` and of the metrics' inputs, the members' stacked outputs and the
mean teacher logits of the soft stage, the student's teacher arrays and the losses. Code
that reads scores recognises padding by :func:`real_candidates` (at or below
:data:`PAD_BELOW`, -inf included), never by equality, because a cast rounds the value.

Why -30000 (and not -inf or ``finfo(dtype).min / 2``, which mtkd used before):

* finite: a softmax or log-softmax over a row never computes ``-inf - -inf`` (NaN), not
  even for an all-padded row, and ``0 * log q`` at a padded slot stays 0;
* one value for every dtype: fp16's largest magnitude is 65504, so fp32's ``min / 2``
  becomes -inf in fp16; -30000 is exact in fp16 and fp32, and bf16 rounds it to -29952;
* far below any real score: a logit is a few tens at most, so ``exp(PAD_SCORE - max)`` is
  exactly 0 in fp16, bf16, fp32 and float64 (float64 underflows below about -745), and the
  gap to :data:`PAD_BELOW` survives any cast;
* small enough to do arithmetic on: the mean over members, a division by a temperature
  below 1, or a sum over thousands of rows does not overflow (``float32 min / 2`` summed
  over three members already is -inf).

Probabilities (soft targets, ``mtkd predict`` with probabilities) hold 0, not PAD_SCORE,
at padded slots: :func:`softmax` sets them to exactly 0 whatever the temperature (a large
temperature brings ``PAD_SCORE / T`` close to the real scores, so padding is recognised
before scaling, never after).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PAD_SCORE = -30000.0
"""The score of an absent ranking candidate (see the module docstring for why)."""
PAD_BELOW = -1.0e4
"""A candidate score at or below this, or not finite, is padding: it catches
:data:`PAD_SCORE` after any cast (bf16: -29952) and every padding earlier mtkd versions
wrote (-inf, ``finfo(dtype).min / 2`` of fp32, bf16 and fp16), and no real logit."""


def real_candidates(scores: Any) -> Any:
    """Which slots of candidate ``scores`` hold a real candidate (above :data:`PAD_BELOW`):
    a bool array (numpy) or tensor (torch) of the same shape [..., K]. NaN is not a real
    candidate. Lists are read as float64 numpy arrays."""
    if not hasattr(scores, "masked_fill"):  # numpy or plain lists
        scores = np.asarray(scores, dtype=np.float64)
    return scores > PAD_BELOW


def pad_rows(rows: Sequence[Any], fill: float = PAD_SCORE, width: int | None = None
             ) -> np.ndarray:
    """Rows of different lengths (1-D, e.g. each query's candidate scores) as one float32
    array [N, K], K = ``width`` or the longest row, short rows filled with ``fill``
    (:data:`PAD_SCORE` for scores, 0 for probabilities). ValueError when a row is longer
    than ``width``."""
    longest = max((len(r) for r in rows), default=0)
    width = longest if width is None else width
    if longest > width:
        raise ValueError(f"a row has {longest} values, more than the width {width}")
    out = np.full((len(rows), width), fill, dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def log_softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(scores / ``temperature``) over the last axis, in float64, over the real
    candidates only; padded slots (recognised before scaling) hold :data:`PAD_SCORE`. An
    all-padded row is all PAD_SCORE (never NaN). A NaN score is kept, so that it makes its
    row NaN: a broken output is caught by the checks, not hidden as padding."""
    x = np.asarray(scores, dtype=np.float64)
    real = real_candidates(x) | np.isnan(x)
    z = np.where(real, x / temperature, -np.inf)
    top = np.max(z, axis=-1, keepdims=True) if z.shape[-1] else np.zeros((*z.shape[:-1], 1))
    top = np.where(np.isfinite(top), top, 0.0)
    shifted = z - top
    with np.errstate(divide="ignore", invalid="ignore"):
        out = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return np.where(real, out, PAD_SCORE)


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(scores / ``temperature``) over the last axis (float64): the distribution
    over the real candidates, exactly 0 at padded slots; an all-padded row is all 0; a
    row with a NaN score is NaN (see :func:`log_softmax`)."""
    x = np.asarray(scores, dtype=np.float64)
    return np.where(real_candidates(x) | np.isnan(x), np.exp(log_softmax(x, temperature)),
                    0.0)
