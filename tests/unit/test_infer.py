"""The inference core: per-row outputs in the rows' order, whatever the batching, and the
callers (dev evaluation, the soft stage's actors) give exactly its outputs."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from tiny import FOUR_TASKS

from mtkd.data.collate import collate
from mtkd.model.infer import predict_rows
from mtkd.model.mtdnn import build_mtdnn
from mtkd.padding import PAD_SCORE

SPECS = {s.name: s for s in FOUR_TASKS}


def make_rows(task: str, n: int = 7, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)

    def seq() -> list[int]:
        return [2, *rng.integers(5, 25, size=int(rng.integers(2, 12))).tolist(), 3]

    rows = []
    for i in range(n):
        if task == "qa":
            ids = [seq() for _ in range(int(rng.integers(1, 4)))]
            types = [[0] * len(c) for c in ids]
        else:
            ids = seq()
            types = [0] * len(ids)
        rows.append({"uid": f"{task}-{i}", "input_ids": ids, "token_type_ids": types})
    return rows


def by_hand(model: torch.nn.Module, task: str, row: dict) -> np.ndarray:
    """One row alone (no padding at all), plain forward in fp32."""
    batch = collate([row])
    names = ("input_ids", "attention_mask", "token_type_ids", "candidate_mask")
    with torch.no_grad():
        return model(task, **{k: batch[k] for k in names if k in batch})[0].float().numpy()


@pytest.fixture(scope="module")
def model(tiny_encoder_dir: Path) -> torch.nn.Module:
    return build_mtdnn(tiny_encoder_dir, FOUR_TASKS, seed=3).eval()


@pytest.mark.parametrize("task", list(SPECS))
def test_outputs_in_row_order_equal_each_row_alone(model: torch.nn.Module, task: str) -> None:
    rows = make_rows(task)
    lengths = [sum(map(len, r["input_ids"])) if task == "qa" else len(r["input_ids"])
               for r in rows]
    model.train()
    done: list[int] = []
    sorted_out = predict_rows(model, task, rows, batch_size=3, lengths=lengths,
                              on_batch=done.append)
    assert model.training  # mode restored
    assert done == [3, 6, 7]
    in_order = predict_rows(model, task, rows, batch_size=3)
    for row, a, b in zip(rows, sorted_out, in_order, strict=True):
        expected = by_hand(model.eval(), task, row)
        assert a.dtype == np.float32
        if task == "sim":
            assert a.shape == ()
        if task == "qa":  # the row's own candidates only
            assert a.shape == (len(row["input_ids"]),)
        np.testing.assert_allclose(a, expected, atol=1e-5)
        np.testing.assert_allclose(b, expected, atol=1e-5)


def test_probabilities_are_the_softmax_of_the_scores(model: torch.nn.Module) -> None:
    for task in ("sent", "qa"):
        rows = make_rows(task, seed=1)
        scores = predict_rows(model, task, rows, batch_size=4)
        probs = predict_rows(model, task, rows, batch_size=4, probabilities=True)
        for s, p in zip(scores, probs, strict=True):
            e = np.exp(s.astype(np.float64) - s.max())
            np.testing.assert_allclose(p, e / e.sum(), atol=1e-6)


def test_evaluation_and_the_soft_stage_actor_give_the_core_outputs(
        model: torch.nn.Module) -> None:
    from mtkd.soft.predictor import MemberPredictor
    from mtkd.training.evaluate import predict_outputs

    for task in ("sent", "sim", "qa"):
        rows = make_rows(task, n=9, seed=2)
        columns = {k: [r[k] for r in rows] for k in ("uid", "input_ids", "token_type_ids")}
        columns["length"] = [len(r["input_ids"]) for r in rows]
        split = datasets.Dataset.from_dict(columns)
        evaluated = predict_outputs(model, SPECS[task], split, batch_size=4)
        actor = object.__new__(MemberPredictor)  # the model an actor would have loaded
        actor.model, actor.device, actor.precision = model, torch.device("cpu"), "fp32"
        per_row = actor._predict(task, rows)
        for i, row in enumerate(rows):
            expected = np.atleast_1d(by_hand(model, task, row))
            np.testing.assert_allclose(per_row[i], expected, atol=1e-5)
            got = evaluated[i]
            if task == "qa":
                k = len(row["input_ids"])
                assert (got[k:] == PAD_SCORE).all()
                got = got[:k]
            np.testing.assert_allclose(np.atleast_1d(got), expected, atol=1e-5)
