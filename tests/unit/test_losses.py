"""Hard, soft and combined losses against values worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from mtkd.config.schema import KDConfig
from mtkd.losses import LossParts, TeacherTargets, hard_loss, soft_loss, task_loss
from mtkd.tasks.spec import TaskSpec

CLS = TaskSpec(name="sst2", type="classification", labels=("neg", "pos"))
PAIR = TaskSpec(name="rte", type="pair_classification", labels=("yes", "no"))
REG = TaskSpec(name="stsb", type="regression")
RANK = TaskSpec(name="qnli", type="ranking")

PAD = torch.finfo(torch.float32).min / 2  # what the model puts at padded candidates

# log_softmax([2, 0]) = [-log(1 + e^-2), -2 - log(1 + e^-2)] = [-0.126928, -2.126928]
CE_2_0 = math.log1p(math.exp(-2.0))  # 0.126928
# soft CE of logits [2, 0] against p = [0.7, 0.3]:
# 0.7 * 0.126928 + 0.3 * 2.126928 = 0.088850 + 0.638078 = 0.726928 (= 0.126928 + 0.3 * 2)
SOFT_CE = 0.7 * CE_2_0 + 0.3 * (2.0 + CE_2_0)


def t(*rows: object, dtype: torch.dtype = torch.float32, grad: bool = False) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=dtype, requires_grad=grad)


def close(x: torch.Tensor, expected: float, tol: float = 1e-5) -> None:
    assert x.dtype == torch.float32 and x.dim() == 0
    assert x.item() == pytest.approx(expected, abs=tol)


# ----------------------------------------------------------------------------- hard


def test_hard_cross_entropy_by_hand() -> None:
    close(hard_loss(CLS, t([2.0, 0.0]), t(0, dtype=torch.long)), 0.126928)
    # row 2: logits [0, 0], label 1 -> log 2 = 0.693147; mean (0.126928 + 0.693147) / 2
    loss = hard_loss(PAIR, t([2.0, 0.0], [0.0, 0.0]), t(0, 1, dtype=torch.long))
    close(loss, (0.126928 + 0.693147) / 2)


def test_hard_cross_entropy_gradient_by_hand() -> None:
    # d CE / d logits = softmax - onehot = [sigmoid(2) - 1, 1 - sigmoid(2)] = [-0.119203, 0.119203]
    logits = t([2.0, 0.0], grad=True)
    hard_loss(CLS, logits, t(0, dtype=torch.long)).backward()
    assert logits.grad is not None
    assert logits.grad.tolist()[0] == pytest.approx([-0.119203, 0.119203], abs=1e-6)


def test_hard_ignores_unlabelled_rows() -> None:
    # row 2 has label -1: only row 1 counts -> 0.126928 (not halved)
    logits = t([2.0, 0.0], [5.0, -5.0], grad=True)
    close(hard_loss(CLS, logits, t(0, -1, dtype=torch.long)), 0.126928)


@pytest.mark.parametrize(("spec", "outputs", "labels"), [
    (CLS, [[2.0, 0.0], [1.0, 1.0]], torch.tensor([-1, -1])),
    (REG, [1.0, 2.0], torch.tensor([math.nan, math.nan])),
    (RANK, [[1.0, 0.0, PAD]], torch.tensor([-1])),
])
def test_hard_without_labelled_rows_is_a_zero_with_grad(spec: TaskSpec, outputs: list,
                                                        labels: torch.Tensor) -> None:
    x = torch.tensor(outputs, requires_grad=True)
    loss = hard_loss(spec, x, labels)
    close(loss, 0.0)
    assert loss.requires_grad
    loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_hard_regression_mse_by_hand() -> None:
    # scores [1, 2, 3], labels [1.5, NaN, 2]: ((1 - 1.5)^2 + (3 - 2)^2) / 2 = (0.25 + 1) / 2
    scores = t(1.0, 2.0, 3.0)
    close(hard_loss(REG, scores, t(1.5, math.nan, 2.0)), 0.625)
    close(hard_loss(REG, scores.unsqueeze(-1), t(1.5, math.nan, 2.0)), 0.625)  # [B, 1]


def test_hard_ranking_by_hand() -> None:
    # row 1: scores [1, 0, PAD], label 0 -> log(1 + e^-1) = 0.313262 (the padded one is out)
    # row 2: scores [0, 0, 0], label 2 -> log 3 = 1.098612; mean = 0.705937
    scores = t([1.0, 0.0, PAD], [0.0, 0.0, 0.0], grad=True)
    loss = hard_loss(RANK, scores, t(0, 2, dtype=torch.long))
    close(loss, (math.log1p(math.exp(-1.0)) + math.log(3.0)) / 2)
    close(loss, 0.705937)
    loss.backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert scores.grad[0, 2].item() == 0.0  # padded candidate: no gradient


def test_hard_ranking_ignores_labels_on_padding_and_fully_padded_rows() -> None:
    # row 2's label points at a padded candidate, row 3 is all padding: only row 1 counts
    scores = t([1.0, 0.0, PAD], [1.0, PAD, PAD], [PAD, PAD, PAD], grad=True)
    loss = hard_loss(RANK, scores, t(0, 2, 0, dtype=torch.long))
    close(loss, 0.313262)
    loss.backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert torch.equal(scores.grad[1:], torch.zeros(2, 3))


# ----------------------------------------------------------------------------- soft


def test_soft_ce_by_hand() -> None:
    teacher = TeacherTargets(probs=t([0.7, 0.3]))
    close(soft_loss(CLS, t([2.0, 0.0]), teacher, "ce"), 0.726928)
    close(soft_loss(CLS, t([2.0, 0.0]), teacher, "ce"), SOFT_CE)
    # tau = 3 applies to ce as well (Hinton): p_3 = [0.7^(1/3), 0.3^(1/3)] renormalised =
    # [0.887904, 0.669433] / 1.557337 = [0.570142, 0.429858]; q_3 = softmax([2/3, 0]) =
    # [0.660733, 0.339267]; CE = -(0.570142 ln 0.660733 + 0.429858 ln 0.339267)
    # = 0.570142 * 0.414403 + 0.429858 * 1.080968 = 0.236268 + 0.464663 = 0.700931; x 9
    p3 = [0.7 ** (1 / 3), 0.3 ** (1 / 3)]
    p3 = [x / sum(p3) for x in p3]
    q3 = [math.exp(2 / 3) / (math.exp(2 / 3) + 1), 1 / (math.exp(2 / 3) + 1)]
    expected = 9 * -(p3[0] * math.log(q3[0]) + p3[1] * math.log(q3[1]))
    close(soft_loss(CLS, t([2.0, 0.0]), teacher, "ce", temperature=3.0), expected)
    close(soft_loss(CLS, t([2.0, 0.0]), teacher, "ce", temperature=3.0), 9 * 0.700931, 1e-4)


def test_soft_ce_san_log_probabilities_give_the_same() -> None:
    # a SAN head returns log_softmax([2, 0]) = [-0.126928, -2.126928]: same loss
    log_probs = t([-CE_2_0, -2.0 - CE_2_0])
    close(soft_loss(CLS, log_probs, TeacherTargets(probs=t([0.7, 0.3])), "ce"), 0.726928)
    close(hard_loss(CLS, log_probs, t(0, dtype=torch.long)), 0.126928)


def test_soft_ce_falls_back_to_teacher_logits_and_takes_dicts() -> None:
    # teacher logits [log 0.7, log 0.3] -> softmax = [0.7, 0.3]
    logits = t([math.log(0.7), math.log(0.3)])
    close(soft_loss(CLS, t([2.0, 0.0]), TeacherTargets(logits=logits), "ce"), 0.726928)
    close(soft_loss(CLS, t([2.0, 0.0]), {"probs": t([0.7, 0.3])}, "ce"), 0.726928)


def test_soft_kl_temperature_2_by_hand() -> None:
    # tau = 2: student [2, 0] / 2 = [1, 0] -> q = [0.731059, 0.268941];
    # teacher logits [0, 2] / 2 = [0, 1] -> p = [0.268941, 0.731059]
    # KL(p || q) = 0.268941 * (-1) + 0.731059 * (+1) = 0.462117 (log p/q = -1, +1)
    # scaled by tau^2 = 4 -> 1.848469
    expected = 4 * (0.731059 - 0.268941)
    loss = soft_loss(CLS, t([2.0, 0.0]), TeacherTargets(logits=t([0.0, 2.0])), "kl", 2.0)
    close(loss, expected)
    close(loss, 1.848469)
    # only probs: softmax([0, 2]) = [0.119203, 0.880797]; ** (1/2) renormalised
    # = softmax([0, 1]) = [0.268941, 0.731059] -> the same 1.848469
    probs = torch.softmax(t([0.0, 2.0]), dim=-1)
    close(soft_loss(CLS, t([2.0, 0.0]), TeacherTargets(probs=probs), "kl", 2.0), 1.848469)


def test_soft_kl_temperature_1_is_ce_minus_teacher_entropy() -> None:
    # H(p) = -(0.7 log 0.7 + 0.3 log 0.3) = 0.249672 + 0.361192 = 0.610864
    # KL = 0.726928 - 0.610864 = 0.116064
    loss = soft_loss(CLS, t([2.0, 0.0]), TeacherTargets(probs=t([0.7, 0.3])), "kl", 1.0)
    close(loss, 0.116064)
    # identical distributions -> 0
    probs = torch.softmax(t([2.0, 0.0]), dim=-1)
    close(soft_loss(CLS, t([2.0, 0.0]), TeacherTargets(probs=probs), "kl", 1.0), 0.0)


def test_soft_mse_logits_by_hand() -> None:
    # student [[2, 0], [1, 3]], teacher [[1, 1], [1, 1]]: diffs 1, -1, 0, 2
    # (1 + 1 + 0 + 4) / 4 = 1.5 (mean over batch and classes)
    teacher = TeacherTargets(logits=t([1.0, 1.0], [1.0, 1.0]))
    close(soft_loss(CLS, t([2.0, 0.0], [1.0, 3.0]), teacher, "mse_logits"), 1.5)


@pytest.mark.parametrize("kind", ["ce", "kl", "mse_logits"])
def test_soft_regression_is_mse_against_mean_score(kind: str) -> None:
    # scores [1, 2], teacher mean [1.5, 1]: (0.25 + 1) / 2 = 0.625 whatever the kind
    teacher = TeacherTargets(score=t(1.5, 1.0))
    close(soft_loss(REG, t(1.0, 2.0), teacher, kind, 2.0), 0.625)
    close(soft_loss(REG, t([1.0], [2.0]), teacher, kind, 2.0), 0.625)


def test_soft_ranking_ce_by_hand_with_padding() -> None:
    # scores [1, 0, PAD]: log_softmax over the 2 real ones = [-0.313262, -1.313262]
    # p = [0.6, 0.4, 0]: 0.6 * 0.313262 + 0.4 * 1.313262 = 0.713262
    scores = t([1.0, 0.0, PAD], grad=True)
    loss = soft_loss(RANK, scores, TeacherTargets(probs=t([0.6, 0.4, 0.0])), "ce")
    close(loss, 0.713262)
    loss.backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert scores.grad[0, 2].item() == 0.0
    # 0.6 - softmax: d/ds = q - p = [0.731059 - 0.6, 0.268941 - 0.4]
    assert scores.grad[0, :2].tolist() == pytest.approx([0.131059, -0.131059], abs=1e-6)


def test_soft_ranking_kl_and_mse_logits_ignore_padding() -> None:
    # KL tau = 2, same numbers as the classification case; teacher logit at padding ignored
    scores = t([2.0, 0.0, PAD], grad=True)
    kl = soft_loss(RANK, scores, TeacherTargets(logits=t([0.0, 2.0, 50.0])), "kl", 2.0)
    close(kl, 1.848469)
    # MSE: real diffs (1 - 0, 0 - 0) -> (1 + 0) / 2 = 0.5; the padded 123 is masked out
    mse = soft_loss(RANK, t([1.0, 0.0, PAD]), TeacherTargets(logits=t([0.0, 0.0, 123.0])),
                    "mse_logits")
    close(mse, 0.5)
    (kl + mse).backward()
    assert scores.grad is not None and scores.grad[0, 2].item() == 0.0


@pytest.mark.parametrize("kind", ["ce", "kl", "mse_logits"])
def test_soft_ranking_fully_padded_row_gives_no_nan(kind: str) -> None:
    # row 2 is all padding (teacher probs 0): it is left out, row 1 alone gives the loss
    scores = t([1.0, 0.0, PAD], [PAD, PAD, PAD], grad=True)
    teacher = TeacherTargets(probs=t([0.6, 0.4, 0.0], [0.0, 0.0, 0.0]),
                             logits=t([1.0, 0.0, 0.0], [0.0, 0.0, 0.0]))
    loss = soft_loss(RANK, scores, teacher, kind, 2.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert torch.equal(scores.grad[1], torch.zeros(3))
    assert scores.grad[0, 2].item() == 0.0
    alone = soft_loss(RANK, scores[:1].detach(),
                      TeacherTargets(probs=t([0.6, 0.4, 0.0]), logits=t([1.0, 0.0, 0.0])),
                      kind, 2.0)
    close(loss, alone.item())


def test_soft_errors() -> None:
    logits = t([2.0, 0.0])
    with pytest.raises(ValueError, match="mse_logits"):
        soft_loss(CLS, logits, TeacherTargets(probs=t([0.7, 0.3])), "mse_logits")
    with pytest.raises(ValueError, match="unknown soft loss"):
        soft_loss(CLS, logits, TeacherTargets(probs=t([0.7, 0.3])), "hinge")
    with pytest.raises(ValueError, match=r"teacher\.score"):
        soft_loss(REG, t(1.0), TeacherTargets(probs=t([0.7, 0.3])), "ce")
    with pytest.raises(ValueError, match="probs or logits"):
        soft_loss(CLS, logits, TeacherTargets(), "ce")


# ------------------------------------------------------------------------- combined


@pytest.mark.parametrize(("weight", "expected"), [
    (0.0, 0.126928),  # hard only
    (0.5, (0.126928 + 0.726928) / 2),  # the paper: average = 0.426928
    (1.0, 0.726928),  # soft only
])
def test_task_loss_weighting(weight: float, expected: float) -> None:
    kd = KDConfig(soft_loss="ce", soft_weight=weight)
    parts = task_loss(CLS, t([2.0, 0.0]), t(0, dtype=torch.long),
                      TeacherTargets(probs=t([0.7, 0.3])), kd)
    assert isinstance(parts, LossParts)
    close(parts.total, expected)
    close(parts.hard, 0.126928)
    assert parts.soft is not None
    close(parts.soft, 0.726928)


def test_task_loss_kl_uses_config_temperature() -> None:
    kd = KDConfig(soft_loss="kl", soft_weight=1.0, temperature=2.0)
    parts = task_loss(CLS, t([2.0, 0.0]), t(0, dtype=torch.long),
                      TeacherTargets(logits=t([0.0, 2.0])), kd)
    close(parts.total, 1.848469)


def test_task_loss_without_teacher_is_hard_only() -> None:
    logits = t([2.0, 0.0], grad=True)
    parts = task_loss(CLS, logits, t(0, dtype=torch.long), None, KDConfig(soft_weight=0.9))
    assert parts.soft is None
    close(parts.total, 0.126928)
    close(parts.hard, 0.126928)
    parts.total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_task_loss_regression_gradients() -> None:
    # hard (1 - 1.5)^2 = 0.25, soft (1 - 2)^2 = 1 -> 0.625; d/ds = 0.5*2*(-0.5) + 0.5*2*(-1)
    scores = t(1.0, grad=True)
    parts = task_loss(REG, scores, t(1.5), TeacherTargets(score=t(2.0)), KDConfig())
    close(parts.total, 0.625)
    parts.total.backward()
    assert scores.grad is not None and scores.grad.tolist() == pytest.approx([-1.5])


# -------------------------------------------------------------------------- precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["ce", "kl", "mse_logits"])
def test_half_precision_inputs_give_float32_close_to_fp32(dtype: torch.dtype,
                                                          kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=gen) * 2
    labels = torch.randint(0, 3, (8,), generator=gen)
    teacher = TeacherTargets(probs=torch.softmax(torch.randn(8, 3, generator=gen), -1),
                             logits=torch.randn(8, 3, generator=gen))
    kd = KDConfig(soft_loss=kind, temperature=2.0)  # type: ignore[arg-type]
    ref = task_loss(CLS, logits, labels, teacher, kd)
    half = logits.to(dtype).requires_grad_()
    got = task_loss(CLS, half, labels, teacher, kd)
    for a, b in zip(got, ref, strict=True):
        assert a is not None and b is not None
        assert a.dtype == torch.float32
        assert a.item() == pytest.approx(b.item(), rel=2e-2, abs=2e-2)
    # exactly the fp32 loss of the rounded inputs: the computation itself is float32
    exact = task_loss(CLS, half.detach().float(), labels, teacher, kd)
    assert got.total.item() == pytest.approx(exact.total.item(), rel=1e-6)
    got.total.backward()
    assert half.grad is not None and torch.isfinite(half.grad.float()).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_ranking_padding_of_every_precision_is_recognised(dtype: torch.dtype) -> None:
    # the model pads with finfo(its dtype).min / 2; each must count as padding
    pad = torch.finfo(dtype).min / 2
    scores = torch.tensor([[1.0, 0.0, pad]], dtype=dtype, requires_grad=True)
    close(hard_loss(RANK, scores, t(0, dtype=torch.long)), 0.313262, tol=1e-4)
    loss = soft_loss(RANK, scores, TeacherTargets(probs=t([0.6, 0.4, 0.0])), "kl", 2.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert scores.grad is not None and scores.grad[0, 2].item() == 0.0
    # the same scores cast up to float32 before the loss are still recognised
    close(hard_loss(RANK, scores.detach().float(), t(0, dtype=torch.long)), 0.313262, tol=1e-4)


# ------------------------------------------------ the target is the aggregated distribution
# Two members that disagree: logits [8, 0] and [0, 2]. Their averaged probabilities
# (the paper's soft targets) differ from the softmax of their averaged logits.
M1, M2 = [8.0, 0.0], [0.0, 2.0]


def _softmax(z: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


MEAN_PROB = [(a + b) / 2 for a, b in zip(_softmax(M1), _softmax(M2), strict=True)]
MEAN_LOGIT = [(a + b) / 2 for a, b in zip(M1, M2, strict=True)]


def test_disagreeing_members_make_different_targets() -> None:
    assert pytest.approx([0.559434, 0.440566], abs=1e-6) == MEAN_PROB
    assert _softmax(MEAN_LOGIT) == pytest.approx([0.952574, 0.047426], abs=1e-6)


@pytest.mark.parametrize("kind", ["ce", "kl"])
@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_ce_and_kl_train_toward_the_stored_averaged_probabilities(kind: str,
                                                                  tau: float) -> None:
    """Not toward softmax(mean logits / tau), though the mean logits are there too."""
    student = [1.0, -1.0]
    teacher = TeacherTargets(probs=t(MEAN_PROB), logits=t(MEAN_LOGIT))
    p = [x ** (1 / tau) for x in MEAN_PROB]
    p = [x / sum(p) for x in p]
    q = _softmax(student, tau)
    ce = -sum(a * math.log(b) for a, b in zip(p, q, strict=True))
    entropy = -sum(a * math.log(a) for a in p)
    expected = tau * tau * (ce if kind == "ce" else ce - entropy)
    close(soft_loss(CLS, t(student), teacher, kind, tau), expected)


def test_ce_and_kl_have_the_same_gradient() -> None:
    teacher = TeacherTargets(probs=t(MEAN_PROB))
    grads = []
    for kind in ("ce", "kl"):
        x = t([1.0, -1.0], grad=True)
        soft_loss(CLS, x, teacher, kind, 2.0).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])
    # d/dz of tau^2 * CE(p_tau, softmax(z / tau)) = tau * (q_tau - p_tau)
    p = [x ** 0.5 for x in MEAN_PROB]
    p = [x / sum(p) for x in p]
    q = _softmax([1.0, -1.0], 2.0)
    assert grads[0][0].tolist() == pytest.approx([2 * (q[0] - p[0]), 2 * (q[1] - p[1])],
                                                 abs=1e-6)


def test_targets_made_at_tau_are_used_as_stored() -> None:
    made = [(a + b) / 2 for a, b in zip(_softmax(M1, 2.0), _softmax(M2, 2.0), strict=True)]
    teacher = TeacherTargets(probs=t(made), temperature=2.0)
    q = _softmax([1.0, -1.0], 2.0)
    expected = 4 * -sum(a * math.log(b) for a, b in zip(made, q, strict=True))
    close(soft_loss(CLS, t([1.0, -1.0]), teacher, "ce", 2.0), expected)
    with pytest.raises(ValueError, match=r"made at temperature 2\.0 cannot be used at 3\.0"):
        soft_loss(CLS, t([1.0, -1.0]), teacher, "ce", 3.0)


# ---------------------------------------------- ranking targets wider than the batch
@pytest.mark.parametrize("kind", ["ce", "kl", "mse_logits"])
def test_ranking_targets_padded_to_the_split_fit_a_narrower_batch(kind: str) -> None:
    """Targets are padded to the widest row of the training split (5 candidates), the
    batch's outputs to its own widest row (3): the loss equals the one on cut targets."""
    scores = t([2.0, 0.0, PAD], [1.0, 0.5, -1.0])
    wide_probs = t([0.7, 0.3, 0.0, 0.0, 0.0], [0.2, 0.3, 0.5, 0.0, 0.0])
    wide_logits = t([1.0, 0.0, PAD, PAD, PAD], [0.0, 1.0, 2.0, PAD, PAD])
    wide = soft_loss(RANK, scores, TeacherTargets(probs=wide_probs, logits=wide_logits), kind)
    cut = soft_loss(RANK, scores, TeacherTargets(probs=wide_probs[:, :3],
                                                 logits=wide_logits[:, :3]), kind)
    close(wide, cut.item())
    # and narrower targets than outputs are padded
    narrow = soft_loss(RANK, t([2.0, 0.0, PAD, PAD]),
                       TeacherTargets(probs=t([0.7, 0.3, 0.0]), logits=t([1.0, 0.0, PAD])),
                       kind)
    close(narrow, soft_loss(RANK, t([2.0, 0.0]), TeacherTargets(probs=t([0.7, 0.3]),
                                                                logits=t([1.0, 0.0])),
                            kind).item())


def test_ranking_targets_with_more_real_candidates_than_outputs_are_an_error() -> None:
    with pytest.raises(ValueError, match="5 real entries per row but the outputs only 3"):
        soft_loss(RANK, t([2.0, 0.0, 1.0]),
                  TeacherTargets(probs=t([0.2, 0.2, 0.2, 0.2, 0.2])), "ce")


def test_hard_label_beyond_the_classes_is_an_error_not_masked() -> None:
    # prepare refuses such labels (naming file and row); the loss never hides one: only
    # negative labels (-1, -100) are unlabelled
    logits = t([2.0, 0.0], [5.0, -5.0], grad=True)
    with pytest.raises((IndexError, RuntimeError)):
        hard_loss(CLS, logits, t(0, 2, dtype=torch.long))
    close(hard_loss(CLS, logits, t(0, -100, dtype=torch.long)), 0.126928)
