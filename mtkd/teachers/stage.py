"""Stage ``teachers``: train the ensemble members as parallel Ray Tune trials.

Finished members (``teachers/<member>/member.json`` with a matching lineage) are
reused, so raising ``teachers.size`` trains only the new ones and a re-run after a crash
trains only what had not finished. Ray Tune runs one trial per remaining member, as
many at once as ``resources_per_member`` and ``max_concurrent`` allow, retries a failed
trial ``max_failures`` times from its last checkpoint, and optionally stops weak
members early with ASHA. With ``workers_per_member`` > 1 a trial only drives a Ray Train
run whose workers ask for ``resources_per_member`` each (see :mod:`mtkd.teachers.member`).
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from mtkd.config import ExperimentConfig, config_to_dict, stable_hash
from mtkd.data.prepared import encoder_tokenization, task_lineages
from mtkd.errors import MtkdError
from mtkd.experiment import (
    TEACHER_TUNE_RUNS,
    TEACHERS_SUMMARY,
    StageContext,
    member_record,
    outputs_fingerprint,
    reusable,
)
from mtkd.precision import stage_precision
from mtkd.raycluster import ensure_ray, probe_work_device
from mtkd.records import MemberRecord
from mtkd.resources import ray_resources, tune_resources
from mtkd.storage import Storage
from mtkd.teachers.member import DRIVER_MEMORY, train_member_trial, train_run_name
from mtkd.teachers.plan import Member, init_member, member_lineage, plan_members
from mtkd.tokenizations import member_reads_encoder

log = logging.getLogger("mtkd")


def finished_member(store: Storage, member: Member, lineage: str) -> MemberRecord | None:
    """The member's record if it finished with this lineage, else None."""
    return reusable(store, member_record(member.name), lineage, MemberRecord)


def _describe(record: MemberRecord) -> str:
    metrics = " ".join(f"{task}[" + ",".join(f"{k}={v:.1f}" for k, v in m.items()) + "]"
                       for task, m in record.metrics.items())
    return (f"{record.name}: average {record.average or 0.0:.2f} {metrics} "
            f"({record.wall_seconds:.0f} s, {record.train_examples_per_s:.0f} ex/s)")


def _progress_callback(store: Storage, total: int, already: int) -> Any:
    from ray import tune

    class MemberProgress(tune.Callback):
        """One line per finished or failed member, with a running count."""

        def __init__(self) -> None:
            self.done = already

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            if not result.get("finished") and not result.get("time_checkpoint"):
                name = trial.config["trial"]["member"]["name"]
                log.info("[teachers] %s step %s: dev score %.2f", name, result.get("step"),
                         result.get("score", float("nan")))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                              **info: Any) -> None:
            self.done += 1
            name = trial.config["trial"]["member"]["name"]
            path = member_record(name)
            text = (_describe(MemberRecord.from_json(store.read_json(path)))
                    if store.exists(path) else name)
            log.info("[teachers] %d/%d members done: %s", self.done, total, text)

        def on_trial_error(self, iteration: int, trials: list, trial: Any,
                           **info: Any) -> None:
            log.warning("[teachers] member %s failed for good after its retries: %s",
                        trial.config["trial"]["member"]["name"], trial.error_file or "see Ray logs")

    return MemberProgress()


def _run_trials(ctx: StageContext, todo: list[tuple[Member, str]], total: int,
                already: int) -> dict[str, str]:
    """Train ``todo`` with Ray Tune; returns {member name: error} for failed members."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    config, store = ctx.config, ctx.store
    teachers = config.teachers
    if teachers.workers_per_member > 1:
        # The trial only drives a TorchTrainer, whose workers ask for resources_per_member.
        resources: dict[str, float] = {"cpu": 0, "memory": DRIVER_MEMORY}
    else:
        resources = tune_resources(ray_resources(teachers.resources_per_member))
    experiment = config_to_dict(config, redact=False)
    space = [{"experiment": experiment, "member": m.to_json(), "lineage": fp,
              "fresh": ctx.rebuild,  # --force: from step 0, whatever was there
              # Absolute: Tune runs trials in their own working directories.
              "storage": Storage.from_uri(config.storage_path).uri} for m, fp in todo]
    # ASHA's time axis is the member's evaluations, not Tune's report count: time
    # checkpoints (teachers.checkpoint_minutes) report too, and a member continued by a new
    # trial starts Tune's count again.
    scheduler = (ASHAScheduler(metric="score", mode="max", grace_period=1,
                               time_attr="evaluations")
                 if teachers.early_stopping == "asha" else None)
    run_name = "run-" + stable_hash(sorted(fp for _, fp in todo))[:10]
    tuner = tune.Tuner(
        tune.with_resources(train_member_trial, resources),
        param_space={"trial": tune.grid_search(space)},
        tune_config=tune.TuneConfig(max_concurrent_trials=teachers.max_concurrent,
                                    scheduler=scheduler, reuse_actors=teachers.reuse_actors,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=run_name, storage_path=store.full_path(TEACHER_TUNE_RUNS),
            storage_filesystem=store.filesystem, verbose=teachers.verbose,
            failure_config=tune.FailureConfig(max_failures=teachers.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_progress_callback(store, total, already)]),
    )
    try:
        results = tuner.fit()
    finally:  # whatever Tune did with SIGINT, Ctrl-C interrupts mtkd again
        signal.signal(signal.SIGINT, signal.default_int_handler)
    failed = {}
    for result in results:
        if result.error is not None:
            name = result.config["trial"]["member"]["name"]
            failed[name] = f"{type(result.error).__name__}: {result.error}"
    return failed


def _trial_dirname(trial: Any) -> str:
    """``<member>-<lineage[:10]>-<trial id>``: how a later run finds this trial's
    checkpoints (:func:`mtkd.teachers.member.earlier_checkpoint`)."""
    spec = trial.config["trial"]
    return train_run_name(Member.from_json(spec["member"]), spec["lineage"]) + "-" + trial.trial_id


def _preflight(config: ExperimentConfig) -> None:
    """Before the first trial: the precision the members will train in, on the device a
    member gets (refused with exit 2 if it cannot run there, warned if it runs badly)."""
    stage_precision("teachers", "teachers.training.precision",
                    config.teachers.training.precision,
                    probe_work_device(config.ray, config.teachers.resources_per_member))
    ensure_ray(config.ray)


def run_teachers(ctx: StageContext) -> dict[str, Any]:
    """Train the members that are not finished yet; summarise all of them."""
    config, store = ctx.config, ctx.store
    started = time.time()
    checked = False
    lineages = task_lineages(store)  # encoder.path's tokenization
    init = init_member(config)
    if init is not None:
        init_fp = member_lineage(init, config, lineages)
        if ctx.rebuild or finished_member(store, init, init_fp) is None:
            log.info("[teachers] training the shared multi-task model the per-task members "
                     "start from")
            _preflight(config)
            checked = True
            failed = _run_trials(ctx, [(init, init_fp)], 1, 0)
            if finished_member(store, init, init_fp) is None:
                raise MtkdError(f"the shared multi-task model (teachers/init) failed: "
                                f"{failed.get(init.name, 'no member.json written')} (fix: see "
                                "the error above, or set teachers.init_from_multitask: false)")
        lineages = {**lineages, init.name: init_fp}
    members = plan_members(config)
    by_encoder: dict[str, dict[str, str]] = {}

    def data_of(member: Member) -> dict[str, str]:
        """The lineages of the tokenization the member reads (its encoder's), and of the
        shared model it may start from."""
        encoder = member_reads_encoder(config, member.encoder, member.init_model)
        if encoder not in by_encoder:
            by_encoder[encoder] = task_lineages(store, encoder_tokenization(store, encoder))
        return {**lineages, **by_encoder[encoder]}

    planned = [(m, member_lineage(m, config, data_of(m))) for m in members]
    done = {} if ctx.rebuild else {m.name: s for m, fp in planned
                                   if (s := finished_member(store, m, fp))}
    todo = [(m, fp) for m, fp in planned if m.name not in done]
    log.info("[teachers] %d member(s) planned (%s): %d finished before, %d to train",
             len(members), config.teachers.shape, len(done), len(todo))
    failed: dict[str, str] = {}
    if todo:
        if not checked:
            _preflight(config)
        failed = _run_trials(ctx, todo, len(members), len(done))
    summaries, missing = [], []
    for member, fp in planned:
        summary = done.get(member.name) or finished_member(store, member, fp)
        if summary is None:
            missing.append(member.name)
            failed.setdefault(member.name, "finished without writing member.json")
        else:
            summaries.append(summary)
    for name, error in failed.items():
        log.warning("[teachers] member %s failed: %s", name, error)
    report = {"members": [s.summary() for s in summaries], "failed": failed,
              "shape": config.teachers.shape}
    store.write_json_atomic(TEACHERS_SUMMARY, report)
    short = short_tasks(config.teachers.min_members, [t for m in members for t in m.tasks],
                        summaries)
    if short:
        raise MtkdError(f"only {len(summaries)} of {len(members)} teacher members finished; "
                        "teachers.min_members is " + str(config.teachers.min_members)
                        + " per task, but " + ", ".join(f"{t} has {n}" for t, n in short.items())
                        + "; failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items())
                        + " (fix: see the errors above; re-running resumes the rest)")
    log.info("[teachers] %d/%d members ready in %.0f s; summary %s", len(summaries),
             len(members), time.time() - started, store.uri_of(TEACHERS_SUMMARY))
    return {"members": [s.name for s in summaries], "failed": sorted(failed),
            "lineages": {s.name: s.lineage for s in summaries},
            "contents": {s.name: s.content for s in summaries},
            "output_fingerprint": outputs_fingerprint({s.name: s.lineage for s in summaries}),
            "artifacts": [TEACHERS_SUMMARY]}


def short_tasks(min_members: int, tasks: list[str], summaries: list[MemberRecord]
                ) -> dict[str, int]:
    """Tasks covered by fewer than ``min_members`` finished members: {task: count}. A
    multitask member covers all its tasks; a per_task member one (so the rule holds per
    task for both shapes, not on the total count)."""
    counts = dict.fromkeys(tasks, 0)
    for summary in summaries:
        for task in summary.tasks:
            if task in counts:
                counts[task] += 1
    return {task: n for task, n in counts.items() if n < min_members}
