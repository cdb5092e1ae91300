"""One padding value for absent ranking candidates, checked in every dtype at every consumer:
the ranking head, the inference core (scores and probabilities), the losses, the soft
stage's aggregation and ensemble outputs, the student's teacher arrays and the metrics.

Expected values are computed here by hand over each row's real candidates only (numpy,
float64), never by the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtkd.losses import TeacherTargets, hard_loss, soft_loss
from mtkd.metrics import mean_reciprocal_rank, pair_accuracy
from mtkd.padding import PAD_BELOW, PAD_SCORE, pad_rows, real_candidates, softmax
from mtkd.soft.aggregate import aggregate, stack_members
from mtkd.tasks.spec import TaskSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RANKING = TaskSpec("qa", "ranking", max_length=32)
COUNTS = [3, 1, 2, 4]
"""Real candidates per row; the rows are padded to 4."""
OLD_PADDINGS = [-np.inf, float(np.finfo(np.float32).min / 2),
                float(torch.finfo(torch.bfloat16).min / 2), float(np.finfo(np.float16).min / 2)]
"""What earlier mtkd versions padded with (still read as padding)."""


def real_rows(seed: int = 0, scale: float = 4.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, scale, k) for k in COUNTS]


def through(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """``values`` as a model in ``dtype`` would hand them out: rounded to it, then float32."""
    return torch.from_numpy(np.asarray(values, np.float32)).to(dtype).float().numpy()


def by_hand_softmax(row: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(row, np.float64) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("pad", [PAD_SCORE, *OLD_PADDINGS])
@pytest.mark.parametrize("name", DTYPES)
def test_every_padding_is_recognised_after_a_cast_and_real_scores_are_not(name: str,
                                                                          pad: float) -> None:
    dtype = DTYPES[name]
    cast = float(torch.tensor(pad, dtype=torch.float32).to(dtype).float())
    assert cast <= PAD_BELOW
    assert not real_candidates(np.array([cast])).any()
    assert not bool(real_candidates(torch.tensor([cast], dtype=dtype)).any())
    real = through(np.array([-50.0, -1.0, 0.0, 30.0]), dtype)
    assert real_candidates(real).all() and bool(real_candidates(torch.from_numpy(real)).all())
    if pad == PAD_SCORE:  # finite in all three, exact in fp32 and fp16 (bf16: -29952)
        assert np.isfinite(cast) and (cast == PAD_SCORE or name == "bf16")


@pytest.mark.parametrize("name", DTYPES)
def test_ranking_head_pads_with_the_one_value_and_softmax_gives_zero(name: str) -> None:
    from mtkd.model.heads import RankingHead

    dtype = DTYPES[name]
    torch.manual_seed(0)
    head = RankingHead(8, dropout=0.0).to(dtype).eval()
    mask = torch.tensor([[j < k for j in range(4)] for k in COUNTS])
    pooled = torch.randn(int(mask.sum()), 8).to(dtype)
    with torch.no_grad():
        scores = head(pooled, mask)
    assert scores.dtype == dtype
    assert torch.equal(scores[~mask], torch.full_like(scores[~mask], PAD_SCORE))
    assert torch.equal(real_candidates(scores), mask)
    probs = torch.softmax(scores.float(), -1)
    assert not probs.isnan().any()
    assert torch.equal(probs[~mask], torch.zeros_like(probs[~mask]))  # exactly 0
    # every row's real probabilities are the softmax of its real scores alone
    for i, k in enumerate(COUNTS):
        expected = by_hand_softmax(scores[i, :k].float().numpy())
        np.testing.assert_allclose(probs[i, :k].numpy(), expected, rtol=1e-5, atol=1e-7)
    # an all-padded row: uniform, never NaN, in softmax and log-softmax
    empty = torch.full((1, 4), PAD_SCORE, dtype=dtype).float()
    assert torch.allclose(torch.softmax(empty, -1), torch.full((1, 4), 0.25))
    assert torch.isfinite(torch.log_softmax(empty, -1)).all()


@pytest.mark.parametrize("kind", ["hard", "ce", "kl", "mse_logits"])
@pytest.mark.parametrize("name", DTYPES)
def test_losses_ignore_padded_candidates(name: str, kind: str) -> None:
    dtype = DTYPES[name]
    student = real_rows(1)
    teacher = real_rows(2)
    outputs = torch.from_numpy(pad_rows(student)).to(dtype).requires_grad_(True)
    labels = torch.tensor([2, 0, 1, 3])
    probs = pad_rows([by_hand_softmax(t) for t in teacher], fill=0.0)  # the student's arrays
    targets = TeacherTargets(probs=torch.from_numpy(probs),
                             logits=torch.from_numpy(pad_rows(teacher)))
    if kind == "hard":
        loss = hard_loss(RANKING, outputs, labels)
    else:
        loss = soft_loss(RANKING, outputs, targets, kind=kind)
    loss.backward()
    assert torch.isfinite(loss)
    q = [by_hand_softmax(through(s, dtype)) for s in student]
    if kind == "hard":
        expected = np.mean([-np.log(qi[y]) for qi, y in zip(q, labels.tolist(), strict=True)])
    elif kind == "mse_logits":
        diffs = np.concatenate([through(s, dtype) - t.astype(np.float32)
                                for s, t in zip(student, teacher, strict=True)])
        expected = np.mean(diffs ** 2)
    else:
        p = [by_hand_softmax(t) for t in teacher]
        rows = [-(pi * np.log(qi)).sum() + ((pi * np.log(pi)).sum() if kind == "kl" else 0.0)
                for pi, qi in zip(p, q, strict=True)]
        expected = np.mean(rows)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    grad = outputs.grad.float()
    padded = torch.from_numpy(pad_rows(student)) <= PAD_BELOW
    assert torch.equal(grad[padded], torch.zeros_like(grad[padded]))
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0, 1000.0])
@pytest.mark.parametrize("method", ["mean_prob", "mean_logit", "geometric"])
@pytest.mark.parametrize("name", DTYPES)
def test_soft_targets_give_padded_candidates_probability_zero(name: str, method: str,
                                                             temperature: float) -> None:
    dtype = DTYPES[name]
    members = [[through(r, dtype) for r in real_rows(seed)] for seed in (3, 4, 5)]
    uids = [f"u{i}" for i in range(len(COUNTS))]
    stacked = stack_members([dict(zip(uids, m, strict=True)) for m in members], uids, "qa")
    # padding written by an earlier mtkd (a member's stored outputs) counts as padding too
    stacked[1, 1, 1:] = -np.inf
    stacked[2, 1, 1:] = np.finfo(np.float32).min / 2
    targets = aggregate(stacked, uids, regression=False, method=method,
                        temperature=temperature)
    probs = targets.probs
    assert probs is not None and not np.isnan(probs).any()
    for i, k in enumerate(COUNTS):
        assert (probs[i, k:] == 0.0).all()  # exactly 0 at any temperature
        real = [m[i] for m in members]
        if method == "mean_prob":
            expected = np.mean([by_hand_softmax(r, temperature) for r in real], axis=0)
        elif method == "mean_logit":
            expected = by_hand_softmax(np.mean(np.asarray(real, np.float64), axis=0),
                                       temperature)
        else:
            logs = np.mean([np.log(by_hand_softmax(r, temperature)) for r in real], axis=0)
            expected = by_hand_softmax(logs)
        np.testing.assert_allclose(probs[i, :k], expected, rtol=1e-9, atol=1e-12)
        assert (targets.logits[i, k:] <= PAD_BELOW).all()


@pytest.mark.parametrize("name", DTYPES)
def test_ensemble_outputs_and_metrics_read_padding_as_absent(name: str) -> None:
    from mtkd.soft.stage import _ensemble_outputs

    dtype = DTYPES[name]
    rows = [through(r, dtype) for r in real_rows(6)]
    labels = np.array([1, 0, 1, 2])
    padded = pad_rows(rows)
    padded_in_dtype = through(padded, dtype)
    # by hand: rank of the right candidate among the row's own candidates
    ranks = [1 + int((r > r[y]).sum()) for r, y in zip(rows, labels, strict=True)]
    pairs = sum(COUNTS)
    wrong = sum(int(np.argmax(r) != y) for r, y in zip(rows, labels, strict=True))
    for scores in (padded, padded_in_dtype):
        assert mean_reciprocal_rank(scores, labels) == pytest.approx(
            100 * np.mean([1 / r for r in ranks]))
        assert pair_accuracy(scores, labels) == pytest.approx(100 * (pairs - 2 * wrong) / pairs)
    targets = aggregate(stack_members([dict(zip("abcd", rows, strict=True))], list("abcd"),
                                      "qa"), list("abcd"), regression=False,
                        method="mean_prob", temperature=1.0)
    out = _ensemble_outputs(targets, RANKING)
    for i, k in enumerate(COUNTS):
        assert (out[i, k:] == PAD_SCORE).all()
        np.testing.assert_allclose(out[i, :k], np.log(by_hand_softmax(rows[i])), rtol=1e-6)


@pytest.mark.parametrize("name", DTYPES)
def test_inference_core_pads_scores_with_the_one_value_and_probabilities_with_zero(
        name: str, tiny_encoder_dir: Path) -> None:
    from tiny import FOUR_TASKS
    from transformers import AutoTokenizer

    from mtkd.model.mtdnn import build_mtdnn
    from mtkd.model.predict import predict_texts

    model = build_mtdnn(tiny_encoder_dir, FOUR_TASKS, seed=3).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    queries = ["what is good", "who was bad", "the film", "why not"]
    words = ["good film", "bad plot", "the movie", "very poor", "not great"]
    candidates = [words[:k] for k in COUNTS]
    scores = predict_texts(model, tokenizer, "qa", queries, candidates, batch_size=3,
                           precision=name)
    probs = predict_texts(model, tokenizer, "qa", queries, candidates, batch_size=3,
                          precision=name, probs=True)
    assert scores.shape == probs.shape == (4, 4)
    assert not np.isnan(scores).any() and not np.isnan(probs).any()
    for i, k in enumerate(COUNTS):
        assert (scores[i, k:] == PAD_SCORE).all() and (probs[i, k:] == 0.0).all()
        # the same query alone (no padding in its batch) gives the same real scores
        alone = predict_texts(model, tokenizer, "qa", [queries[i]], [candidates[i]],
                              precision=name)
        assert alone.shape == (1, k)
        np.testing.assert_allclose(scores[i, :k], alone[0], atol=2e-2 if name != "fp32"
                                   else 1e-5)
        np.testing.assert_allclose(probs[i, :k], by_hand_softmax(scores[i, :k]),
                                   atol=1e-5)


def test_pad_rows_and_masked_softmax_by_hand() -> None:
    out = pad_rows([[1.0, 2.0], [3.0]], width=3)
    assert out.dtype == np.float32 and out.tolist() == [[1.0, 2.0, PAD_SCORE],
                                                        [3.0, PAD_SCORE, PAD_SCORE]]
    assert pad_rows([[0.5]], fill=0.0, width=2).tolist() == [[0.5, 0.0]]
    with pytest.raises(ValueError, match="more than the width 1"):
        pad_rows([[1.0, 2.0]], width=1)
    p = softmax(np.array([[0.0, np.log(3.0), PAD_SCORE], [PAD_SCORE] * 3]))
    np.testing.assert_allclose(p, [[0.25, 0.75, 0.0], [0.0, 0.0, 0.0]], atol=1e-15)
    assert np.isnan(softmax(np.array([0.0, np.nan, PAD_SCORE]))[:2]).all()  # NaN is not hidden
