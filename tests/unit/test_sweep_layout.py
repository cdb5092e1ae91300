"""The ensemble-size sweep's pieces: sizes, the shared layout, the plateau, the cost."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mtkd.config import config_from_dict
from mtkd.errors import MtkdError, StorageError
from mtkd.experiment import experiment_store, role_of, shared_across_sizes, size_view_dir
from mtkd.storage import Storage
from mtkd.sweep import (
    Prices,
    SizeResult,
    _seed_stats,
    main_split,
    parse_sizes,
    plateau_size,
    render_markdown,
    size_config,
)


@pytest.mark.parametrize(("text", "sizes"), [("1,2,4,8", [1, 2, 4, 8]), ("8,1,2,2", [1, 2, 8]),
                                             (" 3 ", [3]), ("1, 16", [1, 16])])
def test_parse_sizes(text: str, sizes: list[int]) -> None:
    assert parse_sizes(text) == sizes


@pytest.mark.parametrize("text", ["0", "1,-2", "1,,2", "two", "1.5", "", "\u00b2", "1,\u0663"])
def test_parse_sizes_refuses(text: str) -> None:
    with pytest.raises(MtkdError, match="not a positive whole number"):
        parse_sizes(text)


@pytest.mark.parametrize(("rel", "shared"), [
    ("data/rte/train.parquet", True), ("data", True),
    ("tensorboard/m000-abc/events", True),
    ("teachers/m000/model/model.safetensors", True), ("teachers/rte.m001/member.json", True),
    ("teachers/init/model", True), ("teachers/_tune/run/trial", True),
    ("teachers/m000/.member.json.tmp-1", True),
    ("teachers/teachers.json", False), ("teachers/ensemble.json", False),
    ("teachers/.ensemble.json.tmp-ab", False), ("teachers", False),
    ("soft_targets/_members/m000/done.json", True), ("soft_targets/rte/train.parquet", False),
    ("soft_targets/rte/targets.json", False),
    ("student/baseline/student.json", True), ("student/baseline-s3/final/config.json", True),
    ("student/_train/student-s0-abc/checkpoint", True),
    ("student/student-s0/student.json", False), ("student/student/final", False),
    ("report/report.json", False), ("manifests/soft.json", False), ("config.yaml", False),
    ("sweep/sweep.json", False)])
def test_shared_across_sizes(rel: str, shared: bool) -> None:
    assert shared_across_sizes(rel) is shared


def test_view_routes_reads_writes_and_children(tmp_path: Path) -> None:
    base = Storage.from_uri(str(tmp_path)).child("exp")
    view = base.view("sweep/size-2", shared_across_sizes)
    view.write_json_atomic("teachers/m000/member.json", {"m": 0})
    view.write_json_atomic("teachers/ensemble.json", {"e": 2})
    view.write_text("soft_targets/toy/train.parquet", "x")
    assert (tmp_path / "exp/teachers/m000/member.json").is_file()
    assert (tmp_path / "exp/sweep/size-2/teachers/ensemble.json").is_file()
    assert (tmp_path / "exp/sweep/size-2/soft_targets/toy/train.parquet").is_file()
    assert not (tmp_path / "exp/teachers/ensemble.json").exists()
    assert view.read_json("teachers/m000/member.json") == {"m": 0}
    assert view.uri_of("teachers/m000") == str(tmp_path / "exp/teachers/m000")
    assert view.uri == str(tmp_path / "exp/sweep/size-2")
    # a child of a mixed folder keeps the rule; a child of a shared one is plain
    teachers = view.child("teachers")
    assert teachers.full_path("ensemble.json") == view.full_path("teachers/ensemble.json")
    assert teachers.read_json("m000/member.json") == {"m": 0}
    member = view.child("teachers", "m000")
    assert member.uri == str(tmp_path / "exp/teachers/m000")
    assert member.child("model").uri == str(tmp_path / "exp/teachers/m000/model")
    # listing a private folder lists the view's side only
    assert view.list("teachers") == ["ensemble.json"]
    with pytest.raises(StorageError, match="views do not nest"):
        view.view("x", shared_across_sizes)
    with pytest.raises(StorageError, match="needs a sub-folder"):
        base.view("", shared_across_sizes)


def test_experiment_store_of_a_size(tmp_path: Path) -> None:
    config = config_from_dict({"name": "e", "storage_path": str(tmp_path),
                               "tasks": [{"name": "rotten_tomatoes"}],
                               "teachers": {"size": 4, "min_members": 3}})
    assert experiment_store(config).uri == str(tmp_path / "e")
    two = size_config(config, 2)
    assert (two.teachers.size, two.teachers.min_members, two.sweep_view) == (2, 2, True)
    assert size_config(config, 8).teachers.min_members == 3
    view = experiment_store(two)
    assert view.uri == str(tmp_path / "e" / size_view_dir(2))
    assert view.uri_of("data/rotten_tomatoes") == str(tmp_path / "e/data/rotten_tomatoes")
    # where an experiment lives is operational: it enters no lineage
    assert role_of("sweep_view") == ["operational"]


def _row(size: int, means: list[float], usd: float = 1.0) -> SizeResult:
    stats = _seed_stats(means)
    return SizeResult(size=size, members=[f"m{i:03d}" for i in range(size)],
                      ensemble={"dev": 80.0 + size, "test": 79.0 + size, "member_mean": 78.0},
                      student={"dev": stats, "test": stats, "seeds": list(range(len(means)))},
                      baseline={"dev": _seed_stats([70.0, 71.0]),
                                "test": _seed_stats([70.0, 71.0]), "seeds": [0, 1]},
                      cost={"cpu_hours": usd / Prices().cpu_hour_usd, "gpu_hours": 0.0,
                            "usd": usd, "members_hours": 0.0, "predictions_hours": 0.0,
                            "students_hours": 0.0}, view=f"/x/size-{size}")


def test_seed_stats_against_numpy_by_hand() -> None:
    stats = _seed_stats([70.0, 72.0, 77.0])
    assert stats["mean"] == pytest.approx(73.0)
    assert stats["std"] == pytest.approx(math.sqrt(((3**2) + 1 + 4**2) / 2))
    assert _seed_stats([5.0])["std"] is None and _seed_stats([])["n"] == 0


def test_plateau_size_by_hand() -> None:
    # means 70, 74, 74.5 (sd 1 over 2 seeds: SE^2 = 0.5 each, 2*sqrt(1) = 2): 1 -> 2 gains 4
    # (> 2), 2 -> 4 gains 0.5 (<= 2): the plateau is 2
    rows = [_row(1, [69.0, 71.0]), _row(2, [73.0, 75.0]), _row(4, [73.5, 75.5])]
    assert plateau_size(rows, "test") == 2
    # a late jump beyond the noise moves it: 4 gains 3 over 2
    rows = [_row(1, [69.0, 71.0]), _row(2, [73.0, 75.0]), _row(4, [76.0, 78.0])]
    assert plateau_size(rows, "test") == 4
    # a gain within the noise of a later size counts as none (1 -> 4 is 1.9 <= 2)
    rows = [_row(1, [69.0, 71.0]), _row(2, [68.0, 70.0]), _row(4, [70.9, 72.9])]
    assert plateau_size(rows, "test") == 1
    # one seed: no noise estimate, any rise is a gain
    rows = [_row(1, [70.0]), _row(2, [70.1]), _row(4, [70.1])]
    assert plateau_size(rows, "test") == 2
    assert plateau_size([], "test") is None


def test_main_split_and_markdown() -> None:
    rows = [_row(1, [69.0, 71.0], usd=0.5), _row(2, [73.0, 75.0], usd=1.25)]
    assert main_split(rows) == "test"
    rows[1].student["test"] = _seed_stats([])
    assert main_split(rows) == "dev"
    summary = {"experiment": "/x", "split": "dev", "seeds": [0, 1], "plateau": 1,
               "prices": {"cpu_hour_usd": 0.048, "gpu_hour_usd": 3.06}}
    text = render_markdown(rows, summary)
    assert "| 1 | 81.00 | 80.00 | 78.00 | 70.00 ± 1.41 | 70.00 ± 1.41 | 70.50 ± 0.71 |" in text
    assert text.rstrip().endswith("[size 2](size-2/report/report.md)")
    assert "| 2 |" in text and "| 1.25 |" in text and "| 0.5000 |" in text
    assert "stops gaining after size 1" in text
    # the largest size as the plateau: still gaining, said so
    rows3 = [*rows, _row(4, [80.0, 81.0])]
    text = render_markdown(rows3, {**summary, "plateau": 4})
    assert "No plateau within the sizes swept" in text and "stops gaining" not in text
