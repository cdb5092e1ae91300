"""Task kinds carry their own behaviour: each type's layout, checked against values
computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtkd.padding import PAD_SCORE, real_candidates
from mtkd.tasks.spec import TaskSpec
from mtkd.tasks.types import TASK_TYPES, task_type


def fake_encode(first: list[str], second: list[str] | None
                ) -> tuple[list[list[int]], list[list[int]]]:
    """Token i of a text is its i-th word's length; the pair's part has type 1."""
    ids, types = [], []
    for i, text in enumerate(first):
        a = [len(w) for w in text.split()]
        b = [len(w) for w in second[i].split()] if second is not None else []
        ids.append([101, *a, 102, *b])
        types.append([0] * (len(a) + 2) + [1] * len(b))
    return ids, types


def test_shapes_and_classes_of_every_type() -> None:
    expected = {  # name: (num_outputs(3), output_shape(3), has_classes, takes_text_pair)
        "classification": (3, (3,), True, False),
        "pair_classification": (3, (3,), True, True),
        "regression": (1, (), False, None),
        "ranking": (1, (0,), False, False),
    }
    assert set(TASK_TYPES) == set(expected)
    for name, (outputs, shape, classes, pair) in expected.items():
        kind = task_type(name)
        assert (kind.num_outputs(3), kind.output_shape(3), kind.has_classes,
                kind.takes_text_pair) == (outputs, shape, classes, pair), name
    with pytest.raises(KeyError, match="valid: classification"):
        task_type("tagging")


def test_one_sequence_encodes_texts_and_pairs() -> None:
    layout = task_type("pair_classification").layout
    out = layout.encode(fake_encode, ["a bb", "ccc"], ["dddd", "e ff"])
    assert out == {"input_ids": [[101, 1, 2, 102, 4], [101, 3, 102, 1, 2]],
                   "token_type_ids": [[0, 0, 0, 0, 1], [0, 0, 0, 1, 1]], "length": [5, 5]}
    single = task_type("classification").layout.encode(fake_encode, ["a bb"], None)
    assert single["input_ids"] == [[101, 1, 2, 102]] and single["length"] == [4]


def test_query_candidates_encode_one_sequence_per_candidate() -> None:
    layout = task_type("ranking").layout
    out = layout.encode(fake_encode, ["q qq", "x"], [["a", "bbb ccc"], ["dd"]])
    assert out["input_ids"] == [[[101, 1, 2, 102, 1], [101, 1, 2, 102, 3, 3]],
                                [[101, 1, 102, 2]]]
    assert out["token_type_ids"][0][1] == [0, 0, 0, 0, 1, 1]
    assert out["length"] == [6, 4]  # the longest candidate
    with pytest.raises(ValueError, match="candidates"):
        layout.encode(fake_encode, ["q"], None)


def test_stack_pads_missing_candidates_with_the_fill() -> None:
    rows = [np.array([1.0, 2.0]), np.array([3.0]), np.array([5.0, 6.0, 7.0])]
    ranking = task_type("ranking").layout
    np.testing.assert_array_equal(ranking.stack(rows, -9.0), [[1, 2, -9], [3, -9, -9], [5, 6, 7]])
    default = ranking.stack(rows)  # scores: PAD_SCORE, recognised as padding
    assert default.dtype == np.float32 and default[1, 1] == PAD_SCORE
    assert real_candidates(default).tolist() == [[True, True, False], [True, False, False],
                                                 [True, True, True]]
    plain = task_type("classification").layout.stack([np.array([1.0, 2.0]),
                                                      np.array([3.0, 4.0])])
    np.testing.assert_array_equal(plain, [[1, 2], [3, 4]])
    scores = task_type("regression").layout.stack([np.array(1.0), np.array(2.0)])
    np.testing.assert_array_equal(scores, [1, 2])
    assert scores.shape == (2,)


def test_sequences_round_trip() -> None:
    one, cands = task_type("classification").layout, task_type("ranking").layout
    assert one.sequences([1, 2]) == [[1, 2]] and one.from_sequences([[1, 2]]) == [1, 2]
    assert cands.sequences([[1], [2, 3]]) == [[1], [2, 3]]
    assert cands.from_sequences([[1], [2, 3]]) == [[1], [2, 3]]


@pytest.mark.parametrize("pad", [PAD_SCORE, -np.inf, float(np.finfo(np.float32).min / 2)])
def test_masks_best_candidates_and_metric_outputs(pad: float) -> None:
    # every padding value mtkd wrote, now or before, is recognised
    out = torch.tensor([[1.0, pad], [2.0, 3.0]])
    assert task_type("ranking").layout.real_mask(out).tolist() == [[True, False],
                                                                   [True, True]]
    assert task_type("classification").layout.real_mask(out).all()
    best = task_type("ranking").layout.best_candidates(np.array([[0.1, 0.9], [2.0, pad]]))
    assert best.tolist() == [1, 0] and best.dtype == np.int64
    assert task_type("ranking").layout.best_candidates(np.zeros((0, 0))).shape == (0,)
    assert task_type("classification").layout.best_candidates(np.zeros((2, 2))) is None
    probs = np.array([[0.25, 0.75, 0.0]])
    logits = np.array([[0.0, np.log(3.0), pad]])
    logs = task_type("ranking").layout.metric_outputs(probs, logits)
    np.testing.assert_allclose(logs[0, :2], np.log([0.25, 0.75]))
    assert logs[0, 2] == PAD_SCORE
    assert task_type("classification").layout.metric_outputs(probs, None) is probs


def test_text_column_and_input_problems() -> None:
    one, cands = task_type("pair_classification").layout, task_type("ranking").layout
    assert one.text_column(["query", "text"]) == "text"
    assert cands.text_column(["query", "text"]) == "query"
    assert cands.text_column(["text", "candidates"]) == "text"
    assert cands.text_column(["question"]) == "query"
    assert one.input_problem("nli", ["a"], None, True) == \
        "task 'nli' classifies sentence pairs: give text_pairs"
    assert one.input_problem("nli", ["a"], ["b", "c"], True) == "got 1 texts but 2 text_pairs"
    assert one.input_problem("sent", ["a"], None, False) is None
    assert "ranks candidates" in cands.input_problem("qa", ["a"], None, True)
    assert "non-empty list" in cands.input_problem("qa", ["a"], ["b"], True)
    assert cands.input_problem("qa", ["a"], [["b", "c"]], True) is None


def test_pairs_as_examples_gives_one_candidate_per_row() -> None:
    inputs = {"input_ids": torch.tensor([[1, 2], [3, 4]]),
              "attention_mask": torch.ones(2, 2, dtype=torch.long),
              "token_type_ids": torch.zeros(2, 2, dtype=torch.long)}
    out = task_type("ranking").layout.pairs_as_examples(inputs)
    assert out["input_ids"].shape == (2, 1, 2) and out["candidate_mask"].tolist() == [[True],
                                                                                      [True]]
    assert task_type("classification").layout.pairs_as_examples(inputs) is inputs


def test_spec_reports_pair_accuracy_only_for_candidates_of_pairwise_origin() -> None:
    assert TaskSpec("qnli", "ranking", pairwise_origin=True).scores_pairs
    assert not TaskSpec("qnli", "ranking").scores_pairs
    assert not TaskSpec("sent", "classification", ("a", "b"), pairwise_origin=True).scores_pairs
