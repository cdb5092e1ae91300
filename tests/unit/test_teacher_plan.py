"""Ensemble member planning: grid, list, random; stable under scaling; per-task shape."""

from __future__ import annotations

import pytest

from mtkd.config import config_from_dict
from mtkd.records import MemberRecord
from mtkd.teachers.plan import SEED_STRIDE, member_lineage, plan_members
from mtkd.teachers.stage import short_tasks


def config(**teachers):
    return config_from_dict({"name": "e", "seed": 10,
                             "tasks": [{"name": "trec"}, {"name": "rotten_tomatoes"},
                                       {"name": "sms_spam", "teacher": False}],
                             "teachers": teachers})


def test_grid_cycles_with_shifted_seeds() -> None:
    members = plan_members(config(size=5, variation={"strategy": "grid", "seed": [1, 2],
                                                     "dropout": [0.1, 0.3]}))
    assert [(m.seed, m.dropout) for m in members] == [
        (1, 0.1), (1, 0.3), (2, 0.1), (2, 0.3), (1 + SEED_STRIDE, 0.1)]
    assert [m.name for m in members] == ["m000", "m001", "m002", "m003", "m004"]
    assert all(m.tasks == ("trec", "rotten_tomatoes") for m in members)  # no sms_spam


def test_grid_without_seeds_uses_experiment_seed_plus_index() -> None:
    members = plan_members(config(size=3, variation={"strategy": "grid"}))
    assert [m.seed for m in members] == [10, 11, 12]


def test_list_strategy_takes_members_verbatim_with_defaults() -> None:
    members = plan_members(config(size=2, training={"learning_rate": 3e-5}, variation={
        "strategy": "list", "members": [{"seed": 7}, {"learning_rate": 1e-4, "epochs": 1}]}))
    assert (members[0].seed, members[0].learning_rate) == (7, 3e-5)
    assert (members[1].seed, members[1].learning_rate, members[1].epochs) == (11, 1e-4, 1.0)


def test_random_members_do_not_change_when_the_ensemble_grows() -> None:
    variation = {"strategy": "random", "sample_seed": 3, "dropout": [0.05, 0.1, 0.2],
                 "learning_rate": [1e-5, 3e-5, 5e-5, 1e-4]}
    small = plan_members(config(size=3, variation=variation))
    large = plan_members(config(size=50, variation=variation))
    assert large[:3] == small
    assert len({(m.dropout, m.learning_rate) for m in large}) > 3


def test_per_task_shape_names_members_by_task() -> None:
    members = plan_members(config(size=2, shape="per_task"))
    assert [m.name for m in members] == ["trec.m000", "trec.m001", "rotten_tomatoes.m000",
                                         "rotten_tomatoes.m001"]
    assert members[2].tasks == ("rotten_tomatoes",)


def test_fingerprint_tracks_member_data_and_training() -> None:
    cfg = config(size=2)
    member = plan_members(cfg)[0]
    base = member_lineage(member, cfg, {"trec": "a", "rotten_tomatoes": "b"})
    assert base == member_lineage(member, cfg, {"trec": "a", "rotten_tomatoes": "b",
                                                    "sms_spam": "zzz"})
    assert base != member_lineage(member, cfg, {"trec": "a2", "rotten_tomatoes": "b"})
    other = config(size=2, training={"batch_size": 8})
    assert base != member_lineage(plan_members(other)[0], other,
                                      {"trec": "a", "rotten_tomatoes": "b"})


def test_fingerprint_tracks_data_parallel_workers() -> None:
    data = {"trec": "a", "rotten_tomatoes": "b"}
    fingerprints = {}
    for workers in (1, 2, 4):
        cfg = config(size=1, workers_per_member=workers)
        fingerprints[workers] = member_lineage(plan_members(cfg)[0], cfg, data)
    assert len(set(fingerprints.values())) == 3  # the global batch differs


# ------------------------------------------------------------------------ min_members per task
@pytest.mark.parametrize(("planned", "finished", "minimum", "short"), [
    # multitask: every member covers every task
    ([("a", "b")] * 3, [("a", "b")] * 2, 2, {}),
    ([("a", "b")] * 3, [("a", "b")], 2, {"a": 1, "b": 1}),
    # per_task: 4 members finished, 2 x min_members in all, but b has only 1
    ([("a",)] * 3 + [("b",)] * 3, [("a",)] * 3 + [("b",)], 2, {"b": 1}),
    # a task whose members all failed
    ([("a",)] * 2 + [("b",)] * 2, [("a",)] * 2, 1, {"b": 0}),
    ([("a",)] * 2 + [("b",)] * 2, [("a",), ("b",)], 1, {}),
])
def test_min_members_holds_per_task(planned: list, finished: list, minimum: int,
                                    short: dict) -> None:
    tasks = [t for member in planned for t in member]
    summaries = [MemberRecord(lineage=f"l{i}", content=None, name=f"m{i}", tasks=list(member))
                 for i, member in enumerate(finished)]
    assert short_tasks(minimum, tasks, summaries) == short
