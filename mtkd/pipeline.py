"""Stage chaining with manifests: run, skip what is done, resume after a crash.

Each stage is a function ``run(ctx) -> dict`` that reads only what earlier stages wrote
and writes only under its own prefix. When it returns, its manifest
``manifests/<stage>.json`` is written atomically, last. A stage whose manifest carries
the same lineage (its declared config values plus the outputs of the stages before it,
see :mod:`mtkd.experiment`) is skipped, so re-running after a crash or Ctrl-C resumes
instead of redoing.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mtkd import __version__
from mtkd.config import ExperimentConfig, config_to_yaml, stable_hash
from mtkd.errors import MtkdError
from mtkd.experiment import (
    CONFIG_FILE,
    REPORT_DIR,
    Stage,
    StageContext,
    experiment_store,
    manifest_path,
    read_manifest,
    stage_values,
)
from mtkd.pretrained import pin_encoders
from mtkd.storage import Storage

__all__ = ["Stage", "StageContext", "StageOutcome", "experiment_store", "read_manifest",
           "registered_stages", "run_pipeline", "run_summary", "select_stages", "stale_stages"]

log = logging.getLogger("mtkd")


@dataclass
class StageOutcome:
    """How one stage went in this invocation."""

    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)


def _lazy(target: str) -> Callable[[StageContext], dict[str, Any]]:
    """A stage's run function, imported when the stage runs: a re-run that skips every
    stage never imports torch, Ray or transformers for them."""
    module, name = target.split(":")

    def run(ctx: StageContext) -> dict[str, Any]:
        return getattr(importlib.import_module(module), name)(ctx)

    run.__qualname__ = target
    return run


def _distills(config: ExperimentConfig) -> bool:
    """Teachers (and their soft targets) exist only to be distilled."""
    return config.student.distill


def _prepare_slice(config: ExperimentConfig) -> dict[str, Any]:
    """prepare's declared values, plus the encoders other than encoder.path whose
    tokenizations it writes (mtkd.tokenizations; nothing more with one encoder)."""
    from mtkd.tokenizations import prepare_slice_extra

    return {**stage_values("prepare", config), **prepare_slice_extra(config)}


def registered_stages() -> list[Stage]:
    """The pipeline's stages in order (their config slices: mtkd.experiment.ARTIFACTS;
    prepare's also names the other encoders it tokenizes for)."""
    return [
        Stage("prepare", _lazy("mtkd.data.stage:run_prepare"), _prepare_slice,
              "load, check and tokenize every task's splits (once per tokenizer)",
              always_run=True, check=_lazy("mtkd.data.stage:check_prepare")),
        Stage.declared("teachers", _lazy("mtkd.teachers.stage:run_teachers"),
                       "train the teacher ensemble with Ray Tune", enabled=_distills),
        Stage.declared("soft", _lazy("mtkd.soft.stage:run_soft"),
                       "ensemble inference with Ray Data and soft-target averaging",
                       enabled=_distills),
        Stage.declared("student", _lazy("mtkd.student.stage:run_student"),
                       "distill the multi-task student with Ray Train + DeepSpeed"),
        Stage.declared("report", _lazy("mtkd.report.stage:run_report"),
                       "metrics, speed and artifacts of members, ensemble and students"),
    ]


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

    A stage's lineage is the hash of its config slice and the outputs of the stages
    before it. A selected stage is skipped when its manifest records the same lineage;
    otherwise it runs, reusing each of its artifacts whose own lineage still matches
    (:func:`mtkd.experiment.reusable`). ``force`` runs every selected stage and has it
    rebuild all its artifacts from scratch (``StageContext.rebuild``). An unselected stage that
    later selected stages read must be current: if its recorded lineage differs from the
    one the config gives now, this raises MtkdError (exit 2) naming it and the fix.

    Hugging Face Hub encoders are first pinned to the commit they resolve to
    (:func:`mtkd.pretrained.pin_encoders`): every lineage, and the saved config.yaml,
    records ``org/name@<sha>``, so a moved branch rebuilds what read the old commit.
    """
    all_stages = [s for s in (registered_stages() if stages is None else stages)
                  if s.enabled(config)]
    selected = {s.name for s in select_stages(all_stages, only, from_stage, to_stage)}
    store = experiment_store(config)
    config = pin_encoders(config)  # Hub ids -> org/name@<commit>: lineages see the commit
    log.info("experiment %s at %s", config.name, store.uri)
    _check_selection(config, store, all_stages, selected)
    if stages is None:  # the real stages read the encoders: tokenizers and positions
        from mtkd.encoder_checks import check_encoders

        check_encoders(config, "config")
    checked = {s.name: s.check(StageContext(config=config, store=store))
               for s in all_stages if s.name in selected and s.check is not None}
    store.write_atomic(CONFIG_FILE, config_to_yaml(config).encode())

    outcomes: list[StageOutcome] = []
    upstream: list[str] = []
    for stage in all_stages:
        lineage = _stage_lineage(stage, config, upstream)
        previous = read_manifest(store, stage.name)
        current = previous is not None and _recorded_lineage(previous) == lineage
        if stage.name not in selected:
            upstream.append(_output(previous, lineage))
            continue
        partial = current and previous.get("status") == "partial"
        if not force and not stage.always_run and current and not partial:
            upstream.append(_output(previous, lineage))
            log.info("[%s] done before (%s), skipping", stage.name, previous.get("finished_at"))
            outcomes.append(StageOutcome(stage.name, "skipped", 0.0, previous))
            continue
        if partial and not force:
            log.info("[%s] finished before with failures (%s); running it again to retry "
                     "them, reusing what finished", stage.name,
                     ", ".join(previous.get("failed") or []) or "see its manifest")
        log.info("[%s] starting: %s", stage.name, stage.description)
        started = time.time()
        result = stage.run(StageContext(config=config, store=store,
                                        checked=checked.get(stage.name), rebuild=force))
        seconds = time.time() - started
        manifest = {
            "stage": stage.name,
            # a stage that finished usably but with failures (teacher members) says so:
            # the next run retries it instead of skipping it
            "status": "partial" if result.get("failed") else "complete",
            "lineage": lineage,
            "mtkd_version": __version__,
            "started_at": _iso(started),
            "finished_at": _iso(time.time()),
            "seconds": round(seconds, 3),
            **result,
        }
        store.write_json_atomic(manifest_path(stage.name), manifest)
        upstream.append(_output(manifest, lineage))
        log.info("[%s] finished in %.1f s", stage.name, seconds)
        outcomes.append(StageOutcome(stage.name, "ran", seconds, manifest))
    return outcomes


def _check_selection(config: ExperimentConfig, store: Storage, stages: list[Stage],
                     selected: set[str]) -> None:
    """Before anything is written: every unselected stage that a selected later stage
    reads has run, and is current (MtkdError naming it and the fix otherwise)."""
    status = stale_stages(config, store, stages)
    for index, stage in enumerate(stages):
        needed = any(s.name in selected for s in stages[index + 1:])
        if stage.name in selected or not needed or stage.name not in status:
            continue
        if status[stage.name] == "not run yet":
            raise MtkdError(f"stage {stage.name!r} has not run yet, and later selected "
                            "stages need its output (fix: run without --only/--from, "
                            f"or with --from {stage.name})")
        raise MtkdError(
            f"stage {stage.name!r} is stale: its output was built from other settings or "
            "data than the config gives now, and later selected stages would read it (fix: "
            f"run with --from {stage.name}, or without --only/--from; the run summary "
            "lists what is stale)")


def stale_stages(config: ExperimentConfig, store: Storage,
                 stages: list[Stage] | None = None) -> dict[str, str]:
    """Each enabled stage that would not be skipped now: {name: why} ("not run yet", or
    "stale"). A stage that always runs (prepare) is judged by its config and tokenizer
    only: its data files are re-read whenever it runs."""
    config = pin_encoders(config)
    status: dict[str, str] = {}
    upstream: list[str] = []
    for stage in [s for s in (registered_stages() if stages is None else stages)
                  if s.enabled(config)]:
        lineage = _stage_lineage(stage, config, upstream)
        previous = read_manifest(store, stage.name)
        if previous is None:
            status[stage.name] = "not run yet"
        elif _recorded_lineage(previous) != lineage:
            status[stage.name] = "stale"
        upstream.append(_output(previous, lineage))
    return status


def run_summary(config: ExperimentConfig, outcomes: list[StageOutcome], title: str) -> str:
    """Where the results are, after ``mtkd run`` or a Ray job: each stage's manifest, the
    report, and the enabled stages still to run (or stale)."""
    store = experiment_store(config)
    lines = [f"\n{title} {config.name}: results in {store.uri}",
             f"  config   {store.uri_of(CONFIG_FILE)}"]
    for outcome in outcomes:
        lines.append(f"  {outcome.name:<9} {outcome.status:<8} {outcome.seconds:8.1f} s   "
                     f"manifest {store.uri_of(manifest_path(outcome.name))}")
    report = f"{REPORT_DIR}/report.md"
    if store.exists(report):
        lines.append(f"  report   {store.uri_of(report)}")
    pending = stale_stages(config, store)
    for why in ("not run yet", "stale"):
        names = [name for name, reason in pending.items() if reason == why]
        if names:
            lines.append(f"  {why}: {', '.join(names)}")
    return "\n".join(lines)


def _stage_lineage(stage: Stage, config: ExperimentConfig, upstream: list[str]) -> str:
    """A stage's manifest lineage: its config slice and the outputs of earlier stages."""
    return stable_hash({"stage": stage.name, "config": stage.config_slice(config),
                        "upstream": upstream})


def _recorded_lineage(manifest: dict[str, Any]) -> str | None:
    return manifest.get("lineage")


def _output(manifest: dict[str, Any] | None, lineage: str) -> str:
    """What later stages chain on: the stage's reported output, else its own lineage."""
    if manifest and manifest.get("lineage") == lineage:
        return str(manifest.get("output_fingerprint", lineage))
    return lineage


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat(timespec="seconds")
