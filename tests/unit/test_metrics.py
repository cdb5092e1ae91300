"""GLUE-style metrics against values worked out by hand, predictions, scores, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtkd.metrics import (
    METRICS,
    accuracy,
    average_score,
    compute_task_metrics,
    f1,
    majority_baseline,
    mcc,
    pearson,
    predictions_from_outputs,
    spearman,
    task_score,
)
from mtkd.tasks.spec import TaskSpec

# scipy's ConstantInputWarning or sklearn's UndefinedMetricWarning would mean a case is
# not handled explicitly.
pytestmark = pytest.mark.filterwarnings("error")

BINARY = TaskSpec(name="sst2", type="classification", labels=("negative", "positive"))
THREE = TaskSpec(name="mnli", type="pair_classification",
                 labels=("entailment", "neutral", "contradiction"))
COLA = TaskSpec(name="cola", type="classification", labels=("bad", "good"), metrics=("mcc",))
STSB = TaskSpec(name="stsb", type="regression")
QNLI = TaskSpec(name="qnli", type="ranking")


def a(*values: float) -> np.ndarray:
    return np.array(values)


def one_hot(classes: list[int], width: int) -> np.ndarray:
    out = np.zeros((len(classes), width))
    out[np.arange(len(classes)), classes] = 1.0
    return out


# ------------------------------------------------------------------------------ metrics


def test_metric_names_and_float_results() -> None:
    assert set(METRICS) == {"accuracy", "f1", "mcc", "pearson", "spearman", "p@1"}
    for fn in METRICS.values():
        assert type(fn(a(0, 1, 1, 0), a(0, 1, 0, 1))) is float


def test_accuracy_is_scaled_to_100() -> None:
    assert accuracy(a(0, 1, 1, 0), a(0, 1, 0, 0)) == 75.0  # 3 of 4
    assert accuracy(a(2, 1), a(2, 1)) == 100.0


def test_binary_f1_of_class_one() -> None:
    # TP=2 FP=1 FN=2: precision 2/3, recall 1/2, F1 = 2TP/(2TP+FP+FN) = 4/7
    assert f1(a(1, 1, 0, 0, 1, 0), a(1, 1, 1, 1, 0, 0)) == pytest.approx(400 / 7)
    # swapping the roles of the classes changes binary F1: TP=1 FP=2 FN=1 → 2/5
    assert f1(a(0, 0, 1, 1, 0, 1), a(0, 0, 0, 0, 1, 1)) == pytest.approx(40.0)


def test_multiclass_macro_f1() -> None:
    # class 0: TP1 FP1 FN1 → 1/2; class 1: TP2 FP1 FN0 → 4/5; class 2: TP1 FP0 FN1 → 2/3
    got = f1(a(0, 1, 1, 1, 2, 0), a(0, 0, 1, 1, 2, 2))
    assert got == pytest.approx(100 * (1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_f1_uses_known_class_count() -> None:
    preds, gold = a(0, 1, 0, 0), a(0, 1, 1, 0)
    assert f1(preds, gold, num_classes=2) == pytest.approx(200 / 3)  # class 1: TP1 FN1
    # a 3-class task whose dev slice only holds 0/1 is still macro: (4/5 + 2/3) / 2
    assert f1(preds, gold, num_classes=3) == pytest.approx(100 * (4 / 5 + 2 / 3) / 2)


def test_mcc_by_the_2x2_formula() -> None:
    preds = a(1, 1, 1, 0, 0, 1, 0, 0)
    gold = a(1, 1, 1, 1, 1, 0, 0, 0)
    tp, tn, fp, fn = 3, 2, 1, 2
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert mcc(preds, gold) == pytest.approx(100 * expected)
    assert mcc(gold, gold) == pytest.approx(100.0)
    assert mcc(1 - gold, gold) == pytest.approx(-100.0)


def test_pearson_by_hand() -> None:
    # x deviations (-1, 0, 1), y = (1, 2, 4) deviations (-4/3, -1/3, 5/3):
    # r = 3 / (sqrt(2) * sqrt(42) / 3) = 9 / sqrt(84)
    assert pearson(a(1, 2, 3), a(1, 2, 4)) == pytest.approx(100 * 9 / math.sqrt(84))
    assert pearson(a(1, 2, 3), a(3, 2, 1)) == pytest.approx(-100.0)


def test_spearman_with_ties() -> None:
    # ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): r = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman(a(1, 2, 2, 3), a(1, 2, 3, 4)) == pytest.approx(100 * math.sqrt(0.9))
    # monotone but not linear: Spearman 100, Pearson below
    assert spearman(a(1, 2, 3, 4), a(1, 4, 9, 100)) == pytest.approx(100.0)
    assert pearson(a(1, 2, 3, 4), a(1, 4, 9, 100)) < 100.0


@pytest.mark.parametrize("fn", [pearson, spearman])
def test_correlation_of_a_constant_is_zero(fn) -> None:
    assert fn(a(2.5, 2.5, 2.5), a(1, 2, 3)) == 0.0
    assert fn(a(1, 2, 3), a(4, 4, 4)) == 0.0
    assert fn(a(1.0), a(2.0)) == 0.0


def test_constant_class_predictions() -> None:
    gold = a(0, 1, 1, 0)
    assert mcc(a(1, 1, 1, 1), gold) == 0.0
    assert mcc(a(0, 0, 0, 0), gold) == 0.0
    assert f1(a(0, 0, 0, 0), gold) == 0.0  # never predicts the positive class
    assert f1(a(1, 1, 1, 1), gold) == pytest.approx(200 / 3)  # P 1/2, R 1
    assert accuracy(a(1, 1, 1, 1), gold) == 50.0


def test_metrics_reject_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy(a(0, 1, 1), a(0, 1))
    with pytest.raises(ValueError, match="no examples"):
        pearson(a(), a())


# ------------------------------------------------------------------------- predictions


def test_predictions_classification_argmax() -> None:
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(predictions_from_outputs(BINARY, logits), [1, 0, 1])
    probs = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    got = predictions_from_outputs(THREE, probs)
    np.testing.assert_array_equal(got, [2, 0])
    assert got.shape == (2,) and got.dtype == np.int64


def test_predictions_regression_squeeze() -> None:
    for outputs in (np.array([[1.5], [2.0], [0.25]], dtype=np.float32), a(1.5, 2.0, 0.25)):
        got = predictions_from_outputs(STSB, outputs)
        assert got.shape == (3,) and got.dtype == np.float64
        np.testing.assert_allclose(got, [1.5, 2.0, 0.25])


def test_predictions_ranking_with_padding() -> None:
    scores = np.array([[0.1, 0.9, -np.inf], [2.0, -np.inf, -np.inf], [-1.0, -3.0, -0.5]])
    np.testing.assert_array_equal(predictions_from_outputs(QNLI, scores), [1, 0, 2])


@pytest.mark.parametrize(("spec", "outputs"), [
    (BINARY, a(0.1, 0.9)),
    (BINARY, np.zeros((2, 0))),
    (QNLI, np.zeros((2, 3, 1))),
    (STSB, np.zeros((4, 2))),
])
def test_predictions_reject_bad_shapes(spec: TaskSpec, outputs: np.ndarray) -> None:
    with pytest.raises(ValueError, match=spec.name):
        predictions_from_outputs(spec, outputs)


# ------------------------------------------------------------------------ task metrics


def test_task_metrics_use_type_defaults_and_spec_override() -> None:
    outputs = one_hot([0, 1, 1, 0], 2)
    gold = a(0, 1, 0, 0)
    got = compute_task_metrics(BINARY, outputs, gold)
    assert got == {"accuracy": 75.0, "f1": pytest.approx(200 / 3)}  # TP1 FP1 FN0
    assert set(compute_task_metrics(COLA, outputs, gold)) == {"mcc"}
    assert set(compute_task_metrics(STSB, a(1, 2, 3), a(1, 2, 4))) == {"pearson", "spearman"}
    assert set(compute_task_metrics(QNLI, np.eye(3), a(0, 1, 1))) == {"p@1", "mrr"}


def test_task_f1_follows_the_label_count() -> None:
    outputs, gold = one_hot([0, 1, 0, 0], 3), a(0, 1, 1, 0)
    assert compute_task_metrics(THREE, outputs, gold)["f1"] == pytest.approx(
        100 * (4 / 5 + 2 / 3) / 2)
    assert compute_task_metrics(BINARY, outputs[:, :2], gold)["f1"] == pytest.approx(200 / 3)


def test_unlabelled_rows_are_ignored() -> None:
    # rows 1 and 3 are unlabelled and predicted "wrong"; only rows 0 and 2 count
    got = compute_task_metrics(BINARY, one_hot([1, 1, 0, 0], 2), a(1, -1, 0, -1))
    assert got["accuracy"] == 100.0
    got = compute_task_metrics(STSB, a(1, 9, 2, 3), a(1, np.nan, 2, 4))
    assert got["pearson"] == pytest.approx(100 * 9 / math.sqrt(84))
    scores = np.array([[0.0, 1.0, -np.inf], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert compute_task_metrics(QNLI, scores, a(1, -1, 0))["p@1"] == 50.0


def test_nothing_labelled_or_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="no labelled"):
        compute_task_metrics(BINARY, one_hot([0, 1], 2), a(-1, -1))
    with pytest.raises(ValueError, match="no labelled"):
        compute_task_metrics(STSB, a(1, 2), a(np.nan, np.nan))
    with pytest.raises(ValueError, match="3 outputs for 2 labels"):
        compute_task_metrics(BINARY, one_hot([0, 1, 1], 2), a(0, 1))
    bogus = TaskSpec(name="x", type="classification", labels=("a", "b"), metrics=("bleu",))
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        compute_task_metrics(bogus, one_hot([0, 1], 2), a(0, 1))


# ------------------------------------------------------------------------------ scores


def test_task_score_is_the_mean_of_its_metrics() -> None:
    assert task_score({"pearson": 80.0, "spearman": 90.0}) == 85.0
    assert task_score({"mcc": 40.0}) == 40.0
    with pytest.raises(ValueError):
        task_score({})


def test_average_score_is_the_mean_of_task_scores() -> None:
    per_task = {"mrpc": {"accuracy": 90.0, "f1": 80.0}, "cola": {"mcc": 40.0}}
    assert average_score(per_task) == 62.5  # (85 + 40) / 2, not the mean of 3 metrics
    with pytest.raises(ValueError):
        average_score({})


# --------------------------------------------------------------------------- baselines


def test_majority_baseline_classification() -> None:
    got = majority_baseline(BINARY, a(0, 1, 1, -1, 1), a(1, 0, 1, 1, -1))
    assert got["accuracy"] == 75.0
    assert got["f1"] == pytest.approx(600 / 7)  # TP3 FP1 FN0
    assert majority_baseline(COLA, a(1, 1, 0), a(1, 0, 1)) == {"mcc": 0.0}


def test_majority_baseline_ties_and_absent_classes() -> None:
    # tie between 0 and 2 → the lower class; class 1 never appears in train
    got = majority_baseline(THREE, a(2, 0, 0, 2), a(0, 1, 2, 0))
    assert got["accuracy"] == 50.0


def test_majority_baseline_regression_and_ranking() -> None:
    got = majority_baseline(STSB, a(1.0, 3.0, np.nan), a(0.0, 2.0, 5.0))
    assert got == {"pearson": 0.0, "spearman": 0.0}
    got = majority_baseline(QNLI, a(2, 2, 0, -1), a(2, 1, 2, -1))
    assert got["p@1"] == pytest.approx(200 / 3)


def test_majority_baseline_needs_train_labels() -> None:
    with pytest.raises(ValueError, match="no labelled training"):
        majority_baseline(BINARY, a(-1, -1), a(0, 1))
    with pytest.raises(ValueError, match="no labelled training"):
        majority_baseline(STSB, a(np.nan), a(0.5, 1.0))


def test_evaluate_leaves_out_unlabelled_rows_and_tasks(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Test splits may be partly or wholly unlabelled (-1, NaN): scored on the labelled
    rows; a task with none is left out of the result and the average."""
    import datasets
    import torch

    from mtkd.metrics import labelled
    from mtkd.tasks.spec import TaskSpec
    from mtkd.training import evaluate as evaluation

    cls = TaskSpec("cls", "classification", ("a", "b"), ("accuracy",), 8)
    reg = TaskSpec("reg", "regression", (), ("pearson",), 8)
    assert labelled(cls, np.array([0, -1, 1])).tolist() == [True, False, True]
    assert labelled(reg, np.array([0.5, np.nan])).tolist() == [True, False]

    outputs = {"cls": np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]]),
               "reg": np.array([[0.1], [0.2]])}

    def fake_predict(model: torch.nn.Module, spec: TaskSpec, split: datasets.Dataset,
                     **kwargs: object) -> np.ndarray:
        return outputs[spec.name]

    splits = {"cls": datasets.Dataset.from_dict({"label": [0, -1, 1, 1]}),
              "reg": datasets.Dataset.from_dict({"label": [np.nan, np.nan]})}
    monkeypatch.setattr(evaluation, "predict_outputs", fake_predict)
    result = evaluation.evaluate(torch.nn.Linear(1, 1), {"cls": cls, "reg": reg}, splits)
    # labelled rows 0, 2, 3: predictions 0, 1, 0 vs labels 0, 1, 1 -> 2 of 3
    assert result["tasks"] == {"cls": {"accuracy": pytest.approx(200 / 3)}}
    assert result["average"] == pytest.approx(200 / 3)


def test_ranking_is_scored_per_query_with_p_at_1_and_mrr() -> None:
    """Ranking tasks report P@1 and MRR (not an "accuracy" comparable with pair accuracy);
    values by hand: right candidates ranked 1, 2, 3 (a padded candidate never outranks)."""
    from mtkd.metrics import mean_reciprocal_rank

    scores = np.array([[0.9, 0.1, -np.inf],   # right 0: rank 1
                       [0.5, 0.7, 0.1],       # right 0: rank 2
                       [0.2, 0.3, 0.1]])      # right 2: rank 3
    gold = a(0, 0, 2)
    assert mean_reciprocal_rank(scores, gold) == pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 3)
    got = compute_task_metrics(QNLI, scores, gold)
    assert set(got) == {"p@1", "mrr"}
    assert got["p@1"] == pytest.approx(100 / 3)
    # unlabelled queries are left out of both
    got = compute_task_metrics(QNLI, np.vstack([scores, [[0.0, 1.0, 2.0]]]), a(0, 0, 2, -1))
    assert got["mrr"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 3)


# ----------------------------------------------------- pair accuracy (pairwise in origin)

PAIRWISE = TaskSpec(name="qnli_ranked", type="ranking", pairwise_origin=True)
F32_PAD = np.finfo(np.float32).min / 2
F16_PAD = float(np.finfo(np.float16).min) / 2  # the ranking head's masked value in fp16


@pytest.mark.parametrize(("scores", "gold", "want"), [
    # one query, 2 candidates, top right: both pairs right
    ([[2.0, 1.0]], [0], 100.0),
    # one query, 2 candidates, top wrong: both pairs wrong
    ([[1.0, 2.0]], [0], 0.0),
    # 4 candidates, top (index 3) wrong: the right one and the top one wrong, 2 of 4 right
    ([[0.5, 0.1, 0.2, 0.9]], [0], 50.0),
    # a tie for the top: the first tied candidate is the prediction (np.argmax, MT-DNN)
    ([[0.7, 0.7, 0.1]], [0], 100.0),
    ([[0.7, 0.7, 0.1]], [1], 100 / 3),
    # unequal candidate counts, padding of every kind mtkd writes: 2 + 3 + 1 + 4 = 10 real
    # pairs; query 1 (3 candidates) is wrong -> 10 - 2 = 8 right
    ([[0.9, 0.1, -np.inf, -np.inf],
      [0.2, 0.8, 0.1, F32_PAD],
      [0.3, F16_PAD, F16_PAD, F16_PAD],
      [0.1, 0.2, 0.3, 0.4]], [0, 2, 0, 3], 80.0),
    # a lone candidate is always right; negative logits are real candidates
    ([[-5.0, F32_PAD], [-3.0, -2.0]], [0, 0], 100 * (1 + 0) / 3),
])
def test_pair_accuracy_by_hand(scores: list, gold: list, want: float) -> None:
    from mtkd.metrics import pair_accuracy

    assert pair_accuracy(np.array(scores), np.array(gold)) == pytest.approx(want)


def test_pair_accuracy_refuses_labels_outside_the_real_candidates() -> None:
    from mtkd.metrics import pair_accuracy

    with pytest.raises(ValueError, match="real candidate"):
        pair_accuracy(np.array([[0.2, -np.inf]]), np.array([1]))
    with pytest.raises(ValueError, match="real candidate"):
        pair_accuracy(np.array([[0.2, 0.1]]), np.array([2]))
    with pytest.raises(ValueError, match="scores"):
        pair_accuracy(np.array([0.2, 0.1]), np.array([0, 1]))


def test_pairwise_origin_reports_pair_accuracy_outside_the_score() -> None:
    """p@1, mrr and pair_accuracy for a pairwise-in-origin ranking task; the score stays
    the mean of p@1 and mrr; unlabelled queries are left out of all three."""
    scores = np.array([[0.9, 0.1, -np.inf],   # right 0: top right, 2 pairs right
                       [0.5, 0.7, 0.1],       # right 0: rank 2, 1 of 3 pairs right
                       [0.0, 1.0, 2.0]])      # unlabelled
    got = compute_task_metrics(PAIRWISE, scores, a(0, 0, -1))
    assert set(got) == {"p@1", "mrr", "pair_accuracy"}
    assert got["p@1"] == pytest.approx(50.0)
    assert got["mrr"] == pytest.approx(100 * (1 + 1 / 2) / 2)
    assert got["pair_accuracy"] == pytest.approx(100 * 3 / 5)
    assert task_score(got) == pytest.approx((50.0 + 75.0) / 2)
    assert task_score(got) == task_score(compute_task_metrics(QNLI, scores, a(0, 0, -1)))
    assert average_score({"q": got}) == pytest.approx(62.5)
    # a ranking task not pairwise in origin reports no pair accuracy
    assert "pair_accuracy" not in compute_task_metrics(QNLI, scores, a(0, 0, -1))


def test_task_spec_stores_pairwise_origin_only_when_set() -> None:
    """Specs stored before the flag existed read back as not pairwise, and a spec without
    the flag writes the same JSON as before."""
    assert "pairwise_origin" not in QNLI.to_json()
    assert PAIRWISE.to_json()["pairwise_origin"] is True
    assert TaskSpec.from_json(PAIRWISE.to_json()) == PAIRWISE
    assert TaskSpec.from_json(QNLI.to_json()) == QNLI
