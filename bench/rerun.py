"""Re-running a finished experiment: mtkd's own time when everything is reusable.

Target (issue "Artifacts that know where they came from"): re-running a finished
quickstart takes <= 10 s of mtkd's own time before Ray is needed. Side by side, in one
run, interleaved: ``mtkd validate CONFIG`` (config loading and checks only) and
``mtkd run CONFIG`` on the finished experiment (prepare re-reads and re-hashes every
task's data, then every later stage is skipped by its lineage). Both are whole CLI
processes, so interpreter and import start-up are included. The run must not start Ray
(checked: no "Started a local Ray instance" line).

    .venv/bin/python bench/rerun.py [--config jobs/configs/quickstart.yaml] [--rounds 3]

The experiment must have finished once (``mtkd run CONFIG``); ``--setup`` runs it first.
Prints ``RESULT rerun_s``, ``RESULT validate_s`` and ``RESULT rerun_minus_validate_s``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import REPO, describe_machine, interleave, median, result


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mtkd", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"mtkd {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="jobs/configs/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--setup", action="store_true",
                        help="run the experiment once first (minutes)")
    args = parser.parse_args()
    print(f"# bench/rerun.py --config {args.config} --rounds {args.rounds}")
    print(f"# {describe_machine()}")
    if args.setup:
        started = time.time()
        _cli("run", args.config)
        print(f"# setup: the experiment ran in {time.time() - started:.0f} s")
    first = _cli("run", args.config)
    ran = [line for line in first.splitlines() if "starting:" in line
           and "[prepare]" not in line]
    if ran:
        raise SystemExit("the experiment is not finished (stages ran: "
                         f"{'; '.join(ran)}); re-run with --setup")
    if "Started a local Ray instance" in first:
        raise SystemExit("a fully reusable re-run started Ray")

    def timed_cli(*cli_args: str) -> float:
        started = time.perf_counter()
        _cli(*cli_args)
        return time.perf_counter() - started

    times = interleave({"validate": lambda: timed_cli("validate", args.config),
                        "rerun": lambda: timed_cli("run", args.config)}, args.rounds)
    rerun, validate = median(times["rerun"]), median(times["validate"])
    result("rerun_s", rerun, digits=2)
    result("validate_s", validate, digits=2)
    result("rerun_minus_validate_s", rerun - validate, digits=2)


if __name__ == "__main__":
    main()
