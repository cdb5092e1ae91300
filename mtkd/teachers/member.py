"""One ensemble member as a Ray Tune trial: train, checkpoint, resume, write the model.

The trial function reads only its ``trial_config`` (the experiment config as plain
data, the member, the storage uri): no globals. Every dev evaluation is reported to
Tune together with a checkpoint (model, optimizer, schedule, loop state, RNG), and so is
the same checkpoint every ``teachers.checkpoint_minutes`` of wall time in between, so a
retried trial continues from minutes ago instead of step 0 or the last evaluation. When
training ends, the best model goes to ``teachers/<member>/model/`` and
``teachers/<member>/member.json`` is written last, atomically: only then does the member
count as finished. Rank 0 writes the member's training curves (:mod:`mtkd.tracking`).

A member with ``teachers.workers_per_member`` N > 1 is data-parallel: the trial only
drives a Ray Train ``TorchTrainer`` (Train v2 inside Tune) whose N workers each ask for
``resources_per_member``, train their shard of the batches with DDP (gloo on CPU, NCCL on
GPU) and report the same checkpoints through Ray Train, which forwards the metrics to Tune.
The Train run is named after the member and its lineage, so a retried trial starts a
run of the same name, which resumes from that run's latest checkpoint in storage. Rank 0
writes the model and ``member.json`` exactly as a single-process member does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtkd.config import ExperimentConfig, config_from_dict
from mtkd.data.prepared import encoder_tokenization
from mtkd.errors import MtkdError
from mtkd.experiment import (
    TEACHER_TRAIN_RUNS,
    TEACHER_TUNE_RUNS,
    experiment_store,
    member_dir,
    member_record,
    reusable,
)
from mtkd.model.mtdnn import keep_tasks
from mtkd.model.remote import load_model_from, save_model_to
from mtkd.records import MemberRecord
from mtkd.resources import on_gpu, ray_resources, work_device
from mtkd.storage import Storage
from mtkd.teachers.plan import Member
from mtkd.tokenizations import member_reads_encoder
from mtkd.tracking import Tracker
from mtkd.training.backend import sum_over_ranks
from mtkd.training.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    stored_step,
    verify_checkpoint,
)
from mtkd.training.loop import LoopHooks, LoopState, TrainingLoop, chain_hooks
from mtkd.training.recipe import (
    TrainResult,
    build_training_loop,
    load_prepared_tasks,
    run_training,
)

log = logging.getLogger("mtkd")
DRIVER_MEMORY = 256 * 2**20
"""What the Tune trial of a multi-worker member reserves: it only drives the TorchTrainer,
whose workers ask for the member's resources. Tune refuses an all-zero request, so the
trial asks for a little memory and no CPU (it must not take a CPU its workers need)."""


def train_run_name(member: Member, lineage: str) -> str:
    """The Ray Train run of a multi-worker member, under ``teachers/_train/``: stable over
    retries and re-runs, so the run resumes from its own latest checkpoint. Tune trial
    folders of single-process members start with it too (``<run name>-<trial id>``)."""
    return f"{member.name}-{lineage[:10]}"


def earlier_checkpoints(store: Storage, member: Member, lineage: str) -> list[tuple[Any, int]]:
    """The checkpoints that earlier, interrupted Tune runs (Ctrl-C, a lost driver, a
    preempted head) left for this member and lineage, newest first, with their steps. A
    new trial of the same member continues from the newest that loads, not from step 0."""
    from ray.train import Checkpoint

    prefix = train_run_name(member, lineage) + "-"
    found: list[tuple[int, str]] = []
    for run in store.list(TEACHER_TUNE_RUNS):
        for trial in store.list(f"{TEACHER_TUNE_RUNS}/{run}"):
            if not trial.startswith(prefix):
                continue
            for name in store.list(f"{TEACHER_TUNE_RUNS}/{run}/{trial}"):
                rel = f"{TEACHER_TUNE_RUNS}/{run}/{trial}/{name}"
                step = stored_step(store, rel) if name.startswith("checkpoint_") else None
                if step is not None:  # else not a checkpoint, or an upload cut short
                    found.append((step, rel))
    return [(Checkpoint(path=store.full_path(rel), filesystem=store.filesystem), step)
            for step, rel in sorted(found, reverse=True)]


def _first_loadable(candidates: list[tuple[Any, int]]) -> Any | None:
    """The first checkpoint of ``candidates`` whose files load (an upload cut short by a
    kill may leave a truncated one)."""
    for checkpoint, step in candidates:
        try:
            with checkpoint.as_directory() as folder:
                verify_checkpoint(Path(folder))
        except (MtkdError, OSError, RuntimeError, ValueError, KeyError, EOFError) as exc:
            log.warning("skipping the checkpoint at step %d an earlier run left: %s", step, exc)
            continue
        # the progress logger: shown on the console even without teachers.verbose
        logging.getLogger("mtkd.progress").info(
            "continuing from the checkpoint at step %d that an earlier run left", step)
        return checkpoint
    return None


@dataclass
class MemberJob:
    """What any attempt at training one member works with, from the trial's plain data."""

    config: ExperimentConfig
    member: Member
    lineage: str
    store: Storage
    """The experiment's root."""
    here: Storage
    """``teachers/<member>/``."""

    @classmethod
    def from_trial(cls, trial_config: dict[str, Any]) -> MemberJob:
        config = config_from_dict(trial_config["experiment"])
        member = Member.from_json(trial_config["member"])
        store = experiment_store(config, storage=trial_config["storage"], check=False)
        return cls(config, member, trial_config["lineage"], store,
                   store.child(member_dir(member.name)))

    def finished(self) -> MemberRecord | None:
        """The record if this member already finished with this lineage (a trial
        retried after writing it must not train, and overwrite the model, again)."""
        return reusable(self.store, member_record(self.member.name), self.lineage,
                        MemberRecord)

    def setup_logging(self, rank: int | None = None) -> None:
        """Warnings always, progress lines (every 30 s, see mtkd.progress) from rank 0
        always, everything with teachers.verbose; Ray forwards them to the console."""
        verbose = self.config.teachers.verbose and not rank
        where = self.member.name if rank is None else f"{self.member.name} rank {rank}"
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format=f"[mtkd {where}] %(message)s", force=rank is not None)
        logging.getLogger("mtkd.progress").setLevel(logging.WARNING if rank else logging.INFO)
        logging.getLogger("ray").setLevel(logging.WARNING)

    @property
    def reads_encoder(self) -> str:
        """The encoder whose tokenization the member trains on and whose tokenizer its
        saved model ships (:func:`mtkd.tokenizations.member_reads_encoder`)."""
        return member_reads_encoder(self.config, self.member.encoder, self.member.init_model)

    @property
    def tokenization(self) -> str | None:
        """That encoder's tokenization (None: encoder.path's), as prepare recorded it."""
        return encoder_tokenization(self.store, self.reads_encoder)

    def build_loop(self, device: torch.device | str, data_parallel: bool = False
                   ) -> TrainingLoop:
        member, config = self.member, self.config
        data = load_prepared_tasks(self.store, member.tasks, self.tokenization)
        start_from = None
        if member.init_model:  # per_task member fine-tuned from the shared multi-task model
            local = Path(tempfile.mkdtemp(prefix="mtkd-init-"))
            shared, _ = load_model_from(self.store, member.init_model, local / "model")
            start_from = keep_tasks(shared, member.tasks)
        return build_training_loop(config, data, encoder=member.encoder,
                                   num_layers=config.encoder.num_layers,
                                   training=member.training(config.teachers.training),
                                   seed=member.seed, device=device, name=member.name,
                                   model=start_from, data_parallel=data_parallel)

    def open_tracker(self, run: str, start_step: int) -> Tracker | None:
        """TensorBoard/MLflow tracking of this member (``tracking``), as ``run``."""
        training = self.member.training(self.config.teachers.training)
        return Tracker.open(self.config.tracking, self.store, run, experiment=self.config.name,
                            start_step=start_step,
                            params={"member": self.member.variant(),
                                    "tasks": ",".join(self.member.tasks),
                                    "training": dataclasses.asdict(training)})

    def write_progress(self, state: LoopState, record: dict[str, Any], attempt: int) -> None:
        """For people and tests watching: the last step whose checkpoint was persisted."""
        self.here.write_json_atomic("progress.json", {"pid": os.getpid(), "step": state.step,
                                                      "score": record["score"],
                                                      "attempt": attempt})

    def write_member(self, result: TrainResult, started: float, attempts: list[dict],
                     workers: int = 1, examples: float | None = None,
                     tokens: float | None = None) -> MemberRecord:
        """Save the (best) model, then ``member.json``, last. ``examples``/``tokens``: all
        ranks' together (default: this process's)."""
        state, member = result.state, self.member
        examples = state.examples if examples is None else examples
        tokens = state.tokens if tokens is None else tokens
        saved = save_model_to(self.here, "model", result.model, result.tokenizer,
                              extra={"member": member.to_json()})
        seconds = time.time() - started
        record = MemberRecord(
            lineage=self.lineage, content=saved.content, name=member.name,
            variant=member.variant(), tasks=list(member.tasks), metrics=state.best_metrics,
            average=state.best_score, best_step=state.best_step, steps=state.step,
            model=saved.uri, wall_seconds=round(seconds, 2),
            train_examples_per_s=round(examples / max(state.train_seconds, 1e-9), 2),
            train_tokens_per_s=round(tokens / max(state.train_seconds, 1e-9), 1),
            workers=workers, attempts=attempts, history=state.history,
            encoder=self.reads_encoder, tokenization=self.tokenization,
            precision=result.loop.backend.resolved.to_json(),
            loss_scale=result.loop.backend.loss_scale())
        self.store.write_json_atomic(member_record(member.name), record.to_json())
        return record


def _flat_metrics(record: dict[str, Any], evaluations: int) -> dict[str, float]:
    """What an evaluation reports to Tune. ``evaluations`` (so far, this one included) is
    ASHA's time axis: a time checkpoint's report does not advance it."""
    flat = {"score": float(record["score"]), "step": int(record["step"]),
            "evaluations": evaluations}
    for task, metrics in record["metrics"].items():
        for name, value in metrics.items():
            flat[f"{task}/{name}"] = float(value)
    return flat


def train_member_trial(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable for one member (see module docstring).

    ``tune_config["trial"]`` holds: experiment (config as plain data), member, lineage,
    storage (absolute root uri).
    """
    from ray import tune

    trial_config = tune_config["trial"]
    started = time.time()
    job = MemberJob.from_trial(trial_config)
    job.setup_logging()
    fresh = trial_config.get("fresh", False) and tune.get_checkpoint() is None
    record = None if fresh else job.finished()
    if fresh:  # the old record must never stand for the model trained now
        job.store.delete(member_record(job.member.name))
    if record is None:
        if job.config.teachers.workers_per_member > 1:
            if fresh:  # --force: the member's Ray Train run starts afresh
                job.store.delete(f"{TEACHER_TRAIN_RUNS}/{train_run_name(job.member, job.lineage)}")
            _drive_workers(job, trial_config, started)
            record = job.finished()
            if record is None:
                raise RuntimeError(f"member {job.member.name}: the workers finished without "
                                   "writing member.json")
        else:
            record = _train_in_trial(job, started, fresh)
    tune.report({"score": float(record.average or 0.0), "step": record.steps,
                 "evaluations": len(record.history), "finished": 1})


def _train_in_trial(job: MemberJob, started: float, fresh: bool = False) -> MemberRecord:
    """One process: train in the trial itself, checkpoints through Tune."""
    from ray import tune

    resources = job.config.teachers.resources_per_member
    torch.set_num_threads(max(1, int(resources.cpu)))
    device = work_device(ray_resources(resources))
    loop = job.build_loop(device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and not fresh:  # a new trial: continue what a run left, if any
        checkpoint = _first_loadable(earlier_checkpoints(job.store, job.member, job.lineage))
    result, attempts = _train_with_checkpoints(job, loop, checkpoint, started,
                                               tune.report, tune.Checkpoint.from_directory,
                                               run=train_run_name(job.member, job.lineage))
    return job.write_member(result, started, attempts)


def _train_with_checkpoints(job: MemberJob, loop: TrainingLoop, checkpoint: Any,
                            started_at: float, report: Callable[..., Any],
                            as_checkpoint: Callable[[str], Any], rank: int = 0, *,
                            run: str) -> tuple[TrainResult, list[dict]]:
    """Run ``loop`` from ``checkpoint`` (or the start), reporting a checkpoint at every
    evaluation and every ``teachers.checkpoint_minutes`` through ``report`` (Tune's or Ray
    Train's); the result and the attempts. ``run``: the tracking name (rank 0 tracks)."""
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder), loop.backend, rank)
        logging.getLogger("mtkd.progress").info(
            "resumed from step %d (epoch %d, batch %d)", resume.state.step,
            resume.state.epoch, resume.state.position)
    attempts = resume.attempts if resume else []
    attempts.append({"pid": os.getpid(), "start_step": resume.state.step if resume else 0,
                     "started_at": started_at})
    if rank == 0:
        logging.getLogger("mtkd.progress").info("precision %s, %d steps",
                                                loop.backend.resolved.describe(),
                                                loop.total_steps)

    saved_at = {"step": -1}

    def save_and_report(state: LoopState, metrics: dict[str, float],
                        record: dict[str, Any]) -> None:
        saved_at["step"] = state.step
        # The best weights travel with the checkpoint when they are not the current ones, so
        # a resumed member still saves the model its member.json metrics describe.
        best = loop.best_weights if state.best_step not in (None, state.step) else None
        with tempfile.TemporaryDirectory(prefix="mtkd-ckpt-") as folder:
            save_checkpoint(Path(folder), loop.backend, state, rank=rank, attempts=attempts,
                            best=best)
            report(metrics, checkpoint=as_checkpoint(folder))
        if rank == 0:
            job.write_progress(state, record, len(attempts))

    def on_eval(state: LoopState, record: dict[str, Any]) -> None:
        save_and_report(state, _flat_metrics(record, len(state.history)), record)

    def on_checkpoint(state: LoopState) -> None:
        """A time checkpoint (and the end, normally saved by its evaluation already)."""
        if state.step == saved_at["step"]:
            return
        # Tune (and ASHA) expect a score in every result: the last evaluation's, at the
        # same ``evaluations`` count, so ASHA's rungs see nothing new (NaN before any).
        score = state.history[-1]["score"] if state.history else math.nan
        save_and_report(state, {"score": score, "step": state.step,
                                "evaluations": len(state.history), "time_checkpoint": 1},
                        {"score": None if math.isnan(score) else score})

    tracker = job.open_tracker(run, resume.state.step if resume else 0) if rank == 0 else None
    loop.hooks = chain_hooks(
        LoopHooks(on_eval=on_eval, on_checkpoint=on_checkpoint, eval_checkpoints=True,
                  checkpoint_minutes=job.config.teachers.checkpoint_minutes),
        tracker.hooks() if tracker else None)
    try:
        # Each rank its own dropout stream; rank 0's is the single-process one.
        result = run_training(loop, job.reads_encoder, job.member.seed + rank, resume)
    finally:
        if tracker:
            tracker.close()
    return result, attempts


def _drive_workers(job: MemberJob, trial_config: dict[str, Any], started: float) -> None:
    """Several workers: run :func:`member_worker` in a TorchTrainer and wait for it."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    teachers = job.config.teachers
    per_worker = ray_resources(teachers.resources_per_member)
    trainer = TorchTrainer(
        member_worker,
        train_loop_config={**trial_config, "started_at": started},
        scaling_config=ScalingConfig(num_workers=teachers.workers_per_member,
                                     use_gpu=on_gpu(per_worker),
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=train_run_name(job.member, job.lineage),
            storage_path=job.store.full_path(TEACHER_TRAIN_RUNS),
            storage_filesystem=job.store.filesystem,
            # A failed worker fails the run and so the trial; Tune retries the trial
            # (teachers.max_failures) and the new run of the same name resumes.
            failure_config=FailureConfig(max_failures=0),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()]),  # worker metrics reach Tune (and ASHA)
    )
    trainer.fit()  # raises when the run failed


def member_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train ``train_loop_per_worker`` of a multi-worker member: one data-parallel rank.

    ``loop_config``: the trial's plain data plus ``started_at`` (when the trial started).
    """
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    job = MemberJob.from_trial(loop_config)
    job.setup_logging(rank)
    resources = job.config.teachers.resources_per_member
    torch.set_num_threads(max(1, int(resources.cpu)))
    device = work_device(ray_resources(resources), train_worker=True)
    loop = job.build_loop(device, data_parallel=True)
    result, attempts = _train_with_checkpoints(
        job, loop, ray.train.get_checkpoint(), loop_config["started_at"], ray.train.report,
        ray.train.Checkpoint.from_directory, rank,
        run=train_run_name(job.member, job.lineage))
    examples, tokens = sum_over_ranks([result.state.examples, result.state.tokens],
                                      loop.backend.device)
    if rank == 0:
        job.write_member(result, loop_config["started_at"], attempts, workers=world,
                         examples=examples, tokens=tokens)
