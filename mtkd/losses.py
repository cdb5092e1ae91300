"""Hard-label, soft-target (distillation) and combined losses of the multi-task student.

Model outputs by task type (``spec.kind``):

* classification / pair_classification: logits [B, C]. SAN heads return log-probabilities
  as logits; everything goes through ``log_softmax``, which leaves those unchanged.
* regression: scores [B] (a trailing [B, 1] is accepted).
* ranking: candidate scores [B, K]; padded candidates hold
  :data:`mtkd.padding.PAD_SCORE` (recognised by :func:`mtkd.padding.real_candidates`).
  Padded candidates get no probability, no loss and zero gradient.

Every loss is computed in float32 (bf16 / fp16 outputs are cast up first) and returns a
float32 scalar. Unlabelled rows (a negative label such as -1, or NaN for regression) are
ignored; a class label >= the number of classes is an error, never masked; a batch
without any labelled row gives a zero that still has a gradient. Nothing synchronises with
the host: means are sums divided by ``max(count, 1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mtkd.padding import PAD_SCORE, real_candidates
from mtkd.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from mtkd.config.schema import KDConfig, StageLoss



@dataclass(frozen=True)
class TeacherTargets:
    """The teachers' predictions for a batch; unused fields may be None.

    * ``probs`` [B, C] / [B, K]: the aggregated teacher distribution (0 at padded
      candidates), made at softmax temperature ``temperature``;
    * ``logits`` [B, C] / [B, K]: mean teacher logits (needed by ``kind="mse_logits"``);
    * ``score`` [B]: the teachers' mean score (regression).

    The width K of ranking targets may differ from the batch's outputs (targets are padded
    to the widest row of the training split, outputs to the widest row of the batch).
    """

    probs: Tensor | None = None
    logits: Tensor | None = None
    score: Tensor | None = None
    temperature: float = 1.0


class LossParts(NamedTuple):
    """The loss to minimise and its parts (float32 scalars); ``soft`` is None without a
    teacher."""

    total: Tensor
    hard: Tensor
    soft: Tensor | None


def _prepare(spec: TaskSpec, outputs: Tensor) -> tuple[Tensor, Tensor]:
    """Float32 outputs ([B] for regression, [B, N] otherwise) and the mask of real entries
    (same shape; padded ranking candidates False and their scores set to ``PAD_SCORE``)."""
    if spec.kind.is_regression:
        out = outputs.float()
        out = out.squeeze(-1) if out.dim() == 2 and out.shape[-1] == 1 else out
        return out, torch.ones_like(out, dtype=torch.bool)
    out = outputs.float()
    valid = spec.kind.layout.real_mask(out)
    return out.masked_fill(~valid, PAD_SCORE), valid


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
    # Only unlabelled rows (negative: -1, or -100 as torch writes it) are masked. A label
    # >= the number of outputs is a data error that prepare refuses (naming file and row);
    # here it fails loudly in gather (an index error), it is never silently ignored.
    index = labels.clamp_min(0).unsqueeze(-1)  # [B, 1]
    keep = (labels >= 0) & valid.gather(-1, index).squeeze(-1)
    nll = -F.log_softmax(out, dim=-1).gather(-1, index).squeeze(-1)  # [B]
    return _masked_mean(nll, keep)


def _teacher(teacher: TeacherTargets | Mapping[str, Tensor | None]) -> TeacherTargets:
    if isinstance(teacher, TeacherTargets):
        return teacher
    return TeacherTargets(**{k: teacher.get(k) for k in ("probs", "logits", "score")},
                          temperature=float(teacher.get("temperature") or 1.0))


def _target(x: Tensor | None, like: Tensor, padding: float) -> Tensor | None:
    """Teacher values as float32 on ``like``'s device, cut or padded (with ``padding``) to
    ``like``'s width. Only padding may be cut: a row's candidates all fit its batch."""
    if x is None:
        return None
    x = x.detach().to(device=like.device, dtype=torch.float32)
    width = like.shape[-1]
    if x.dim() < 2 or x.shape[-1] == width:
        return x
    if x.shape[-1] > width:
        extra = x[..., width:]
        real = real_candidates(extra) if padding < 0 else extra != padding
        if bool((real & ~torch.isnan(extra)).any()):
            raise ValueError(f"teacher targets have {x.shape[-1]} real entries per row but the "
                             f"outputs only {width}")
        return x[..., :width]
    return F.pad(x, (0, width - x.shape[-1]), value=padding)


def soft_loss(spec: TaskSpec, outputs: Tensor,
              teacher: TeacherTargets | Mapping[str, Tensor | None],
              kind: str = "ce", temperature: float = 1.0) -> Tensor:
    """Distillation loss of a batch against the teachers (float32 scalar).

    Regression ([B] vs ``teacher.score`` [B]): MSE whatever ``kind``. Otherwise (over the
    classes [B, C], or the real candidates [B, K] for ranking), rows whose teacher targets
    hold a NaN are ignored. With tau = ``temperature`` (Hinton, Vinyals, Dean 2015,
    "Distilling the knowledge in a neural network", section 2):

    * the teacher distribution p_tau is the stored aggregate ``teacher.probs`` (the
      paper's mean of member probabilities, or whatever ``soft_targets.aggregation`` made)
      brought to tau: as stored when it was made at tau (``teacher.temperature == tau``),
      ``p ** (1 / tau)`` renormalised when it was made at 1 (the same as softmax(z / tau)
      for p = softmax(z)); softmax(``teacher.logits`` / tau) only when no probs are given;
    * the student's distribution is softmax(outputs / tau);
    * ``"ce"``: tau**2 * mean over rows of -sum_c p_tau[c] * log q_tau[c] (tau = 1: the
      MT-DNN-KD paper's soft loss, section 3);
    * ``"kl"``: tau**2 * KL(p_tau || q_tau), the same gradients as ``"ce"`` (they differ by
      the teacher's entropy, a constant);
    * ``"mse_logits"``: MSE between outputs and ``teacher.logits``, mean over rows and
      classes (real candidates only for ranking); tau is not used.

    The tau**2 factor keeps the soft gradients' scale independent of tau. Raises
    ValueError when the targets were made at a temperature other than 1 and tau (they
    cannot be brought to tau: refused at validate).
    """
    t = _teacher(teacher)
    out, valid = _prepare(spec, outputs)
    if spec.kind.is_regression:
        if t.score is None:
            raise ValueError(f"task {spec.name!r}: regression distillation needs teacher.score")
        score = t.score.detach().to(device=out.device, dtype=torch.float32).reshape(out.shape)
        keep = ~torch.isnan(score)
        diff = out - torch.nan_to_num(score)
        return _masked_mean(diff * diff, keep)
    probs, logits = _target(t.probs, out, 0.0), _target(t.logits, out, PAD_SCORE)
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
    tau, made_at = float(temperature), float(t.temperature)
    if probs is not None:
        p = torch.nan_to_num(probs).clamp_min(0.0)
        if made_at != tau:
            if made_at != 1.0:
                raise ValueError(f"task {spec.name!r}: soft targets made at temperature "
                                 f"{made_at} cannot be used at {tau} (set both to the same "
                                 "value, or make the targets at 1)")
            p = p.pow(1.0 / tau)
    elif logits is not None:
        p = F.softmax(torch.nan_to_num(logits).masked_fill(~valid, PAD_SCORE) / tau, dim=-1)
    else:
        raise ValueError(f"task {spec.name!r}: soft_loss {kind!r} needs teacher.probs or logits")
    p = p * valid
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    log_q = F.log_softmax((out / tau).masked_fill(~valid, PAD_SCORE), dim=-1)
    log_q = log_q.masked_fill(~valid, 0.0)  # p is 0 there: keeps 0 * log q out of it
    per_row = -(p * log_q).sum(-1)  # [B] cross-entropy
    if kind == "kl":
        per_row = per_row + torch.special.xlogy(p, p).sum(-1)
    return _masked_mean(per_row, rows) * (tau * tau)


def task_loss(spec: TaskSpec, outputs: Tensor, labels: Tensor,
              teacher: TeacherTargets | Mapping[str, Tensor | None] | None,
              kd: KDConfig, weights: StageLoss | None = None) -> LossParts:
    """The loss of one task's batch: with a teacher,
    ``(1 - kd.soft_weight) * hard + kd.soft_weight * soft`` (0.5: the paper's average of the
    hard and soft objectives); without one (``teacher`` None), the hard loss alone.

    ``weights`` (a stage of staged training, :mod:`mtkd.training.stages`) replaces
    kd.soft_weight: ``weights.hard * hard + weights.soft * soft`` with a teacher,
    ``(weights.hard + weights.soft) * hard`` without (the soft share falls back to the
    labels, as without stages); ``weights.hidden`` is the model's own term (not added
    here)."""
    hard = hard_loss(spec, outputs, labels)
    if teacher is None:
        if weights is None:
            return LossParts(hard, hard, None)
        return LossParts((weights.hard + weights.soft) * hard, hard, None)
    soft = soft_loss(spec, outputs, teacher, kd.soft_loss, kd.temperature)
    if weights is not None:
        return LossParts(weights.hard * hard + weights.soft * soft, hard, soft)
    w = float(kd.soft_weight)
    return LossParts((1.0 - w) * hard + w * soft, hard, soft)


class WithAuxLoss(NamedTuple):
    """What a training-time model wrapper returns instead of bare outputs: the outputs the
    task losses read, and a loss of its own (a float32 scalar, already weighted) that the
    training loop adds to the batch's loss (representation distillation,
    :mod:`mtkd.student.hidden`). ``outputs`` None: a batch without a head (unlabelled
    transfer text, :mod:`mtkd.data.transfer`), whose loss is ``aux_loss`` alone."""

    outputs: Tensor | None
    aux_loss: Tensor


def hidden_state_loss(student: Sequence[Tensor], teacher: Sequence[Tensor],
                      attention_mask: Tensor,
                      projection: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Representation distillation (TinyBERT, Jiao et al. 2020, eq. 8; XtremeDistil,
    Mukherjee et al. 2021, section 3): the mean over the given layer pairs of
    MSE(projection(h_s), h_t), averaged over real tokens (``attention_mask`` [N, T], 1 for
    real tokens) and over the teacher's hidden dimensions.

    ``student[i]`` [N, T, H_s] is matched to ``teacher[i]`` [N, T, H_t];
    ``projection`` maps H_s to H_t (a learned linear map when the widths differ; None:
    identity, the widths must be equal). Teacher states carry no gradient. Computed in
    float32; returns a float32 scalar (0 with a gradient when no token is real). Raises
    ValueError when the lists differ in length or the widths do not match."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"hidden_state_loss needs as many student as teacher layers (>= 1), "
                         f"got {len(student)} and {len(teacher)}")
    keep = attention_mask.to(torch.float32).unsqueeze(-1)  # [N, T, 1]
    tokens = keep.sum().clamp_min(1.0)
    total = torch.zeros((), dtype=torch.float32, device=attention_mask.device)
    for hs, ht in zip(student, teacher, strict=True):
        mapped = projection(hs) if projection is not None else hs
        target = ht.detach().to(torch.float32)
        if mapped.shape != target.shape:
            raise ValueError(f"student states {tuple(mapped.shape)} (after the projection) do "
                             f"not match teacher states {tuple(target.shape)}")
        diff = (mapped.to(torch.float32) - target) * keep
        total = total + (diff * diff).sum() / (tokens * target.shape[-1])
    return total / len(student)
