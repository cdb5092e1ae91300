"""Quality benchmark: does distillation help, does the ensemble help, how much faster is
the student? Runs (or resumes) jobs/configs/benchmark.yaml and prints:

    RESULT kd_gain <points> (target >= 1.0)          KD student - baseline, test, mean over seeds
    RESULT kd_gain_ci_low <points> (target > 0)      low end of its 95% paired-bootstrap interval
    RESULT ensemble_gain <points> (target > 0)       ensemble - mean member, test
    RESULT student_speedup <x> (target >= 3)         student ex/s / ensemble ex/s

The figures are on the **test** split: every choice made with data (the members' and the
students' kept checkpoints, `keep: best`, ASHA, early stopping) looked at dev only, and the
config's hyper-parameters were fixed before its first run, so test is disjoint from
everything that selected a setting. Dev figures are printed alongside for reference.

Usage: python bench/quality.py [--config jobs/configs/benchmark.yaml] [overrides...]
       python bench/quality.py --report runs/benchmark/report/report.json   (no run)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config_parser, result, run_mtkd


def with_test_averages(report: dict) -> dict:
    """Fill ``student_runs[*].test_average`` from the runs' records (student.json under the
    report's experiment) for reports written before report.json carried it."""
    for name, run in report["student_runs"].items():
        if "test_average" not in run:
            record = Path(report["experiment"]) / "student" / name / "student.json"
            run["test_average"] = json.loads(record.read_text()).get("test_average")
    return report


def figures(report: dict, split: str = "test") -> dict[str, float]:
    """kd_gain (paired by seed), its interval's low end, ensemble_gain and student_speedup
    from a report.json, on ``split`` ("test" or "dev")."""
    key = "test_average" if split == "test" else "average"
    runs = report["student_runs"]
    gains = []
    for name, run in sorted(runs.items()):
        if run["distill"]:
            twin = runs.get(name.replace("student", "baseline", 1))
            if twin is not None and run.get(key) is not None and twin.get(key) is not None:
                gains.append(run[key] - twin[key])
    if split == "test":
        ensemble = report["ensemble"]["test"]["average"]
        member_mean = statistics.mean(m["test"]["average"] for m in report["members"])
    else:
        ensemble = report["ensemble"]["average"]
        member_mean = report["ensemble"]["member_mean"]  # the soft stage's one definition
    interval = ((report.get("kd_vs_baseline") or {}).get(split) or {}).get("average") or {}
    return {"kd_gain": statistics.mean(gains) if gains else float("nan"),
            "kd_gain_per_seed": gains,
            "kd_gain_ci_low": interval.get("low", float("nan")),
            "kd_gain_ci_high": interval.get("high", float("nan")),
            "verdict": interval.get("verdict", "no interval (no stored outputs)"),
            "ensemble_gain": ensemble - member_mean,
            "student_speedup": report["speedup"]}


def main() -> int:
    parser = config_parser(__doc__, "jobs/configs/benchmark.yaml")
    parser.add_argument("--report", help="read an existing report.json instead of running")
    args = parser.parse_args()
    if args.report:
        report_path = Path(args.report)
    else:
        run_mtkd("run", args.config, *args.overrides)
        from mtkd.config import load_config
        from mtkd.storage import Storage

        config = load_config(args.config, args.overrides)
        root = Storage.from_uri(config.storage_path).child(config.name)
        report_path = Path(root.uri_of("report/report.json"))
    report = with_test_averages(json.loads(report_path.read_text()))
    print(f"student runs: {json.dumps(report['student_runs'])}")
    dev, test = figures(report, "dev"), figures(report, "test")
    print(f"dev (reference): kd_gain {dev['kd_gain']:.2f} [{dev['kd_gain_ci_low']:+.2f}, "
          f"{dev['kd_gain_ci_high']:+.2f}], ensemble_gain {dev['ensemble_gain']:.2f}")
    print(f"test: kd gain per seed {[round(g, 2) for g in test['kd_gain_per_seed']]}; 95% "
          f"interval [{test['kd_gain_ci_low']:+.2f}, {test['kd_gain_ci_high']:+.2f}] (paired "
          f"bootstrap over test examples and seeds): {test['verdict']}")
    result("kd_gain", test["kd_gain"], "target >= 1.0", 2)
    result("kd_gain_ci_low", test["kd_gain_ci_low"], "target > 0", 2)
    result("ensemble_gain", test["ensemble_gain"], "target > 0", 2)
    result("student_speedup", test["student_speedup"], "target >= 3", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
