"""Dynamic padding of single, pair, regression and ranking rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtkd.data.collate import collate


def test_single_sentence() -> None:
    rows = [
        {"uid": "a", "input_ids": [101, 7, 102], "token_type_ids": [0, 0, 0], "length": 3,
         "label": 1},
        {"uid": "b", "input_ids": [101, 102], "token_type_ids": [0, 0], "length": 2, "label": 0},
    ]
    out = collate(rows, pad_id=9)
    assert out["input_ids"].tolist() == [[101, 7, 102], [101, 102, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert out["labels"].tolist() == [1, 0]
    for key in ("input_ids", "token_type_ids", "attention_mask", "labels"):
        assert out[key].dtype == torch.int64
    assert out["uids"] == ["a", "b"]
    assert "candidate_mask" not in out


def test_pair_padded_to_a_multiple() -> None:
    rows = [
        {"uid": 1, "input_ids": [101, 5, 102, 6, 6, 102], "token_type_ids": [0, 0, 0, 1, 1, 1],
         "label": 2},
        {"uid": 2, "input_ids": np.array([101, 5, 102, 6, 102]),
         "token_type_ids": np.array([0, 0, 0, 1, 1]), "label": 0},
    ]
    out = collate(rows, pad_to_multiple_of=8)
    assert out["input_ids"].shape == (2, 8)
    assert out["token_type_ids"][0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert out["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert out["attention_mask"].sum(1).tolist() == [6, 5]
    assert out["uids"] == ["1", "2"]


def test_regression() -> None:
    rows = [
        {"uid": "x", "input_ids": [1, 2], "token_type_ids": [0, 1], "label": 3.5},
        {"uid": "y", "input_ids": [1, 2, 3, 4], "token_type_ids": [0, 0, 1, 1], "label": 0.25},
    ]
    out = collate(rows, regression=True)
    assert out["labels"].dtype == torch.float32
    assert out["labels"].tolist() == [3.5, 0.25]
    assert out["input_ids"].shape == (2, 4)


def test_ranking() -> None:
    rows = [
        {"uid": "q1", "input_ids": [[1, 2, 3], [1, 4]], "token_type_ids": [[0, 0, 1], [0, 1]],
         "length": 3, "label": 1},
        {"uid": "q2", "input_ids": [[1, 5], [1, 6, 7, 8], [1, 9]],
         "token_type_ids": [[0, 1], [0, 1, 1, 1], [0, 1]], "length": 4, "label": 2},
    ]
    out = collate(rows, pad_id=0)
    assert out["input_ids"].shape == (2, 3, 4)
    assert out["token_type_ids"].shape == (2, 3, 4)
    assert out["attention_mask"].shape == (2, 3, 4)
    assert out["candidate_mask"].dtype == torch.bool
    assert out["candidate_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert out["input_ids"][0].tolist() == [[1, 2, 3, 0], [1, 4, 0, 0], [0, 0, 0, 0]]
    assert out["attention_mask"][0].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert out["token_type_ids"][1, 1].tolist() == [0, 1, 1, 1]
    assert out["labels"].dtype == torch.int64 and out["labels"].tolist() == [1, 2]


def test_without_labels_or_token_types() -> None:
    out = collate([{"uid": "t", "input_ids": [1, 2]}, {"uid": "u", "input_ids": [3]}])
    assert "labels" not in out
    assert out["token_type_ids"].tolist() == [[0, 0], [0, 0]]


def test_rejects_bad_batches() -> None:
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(ValueError, match="mixes"):
        collate([{"uid": "a", "input_ids": [1]}, {"uid": "b", "input_ids": [[1], [2]]}])
