"""The job entry: what runs inside a Ray job (``jobs/pipeline.py``, ``jobs/stage.py``).

:func:`job_main` parses the entry script's arguments and calls :func:`run_job`, which
joins the job's cluster (``RAY_ADDRESS`` is set by the job supervisor), runs the stages
and prints the run summary that ``mtkd run`` prints (:func:`mtkd.pipeline.run_summary`).
The client side, ``mtkd submit``, is :mod:`mtkd.jobs.client`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mtkd.errors import MtkdError

log = logging.getLogger("mtkd")


def joins_existing_cluster() -> bool:
    """True where ``ray.init()`` without an address joins a running cluster: inside a Ray
    job (the job supervisor sets ``RAY_ADDRESS``) or wherever the user exported it."""
    return bool(os.environ.get("RAY_ADDRESS"))


def job_config(config_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Load the config; inside a Ray job, drop settings that only a local Ray accepts.

    ``ray.init`` refuses ``num_cpus``, ``num_gpus`` and ``object_store_memory`` when it
    joins an existing cluster, which it does inside a job (``RAY_ADDRESS`` is set).
    """
    from mtkd.config import load_config

    config = load_config(config_path, list(overrides))
    ray_config = config.ray
    local_only = {"num_cpus": ray_config.num_cpus, "num_gpus": ray_config.num_gpus,
                  "object_store_memory_gb": ray_config.object_store_memory_gb}
    if (config.ray.address is None and joins_existing_cluster()
            and any(v is not None for v in local_only.values())):
        log.info("joining the Ray cluster at RAY_ADDRESS (as inside a Ray job): ignoring "
                 "local-Ray settings %s",
                 ", ".join(f"ray.{k}={v}" for k, v in local_only.items() if v is not None))
        config = dataclasses.replace(config, ray=dataclasses.replace(
            ray_config, num_cpus=None, num_gpus=None, object_store_memory_gb=None))
    return config


def run_job(config_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
            only: str | None = None, from_stage: str | None = None,
            to_stage: str | None = None, force: bool = False) -> list[Any]:
    """Run the pipeline (or the selected stages) and print where the results are."""
    from mtkd.pipeline import run_pipeline, run_summary

    config = job_config(config_path, overrides)
    outcomes = run_pipeline(config, only=only, from_stage=from_stage, to_stage=to_stage,
                            force=force)
    print(run_summary(config, outcomes, "mtkd job"))
    sys.stdout.flush()
    return outcomes


def job_main(argv: list[str] | None, *, stage_required: bool) -> int:
    """Shared argument parsing of jobs/pipeline.py and jobs/stage.py."""
    parser = argparse.ArgumentParser(
        prog="jobs/stage.py" if stage_required else "jobs/pipeline.py",
        description="Ray job entrypoint: run " + ("one stage" if stage_required else
                                                  "the mtkd pipeline") + " for a config.")
    parser.add_argument("--config", required=True, help="experiment YAML")
    if stage_required:
        parser.add_argument("--stage", required=True, help="the stage to run")
    else:
        parser.add_argument("--from", dest="from_stage", help="start at this stage")
        parser.add_argument("--to", dest="to_stage", help="stop after this stage")
    parser.add_argument("--force", action="store_true", help="re-run finished stages")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="[mtkd] %(message)s", stream=sys.stderr)
    try:
        run_job(args.config, args.overrides, only=getattr(args, "stage", None),
                from_stage=getattr(args, "from_stage", None),
                to_stage=getattr(args, "to_stage", None), force=args.force)
    except MtkdError as err:
        print(f"mtkd: error: {err}", file=sys.stderr)
        return 2
    return 0
