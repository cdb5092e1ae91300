"""The benchmark scripts' arithmetic on hand-made reports (bench/quality.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_figures_pair_seeds_on_test_and_dev() -> None:
    quality = _load("quality")
    report = {
        "student_runs": {
            "student-s0": {"average": 74.0, "test_average": 72.0, "seed": 0, "distill": True},
            "baseline-s0": {"average": 71.0, "test_average": 70.5, "seed": 0, "distill": False},
            "student-s1": {"average": 73.0, "test_average": 71.0, "seed": 1, "distill": True},
            "baseline-s1": {"average": 72.0, "test_average": 68.0, "seed": 1, "distill": False},
            "student-s2": {"average": 75.0, "test_average": 70.0, "seed": 2, "distill": True},
        },
        "members": [{"test": {"average": 78.0}}, {"test": {"average": 76.0}}],
        "ensemble": {"average": 79.0, "member_mean": 77.5, "test": {"average": 78.5}},
        "kd_vs_baseline": {"test": {"average": {"low": 0.4, "high": 3.9, "verdict": "v"}}},
        "speedup": 6.0,
    }
    test = quality.figures(report, "test")
    # seed 2 has no baseline twin: left out; (72-70.5 + 71-68) / 2
    assert test["kd_gain_per_seed"] == pytest.approx([1.5, 3.0])
    assert test["kd_gain"] == pytest.approx(2.25)
    assert test["kd_gain_ci_low"] == 0.4 and test["verdict"] == "v"
    assert test["ensemble_gain"] == pytest.approx(78.5 - 77.0)
    dev = quality.figures(report, "dev")
    assert dev["kd_gain"] == pytest.approx((3.0 + 1.0) / 2)
    assert dev["ensemble_gain"] == pytest.approx(1.5)
    assert dev["kd_gain_ci_low"] != dev["kd_gain_ci_low"]  # NaN: no dev interval given


def test_quality_fills_test_averages_of_older_reports_from_the_records(tmp_path: Path) -> None:
    quality = _load("quality")
    (tmp_path / "student" / "student-s0").mkdir(parents=True)
    (tmp_path / "student" / "student-s0" / "student.json").write_text('{"test_average": 71.5}')
    report = {"experiment": str(tmp_path), "student_runs": {
        "student-s0": {"average": 74.0, "seed": 0, "distill": True},
        "baseline-s0": {"average": 71.0, "test_average": 70.0, "seed": 0, "distill": False}}}
    filled = quality.with_test_averages(report)
    assert filled["student_runs"]["student-s0"]["test_average"] == 71.5
    assert filled["student_runs"]["baseline-s0"]["test_average"] == 70.0
