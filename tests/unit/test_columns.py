"""Random row access to tokenized columns: the same rows as datasets' own indexing."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from mtkd.data.columns import RaggedColumn, random_access_columns

ROWS = {
    "uid": ["a", "b", "c", "d"],
    "input_ids": [[101, 7, 102], [101, 102], [101, 5, 6, 9, 102], [101, 3, 102]],
    "label": [1, None, 0, 2],
    "length": [3, 2, 5, 3],
    "candidates": [[[1, 2], [3]], [[4]], [[5, 6, 7]], [[8], [9]]],
}


def test_columns_match_the_dataset_rows_including_selections() -> None:
    full = datasets.Dataset.from_dict(ROWS)
    for split in (full, full.select([3, 0, 2]), full.shuffle(seed=1), full.select([1])):
        cols = random_access_columns(split, ["uid", "input_ids", "label", "length",
                                             "candidates", "missing"])
        assert "missing" not in cols
        assert isinstance(cols["input_ids"], RaggedColumn)
        assert len(cols["input_ids"]) == len(split)
        for i in range(len(split)):
            row = split[i]
            assert cols["uid"][i] == row["uid"] and cols["label"][i] == row["label"]
            assert cols["input_ids"][i].tolist() == row["input_ids"]
            assert cols["candidates"][i] == row["candidates"]  # lists of lists stay lists
        assert cols["input_ids"][-1].tolist() == split[len(split) - 1]["input_ids"]


def test_ragged_column_rejects_bad_indices() -> None:
    column = RaggedColumn(np.array([1, 2, 3]), np.array([0, 2, 3]))
    assert column[1].tolist() == [3] and len(column) == 2
    with pytest.raises(IndexError, match="row 2 out of range for 2 rows"):
        column[2]
    with pytest.raises(TypeError, match="one integer row index"):
        column[0:1]
