"""Stage chaining with manifests: run, skip what is done, resume after a crash.

Each stage is a function ``run(ctx) -> dict`` that reads only what earlier stages wrote
and writes only under its own prefix. When it returns, its manifest
``manifests/<stage>.json`` is written atomically, last. A stage whose manifest carries
the same fingerprint (its config slice plus the fingerprints of the stages before it) is
skipped, so re-running after a crash or Ctrl-C resumes instead of redoing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mtkd import __version__
from mtkd.config import ExperimentConfig, config_to_yaml, stable_hash
from mtkd.errors import MtkdError
from mtkd.storage import Storage

log = logging.getLogger("mtkd")


@dataclass
class StageContext:
    """What a stage gets: the validated config and the experiment's storage root."""

    config: ExperimentConfig
    store: Storage


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    ``config_slice`` picks the part of the config the stage's result depends on; a change
    there (or in the output of any earlier stage) re-runs the stage.
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    config_slice: Callable[[ExperimentConfig], Any]
    description: str = ""
    enabled: Callable[[ExperimentConfig], bool] = lambda config: True
    """Whether the config needs this stage at all (e.g. no teachers when not distilling)."""
    always_run: bool = False
    """Run even when the manifest matches: for stages whose inputs live outside the
    config (user data files). Such a stage reuses its own work internally and reports
    an ``output_fingerprint``, so later stages re-run only if its output changed."""


@dataclass
class StageOutcome:
    """How one stage went in this invocation."""

    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)


def registered_stages() -> list[Stage]:
    """The pipeline's stages in order. Later stages are appended here as they land."""
    # Imported late, so that `mtkd validate` stays fast.
    from mtkd.report.stage import REPORT
    from mtkd.soft.stage import SOFT
    from mtkd.stages.prepare import PREPARE
    from mtkd.student.stage import STUDENT
    from mtkd.teachers.stage import TEACHERS

    return [PREPARE, TEACHERS, SOFT, STUDENT, REPORT]


def manifest_path(stage: str) -> str:
    return f"manifests/{stage}.json"


def read_manifest(store: Storage, stage: str) -> dict[str, Any] | None:
    """The stage's manifest, or None when the stage never finished."""
    path = manifest_path(stage)
    return store.read_json(path) if store.exists(path) else None


def select_stages(stages: list[Stage], only: str | None, from_stage: str | None,
                  to_stage: str | None = None) -> list[Stage]:
    """Apply ``--only`` / ``--from`` / ``--to``; unknown names are a user error listing valid
    ones. ``--from`` and ``--to`` combine into an inclusive range."""
    names = [s.name for s in stages]
    for flag, value in (("--only", only), ("--from", from_stage), ("--to", to_stage)):
        if value is not None and value not in names:
            valid = ", ".join(names) or "(none yet)"
            raise MtkdError(f"{flag} {value}: no such stage (fix: use one of: {valid})")
    if only is not None:
        if from_stage is not None or to_stage is not None:
            raise MtkdError("--only cannot be combined with --from/--to (fix: use --only "
                            "STAGE alone, or --from A --to B for a range)")
        return [s for s in stages if s.name == only]
    first = names.index(from_stage) if from_stage is not None else 0
    last = names.index(to_stage) if to_stage is not None else len(names) - 1
    if first > last:
        raise MtkdError(f"--from {from_stage} comes after --to {to_stage} (fix: stages run "
                        f"in the order {', '.join(names)})")
    return stages[first:last + 1]


def experiment_store(config: ExperimentConfig) -> Storage:
    """Storage rooted at ``<storage_path>/<name>``, checked to be reachable."""
    root = Storage.from_uri(config.storage_path)
    root.check_access()
    return root.child(config.name)


def run_pipeline(
    config: ExperimentConfig,
    *,
    only: str | None = None,
    from_stage: str | None = None,
    to_stage: str | None = None,
    force: bool = False,
    stages: list[Stage] | None = None,
) -> list[StageOutcome]:
    """Run the selected stages in order and return what each did.

    A selected stage is skipped when its manifest fingerprint matches, unless ``force``
    is set. Unselected stages still contribute their fingerprints, so ``--only student``
    after a teachers change re-runs the student.
    """
    all_stages = [s for s in (registered_stages() if stages is None else stages)
                  if s.enabled(config)]
    selected = {s.name for s in select_stages(all_stages, only, from_stage, to_stage)}
    store = experiment_store(config)
    store.write_atomic("config.yaml", config_to_yaml(config).encode())
    log.info("experiment %s at %s", config.name, store.uri)

    outcomes: list[StageOutcome] = []
    upstream: list[str] = []
    for stage in all_stages:
        fingerprint = stable_hash({"stage": stage.name, "config": stage.config_slice(config),
                                   "upstream": upstream})
        previous = read_manifest(store, stage.name)
        if stage.name not in selected:
            if previous is None and any(s.name in selected for s in all_stages[len(upstream):]):
                raise MtkdError(f"stage {stage.name!r} has not run yet, and later selected "
                                "stages need its output (fix: run without --only/--from, "
                                f"or with --from {stage.name})")
            upstream.append(_output_fingerprint(previous, fingerprint))
            continue
        if (not force and not stage.always_run and previous
                and previous.get("fingerprint") == fingerprint):
            upstream.append(_output_fingerprint(previous, fingerprint))
            log.info("[%s] done before (%s), skipping", stage.name, previous.get("finished_at"))
            outcomes.append(StageOutcome(stage.name, "skipped", 0.0, previous))
            continue
        log.info("[%s] starting: %s", stage.name, stage.description)
        started = time.time()
        result = stage.run(StageContext(config=config, store=store))
        seconds = time.time() - started
        manifest = {
            "stage": stage.name,
            "status": "complete",
            "fingerprint": fingerprint,
            "mtkd_version": __version__,
            "started_at": _iso(started),
            "finished_at": _iso(time.time()),
            "seconds": round(seconds, 3),
            **result,
        }
        store.write_json_atomic(manifest_path(stage.name), manifest)
        upstream.append(_output_fingerprint(manifest, fingerprint))
        log.info("[%s] finished in %.1f s", stage.name, seconds)
        outcomes.append(StageOutcome(stage.name, "ran", seconds, manifest))
    return outcomes


def _output_fingerprint(manifest: dict[str, Any] | None, fingerprint: str) -> str:
    """What later stages chain on: the stage's reported output, else its input fingerprint."""
    if manifest and manifest.get("fingerprint") == fingerprint:
        return str(manifest.get("output_fingerprint", fingerprint))
    return fingerprint


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat(timespec="seconds")
