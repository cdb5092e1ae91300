"""Quality benchmark: does distillation help, does the ensemble help, how much faster is
the student? Runs (or resumes) jobs/configs/benchmark.yaml and prints:

    RESULT kd_gain <points> (target >= 1.0)          KD student - baseline, mean over seeds
    RESULT ensemble_gain <points> (target > 0)       ensemble - mean member
    RESULT student_speedup <x> (target >= 3)         student ex/s / ensemble ex/s

Usage: python bench/quality.py [--config jobs/configs/benchmark.yaml] [overrides...]
       python bench/quality.py --report runs/benchmark/report/report.json   (no run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def figures(report: dict) -> dict[str, float]:
    """kd_gain, ensemble_gain, student_speedup from a report.json."""
    runs = report["student_runs"]
    gains = []
    for name, run in runs.items():
        if run["distill"]:
            twin = runs.get(name.replace("student", "baseline", 1))
            if twin is not None:
                gains.append(run["average"] - twin["average"])
    member_mean = report["ensemble"]["member_mean"]  # the soft stage's one definition
    return {"kd_gain": statistics.mean(gains),
            "kd_gain_per_seed": gains,
            "ensemble_gain": report["ensemble"]["average"] - member_mean,
            "student_speedup": report["speedup"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "jobs/configs/benchmark.yaml"))
    parser.add_argument("--report", help="read an existing report.json instead of running")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.report:
        report_path = Path(args.report)
    else:
        command = [sys.executable, "-m", "mtkd", "run", args.config, *args.overrides]
        subprocess.run(command, check=True, cwd=REPO)
        from mtkd.config import load_config
        from mtkd.storage import Storage

        config = load_config(args.config, args.overrides)
        root = Storage.from_uri(config.storage_path).child(config.name)
        report_path = Path(root.uri_of("report/report.json"))
    report = json.loads(report_path.read_text())
    result = figures(report)
    print(f"student runs: {json.dumps(report['student_runs'])}")
    print(f"kd gain per seed: {[round(g, 2) for g in result['kd_gain_per_seed']]}")
    print(f"RESULT kd_gain {result['kd_gain']:.2f} (target >= 1.0)")
    dev = (report.get("kd_vs_baseline") or {}).get("dev")
    if dev:  # reports of mtkd with stored per-example outputs
        row = dev["average"]
        print(f"kd_gain 95% interval [{row['low']:+.2f}, {row['high']:+.2f}] (paired bootstrap "
              f"over dev examples and {dev['seeds']} seed(s)): {row['verdict']}")
    print(f"RESULT ensemble_gain {result['ensemble_gain']:.2f} (target > 0)")
    print(f"RESULT student_speedup {result['student_speedup']:.2f} (target >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
