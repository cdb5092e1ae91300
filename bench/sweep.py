"""Ensemble-size sweep benchmark: how many teachers are worth it?

Runs (or resumes) ``mtkd sweep`` on a config (default: jobs/configs/quickstart.yaml, real
bundled tasks and encoder) over ``--sizes`` with the student seeds given, then reads
``sweep/sweep.json`` and prints the table and

    RESULT sweep_sizes <n>                  sizes swept
    RESULT sweep_plateau <k>                the size after which the student stops gaining
    RESULT sweep_student_gain <points>      student at the largest size minus at size 1
    RESULT sweep_cost_ratio <x>             cost of the largest size over size 1

Usage: python bench/sweep.py [--config C] [--sizes 1,2,4] [overrides...]
       python bench/sweep.py --sweep runs/quickstart/sweep/sweep.json   (no run)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config_parser, describe_machine, result, run_mtkd


def main() -> int:
    parser = config_parser(__doc__, "jobs/configs/quickstart.yaml")
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--sweep", help="read an existing sweep.json instead of running")
    args = parser.parse_args()
    print(describe_machine())
    if args.sweep:
        path = Path(args.sweep)
    else:
        run_mtkd("sweep", args.config, "--sizes", args.sizes, *args.overrides)
        from mtkd.config import load_config
        from mtkd.experiment import experiment_store

        config = load_config(args.config, args.overrides)
        path = Path(experiment_store(config, check=False).uri_of("sweep/sweep.json"))
    summary = json.loads(path.read_text())
    split = summary["split"]
    print(Path(path.parent / "sweep.md").read_text())
    rows = {r["size"]: r for r in summary["rows"]}
    first, last = rows[min(rows)], rows[max(rows)]
    gain = last["student"][split]["mean"] - first["student"][split]["mean"]
    result("sweep_sizes", str(len(rows)))
    result("sweep_plateau", str(summary["plateau"]))
    result("sweep_student_gain", gain, f"{split}, size {max(rows)} minus size {min(rows)}", 2)
    result("sweep_cost_ratio", last["cost"]["usd"] / max(first["cost"]["usd"], 1e-12), "", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
