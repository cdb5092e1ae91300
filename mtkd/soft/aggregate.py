"""Average ensemble members' outputs into soft targets, per uid, and check the result.

Shapes: M members, N examples, K classes (or candidates, padded with
:data:`mtkd.padding.PAD_SCORE` for ranking; padded candidates get probability 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtkd.errors import DataError
from mtkd.padding import PAD_SCORE, log_softmax, softmax

__all__ = ["SoftTargets", "aggregate", "check_targets", "softmax", "stack_members"]

PROB_TOLERANCE = 1e-3


@dataclass
class SoftTargets:
    """One task's aggregated targets, rows aligned with ``uids``.

    probs: [N, K] (classification / ranking; 0 on padded candidates) or None; logits:
    [N, K] mean member logits (PAD_SCORE on padded candidates) or None; score: [N] mean
    member score (regression) or None.
    """

    uids: list[str]
    probs: np.ndarray | None
    logits: np.ndarray | None
    score: np.ndarray | None
    num_members: int


def stack_members(outputs: Sequence[dict[str, np.ndarray]], uids: Sequence[str],
                  task: str) -> np.ndarray:
    """[M, N, K] float64 array of member outputs for ``uids`` (join by uid; short rows
    padded with :data:`~mtkd.padding.PAD_SCORE`).

    Each element of ``outputs`` maps uid → that member's output vector. A uid missing
    from any member is an error naming the member and the uid.
    """
    width = max((len(v) for out in outputs for v in out.values()), default=1)
    stacked = np.full((len(outputs), len(uids), width), PAD_SCORE, dtype=np.float64)
    for m, out in enumerate(outputs):
        for n, uid in enumerate(uids):
            vector = out.get(uid)
            if vector is None:
                raise DataError(f"task {task}: member #{m} has no prediction for uid {uid!r} "
                                "(fix: re-run the soft stage with --force)")
            stacked[m, n, : len(vector)] = vector
    return stacked


def aggregate(stacked: np.ndarray, uids: list[str], *, regression: bool, method: str,
              temperature: float) -> SoftTargets:
    """Soft targets from member outputs [M, N, K]: the paper's mean of probabilities
    (``mean_prob``), the softmax of mean logits (``mean_logit``), or the normalised
    geometric mean of probabilities (``geometric``), all at ``temperature``."""
    members = stacked.shape[0]
    if regression:
        return SoftTargets(uids, None, None, stacked[:, :, 0].mean(axis=0), members)
    # Padding is recognised before the temperature scales the scores (mtkd.padding).
    if method == "mean_prob":
        probs = softmax(stacked, temperature).mean(axis=0)
    elif method == "mean_logit":
        probs = softmax(stacked.mean(axis=0), temperature)
    elif method == "geometric":
        probs = softmax(log_softmax(stacked, temperature).mean(axis=0))
    else:
        raise ValueError(f"unknown aggregation {method!r}")
    return SoftTargets(uids, probs, stacked.mean(axis=0), None, members)


def check_targets(targets: SoftTargets, expected_uids: Sequence[str], task: str,
                  split: str) -> None:
    """Every expected uid has a target, probabilities sum to 1, nothing is NaN."""
    have = set(targets.uids)
    missing = [u for u in expected_uids if u not in have]
    if missing:
        raise DataError(f"task {task} ({split}): {len(missing)} example(s) have no soft "
                        f"target, e.g. uid {missing[0]!r} (fix: re-run with --force soft)")
    values = targets.score if targets.probs is None else targets.probs
    if values is None or np.isnan(values).any():
        bad = (int(np.isnan(values).reshape(len(values), -1).any(axis=1).argmax())
               if values is not None else 0)
        raise DataError(f"task {task} ({split}): soft target of uid {targets.uids[bad]!r} is "
                        "NaN (fix: check the teacher members' outputs; retrain with fp32)")
    if targets.probs is not None:
        sums = targets.probs.sum(axis=-1)
        worst = int(np.abs(sums - 1.0).argmax())
        if abs(sums[worst] - 1.0) > PROB_TOLERANCE:
            raise DataError(f"task {task} ({split}): probabilities of uid "
                            f"{targets.uids[worst]!r} sum to {sums[worst]:.6f}, not 1")
