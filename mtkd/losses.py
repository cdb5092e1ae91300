"""Hard-label, soft-target (distillation) and combined losses of the multi-task student.

Model outputs by task type (``spec.kind``):

* classification / pair_classification: logits [B, C]. SAN heads return log-probabilities
  as logits; everything goes through ``log_softmax``, which leaves those unchanged.
* regression: scores [B] (a trailing [B, 1] is accepted).
* ranking: candidate scores [B, K]; padded candidates hold a very negative finite value
  (``torch.finfo(dtype).min / 2``): any score below ``PAD_THRESHOLD`` counts as padding.
  Padded candidates get no probability, no loss and zero gradient.

Every loss is computed in float32 (bf16 / fp16 outputs are cast up first) and returns a
float32 scalar. Unlabelled rows (label -1, or NaN for regression) are ignored; a batch
without any labelled row gives a zero that still has a gradient. Nothing synchronises with
the host: means are sums divided by ``max(count, 1)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mtkd.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from mtkd.config.schema import KDConfig

PAD_THRESHOLD = torch.finfo(torch.float16).min / 4
"""Ranking scores at or below this (about -16376) are padded candidates; it catches
``finfo(dtype).min / 2`` of fp16, bf16 and fp32 alike, even after a cast to float32."""
_NEG = -1e30
"""What padded candidate scores become in float32 before a softmax (finite: no NaN)."""


@dataclass(frozen=True)
class TeacherTargets:
    """The teachers' predictions for a batch; unused fields may be None.

    * ``probs`` [B, C] / [B, K]: averaged teacher probabilities (0 at padded candidates);
    * ``logits`` [B, C] / [B, K]: mean teacher logits (needed by ``kind="mse_logits"``);
    * ``score`` [B]: the teachers' mean score (regression).
    """

    probs: Tensor | None = None
    logits: Tensor | None = None
    score: Tensor | None = None


class LossParts(NamedTuple):
    """The loss to minimise and its parts (float32 scalars); ``soft`` is None without a
    teacher."""

    total: Tensor
    hard: Tensor
    soft: Tensor | None


def _ranking(spec: TaskSpec) -> bool:
    return spec.kind.hard_loss == "candidate_cross_entropy"


def _prepare(spec: TaskSpec, outputs: Tensor) -> tuple[Tensor, Tensor]:
    """Float32 outputs ([B] for regression, [B, N] otherwise) and the mask of real entries
    (same shape; padded ranking candidates False and their scores set to ``_NEG``)."""
    if spec.kind.is_regression:
        out = outputs.float()
        out = out.squeeze(-1) if out.dim() == 2 and out.shape[-1] == 1 else out
        return out, torch.ones_like(out, dtype=torch.bool)
    out = outputs.float()
    if not _ranking(spec):
        return out, torch.ones_like(out, dtype=torch.bool)
    valid = out > PAD_THRESHOLD
    return out.masked_fill(~valid, _NEG), valid


def _masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``values`` where ``keep``; 0 (with a gradient) when nothing is kept."""
    total = torch.where(keep, values, torch.zeros_like(values)).sum()
    return total / keep.sum().clamp_min(1)


def hard_loss(spec: TaskSpec, outputs: Tensor, labels: Tensor) -> Tensor:
    """Loss against gold labels, mean over labelled rows: cross-entropy (classification,
    ``outputs`` [B, C], ``labels`` [B] int, -1 unlabelled), MSE (regression, [B] and
    [B] float, NaN unlabelled), softmax cross-entropy over the candidates (ranking, [B, K]
    and [B] index of the right candidate; a label on a padded candidate is ignored)."""
    out, valid = _prepare(spec, outputs)
    labels = labels.to(out.device)
    if spec.kind.is_regression:
        target = labels.float()
        keep = ~torch.isnan(target)
        diff = out - torch.nan_to_num(target)
        return _masked_mean(diff * diff, keep)
    labels = labels.long()
    index = labels.clamp(0, out.shape[-1] - 1).unsqueeze(-1)  # [B, 1]
    keep = (labels >= 0) & (labels < out.shape[-1]) & valid.gather(-1, index).squeeze(-1)
    nll = -F.log_softmax(out, dim=-1).gather(-1, index).squeeze(-1)  # [B]
    return _masked_mean(nll, keep)


def _teacher(teacher: TeacherTargets | Mapping[str, Tensor | None]) -> TeacherTargets:
    if isinstance(teacher, TeacherTargets):
        return teacher
    return TeacherTargets(**{k: teacher.get(k) for k in ("probs", "logits", "score")})


def _target(x: Tensor | None, like: Tensor) -> Tensor | None:
    return None if x is None else x.detach().to(device=like.device, dtype=torch.float32)


def soft_loss(spec: TaskSpec, outputs: Tensor,
              teacher: TeacherTargets | Mapping[str, Tensor | None],
              kind: str = "ce", temperature: float = 1.0) -> Tensor:
    """Distillation loss of a batch against the teachers (float32 scalar).

    Regression ([B] vs ``teacher.score`` [B]): MSE whatever ``kind``. Otherwise (over the
    classes [B, C], or the real candidates [B, K] for ranking), rows whose teacher targets
    hold a NaN are ignored, and:

    * ``"ce"``: mean over rows of -sum_c p_teacher[c] * log_softmax(outputs)[c] (the paper);
    * ``"kl"``: tau**2 * KL(p_teacher_tau || softmax(outputs / tau)), batchmean. The
      teacher at tau is softmax(logits / tau) when ``teacher.logits`` is given, otherwise
      probs ** (1 / tau) renormalised (the same thing when probs = softmax(logits));
    * ``"mse_logits"``: MSE between outputs and ``teacher.logits``, mean over rows and
      classes (real candidates only for ranking).

    ``"ce"`` falls back to softmax(teacher.logits) when ``teacher.probs`` is None.
    Teacher probabilities are zeroed at padded candidates and renormalised.
    """
    t = _teacher(teacher)
    out, valid = _prepare(spec, outputs)
    if spec.kind.is_regression:
        score = _target(t.score, out)
        if score is None:
            raise ValueError(f"task {spec.name!r}: regression distillation needs teacher.score")
        score = score.reshape(out.shape)
        keep = ~torch.isnan(score)
        diff = out - torch.nan_to_num(score)
        return _masked_mean(diff * diff, keep)
    probs, logits = _target(t.probs, out), _target(t.logits, out)
    rows = valid.any(-1)  # [B]: rows with at least one real candidate
    for x in (probs, logits):
        if x is not None:
            rows = rows & ~torch.isnan(x).any(-1)
    if kind == "mse_logits":
        if logits is None:
            raise ValueError(f"task {spec.name!r}: soft_loss 'mse_logits' needs teacher.logits")
        keep = valid & rows.unsqueeze(-1)
        diff = out - torch.nan_to_num(logits)
        return _masked_mean(diff * diff, keep)
    if kind not in ("ce", "kl"):
        raise ValueError(f"unknown soft loss kind {kind!r}; valid: ce, kl, mse_logits")
    tau = float(temperature) if kind == "kl" else 1.0
    if logits is not None and (kind == "kl" or probs is None):
        p = F.softmax(torch.nan_to_num(logits).masked_fill(~valid, _NEG) / tau, dim=-1)
    elif probs is not None:
        p = torch.nan_to_num(probs).clamp_min(0.0)
        p = p.pow(1.0 / tau) if tau != 1.0 else p
    else:
        raise ValueError(f"task {spec.name!r}: soft_loss {kind!r} needs teacher.probs or logits")
    p = p * valid
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    log_q = F.log_softmax((out / tau).masked_fill(~valid, _NEG), dim=-1)
    log_q = log_q.masked_fill(~valid, 0.0)  # p is 0 there: keeps 0 * (-huge) out of it
    per_row = -(p * log_q).sum(-1)  # [B] cross-entropy
    if kind == "kl":
        per_row = (per_row + torch.special.xlogy(p, p).sum(-1)) * (tau * tau)
    return _masked_mean(per_row, rows)


def task_loss(spec: TaskSpec, outputs: Tensor, labels: Tensor,
              teacher: TeacherTargets | Mapping[str, Tensor | None] | None,
              kd: KDConfig) -> LossParts:
    """The loss of one task's batch: with a teacher,
    ``(1 - kd.soft_weight) * hard + kd.soft_weight * soft`` (0.5: the paper's average of the
    hard and soft objectives); without one (``teacher`` None), the hard loss alone."""
    hard = hard_loss(spec, outputs, labels)
    if teacher is None:
        return LossParts(hard, hard, None)
    soft = soft_loss(spec, outputs, teacher, kd.soft_loss, kd.temperature)
    w = float(kd.soft_weight)
    return LossParts((1.0 - w) * hard + w * soft, hard, soft)
