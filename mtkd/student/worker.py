"""The Ray Train worker of the student: DeepSpeed around the shared training loop.

Reads only its ``loop_config`` (experiment config as plain data, run, storage uri).
Each rank trains on its own shard of the multi-task sampler. Every
``checkpoint_every`` steps, and every ``checkpoint_minutes`` of wall time (rank 0's clock
decides for all ranks), each rank writes its part of mtkd's one checkpoint format
(:mod:`mtkd.training.checkpoint`: its DeepSpeed shard, its RNG state and, rank 0, the loop
state) into a local folder and calls ``ray.train.report`` with it; Ray merges the ranks'
files into one checkpoint in storage. A restarted or re-run worker group
resumes from the latest checkpoint at the same step and batch.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from mtkd.config import ExperimentConfig, config_from_dict
from mtkd.data.prepared import encoder_tokenization
from mtkd.data.transfer import add_transfer
from mtkd.experiment import experiment_store
from mtkd.padding import pad_rows
from mtkd.precision import resolve_here
from mtkd.resources import ray_resources, work_device
from mtkd.storage import Storage
from mtkd.student.deepspeed_backend import PRECISION_KEY, DeepSpeedBackend, mixed_precision
from mtkd.student.hidden import RepresentationDistillation, load_teacher
from mtkd.tracking import Tracker
from mtkd.training.checkpoint import load_checkpoint, save_checkpoint
from mtkd.training.data import TeacherArrays, align_by_uid
from mtkd.training.evaluate import predict_outputs
from mtkd.training.loop import (
    LoopData,
    LoopHooks,
    LoopState,
    TrainingLoop,
    chain_hooks,
    total_optimizer_steps,
)
from mtkd.training.recipe import (
    PreparedTasks,
    build_student,
    load_prepared_tasks,
    make_sampler,
    rank0_decision,
    rank0_score,
)
from mtkd.training.stages import StagePlan
from mtkd.training.steptiming import StepTimes, TimedBackend

log = logging.getLogger("mtkd")
STEP_TIMING_DIR = "step_timing"
"""``student.step_timing``: each rank's :class:`~mtkd.training.steptiming.StepTimes` as
``<run>/step_timing/rank<r>.json``."""
BEST_DIR = "best"


def best_weights_file(step: int) -> str:
    """Weights of the best dev evaluation at ``step``, relative to the run's folder."""
    return f"{BEST_DIR}/step-{step:08d}.safetensors"


def save_safetensors(weights: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in weights.items()})


def load_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


def prune_best_weights(run_store: Storage, keep_step: int | None,
                       also_keep: int | None = None) -> None:
    """After a checkpoint (whose loop state names ``keep_step`` as best) is persisted:
    delete every other best-weights file. Before, a resumed run may still need them;
    ``also_keep``: the best step of the checkpoint before, while this one may still be
    uploading (``student.checkpoint_upload: async``)."""
    if not run_store.exists(BEST_DIR):
        return
    keep = {best_weights_file(s) for s in (keep_step, also_keep) if s is not None}
    for name in run_store.list(BEST_DIR):
        rel = f"{BEST_DIR}/{name.rsplit('/', 1)[-1]}"
        if rel not in keep:
            run_store.delete(rel)


def upload_copy(folder: str) -> str:
    """A hard-linked copy of a checkpoint folder for Ray's ASYNC upload, which reads it
    after ``report`` returns (and deletes it when uploaded): the caller's temporary folder
    may go at once."""
    copy = tempfile.mkdtemp(prefix="mtkd-student-upload-")
    shutil.copytree(folder, copy, copy_function=os.link, dirs_exist_ok=True)
    return copy


def teacher_arrays(store: Storage, data: PreparedTasks,
                   config: ExperimentConfig) -> dict[str, TeacherArrays]:
    """Soft targets of every task with a teacher, joined to the train rows by uid."""
    arrays = {}
    temperature = config.soft_targets.temperature  # what the stored probabilities are at
    for task in (t.name for t in config.tasks if t.teacher):
        table = pq.read_table(io.BytesIO(store.read_bytes(f"soft_targets/{task}/train.parquet")))
        uids = table["uid"].to_pylist()
        soft = table["soft_target"].to_pylist()
        logits = table["teacher_logits"].to_pylist()
        if data.specs[task].kind.is_regression:
            arrays[task] = align_by_uid(data.train[task]["uid"], uids, task, temperature,
                                        score=np.asarray([s[0] for s in soft], np.float32))
        else:
            # ranking rows have different widths: absent candidates get probability 0
            probs, mean_logits = pad_rows(soft, fill=0.0), pad_rows(logits)
            arrays[task] = align_by_uid(data.train[task]["uid"], uids, task, temperature,
                                        probs=probs, logits=mean_logits)
    return arrays


def student_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train ``train_loop_per_worker`` (see module docstring)."""
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = config_from_dict(loop_config["experiment"])
    run = loop_config["run"]
    student = config.student
    training = student.training
    torch.set_num_threads(max(1, int(student.resources_per_worker.cpu)))
    # Warnings from everything; mtkd's own lines (progress, precision) from rank 0. Ray
    # Train's and DeepSpeed's INFO chatter (a line per checkpoint) stays in the worker log.
    logging.basicConfig(level=logging.WARNING,
                        format=f"[mtkd {run['name']} rank {rank}] %(message)s", force=True)
    logging.getLogger("mtkd").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for name in ("ray", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    store = experiment_store(config, storage=loop_config["storage"], check=False)
    run_store = store.child("student", run["name"])
    encoder = student.encoder or config.encoder.path
    # the student's own encoder's tokenization; soft targets join it by uid
    data = load_prepared_tasks(store, [t.name for t in config.tasks],
                               encoder_tokenization(store, encoder))
    teachers = teacher_arrays(store, data, config) if run["distill"] else {}

    model = build_student(config, list(data.specs.values()), seed=run["seed"])
    hidden_teacher = loop_config.get("hidden_teacher")
    if hidden_teacher and student.kd.transfer_text.enabled:  # headless: after the heads
        add_transfer(data, store, config)
    sampler = make_sampler(data.train, config, training, run["seed"], num_shards=world,
                           shard_index=rank)
    device = work_device(ray_resources(student.worker_resources), train_worker=True)
    resolved = resolve_here(training.precision, device, PRECISION_KEY)
    if hidden_teacher:  # representation distillation: the student with its projection
        # (with stages, each stage sets its own weight when it starts)
        model = RepresentationDistillation(
            model, load_teacher(store, hidden_teacher), student.kd.hidden_weight,
            student.kd.hidden_layers, resolved.precision)
        log.info("representation distillation from %s (%s), layers %s", hidden_teacher,
                 "weight per stage" if student.stages else
                 f"weight {student.kd.hidden_weight:g}", model.pairs)
    # staged training (student.stages): the distilled run only, the baseline trains in one
    stages = (StagePlan(student.stages, len(sampler), training.grad_accum,
                        int(model.encoder.config.num_hidden_layers), training.max_steps)
              if student.stages and run["distill"] else None)
    total_steps = total_optimizer_steps(training, len(sampler), stages)
    backend = DeepSpeedBackend(model, student, total_steps, world, device=device,
                               resolved=resolved, freezable=stages is not None)
    times = StepTimes()  # checkpoint, save and report seconds; steps with step_timing
    loop = TrainingLoop(TimedBackend(backend, times) if student.step_timing else backend,
                        LoopData(data.specs, data.train, data.dev, teachers),
                        training, sampler=sampler, kd=student.kd, name=run["name"],
                        keep_best_in_memory=False, record_steps=True,
                        log_every=loop_config.get("log_every", 50),
                        # Several ranks: rank 0's dev score decides early stopping for all,
                        # rank 0's clock when a time checkpoint is due.
                        score=rank0_score(backend.device) if world > 1 else None,
                        decide=rank0_decision(backend.device) if world > 1 else None,
                        stages=stages)

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder), backend, rank)
        log.info("resumed from step %d (epoch %d, batch %d)", resume.state.step,
                 resume.state.epoch, resume.state.position)
    attempts = resume.attempts if resume else []
    start_step = resume.state.step if resume else 0
    attempts.append({"pid": os.getpid(), "start_step": start_step})
    log.info("precision %s (%s), ZeRO-%d, %d steps", backend.resolved.describe(),
             mixed_precision(student, backend.precision) if backend.precision != "fp32"
             else "no mixed precision", student.zero_stage, loop.total_steps)
    last_saved: dict[str, int | None] = {"step": -1, "best": None}
    async_upload = student.checkpoint_upload == "async"
    upload = ({"checkpoint_upload_mode": ray.train.CheckpointUploadMode.ASYNC,
               "delete_local_checkpoint_after_upload": True} if async_upload else {})

    def save(state: LoopState) -> None:
        if state.step == last_saved["step"]:
            return  # the final call right after a periodic one
        last_saved["step"] = state.step
        with tempfile.TemporaryDirectory(prefix="mtkd-student-") as folder:
            times.timed_save(lambda: save_checkpoint(Path(folder), backend, state, rank=rank,
                                                     attempts=attempts),
                             folder, state.step)
            metrics = {"step": state.step, "epoch": state.epoch}
            if state.history:
                metrics.update(score=state.history[-1]["score"])
            checkpoint = ray.train.Checkpoint.from_directory(
                upload_copy(folder) if async_upload else folder)
            times.timed("reports", lambda: ray.train.report(metrics, checkpoint=checkpoint,
                                                            **upload), checkpoint=True)
        if rank == 0 and student.keep == "best":
            prune_best_weights(run_store, state.best_step,
                               last_saved["best"] if async_upload else None)
        last_saved["best"] = state.best_step
        run_store.write_json_atomic(f"progress/rank{rank}.json",
                                    {"pid": os.getpid(), "step": state.step,
                                     "attempt": len(attempts)})

    def keep_best(state: LoopState, record: dict[str, Any]) -> None:
        weights = backend.full_weights()  # collective under ZeRO-3
        if rank == 0:
            run_store.write_atomic(best_weights_file(state.step), save_safetensors(weights))

    tracker = None
    if rank == 0:  # curves under tensorboard/<Ray Train run name> (<run>-<lineage>)
        tracker = Tracker.open(
            config.tracking, store, context.get_experiment_name(), experiment=config.name,
            start_step=start_step,
            params={"run": run, "training": dataclasses.asdict(training),
                    "kd": dataclasses.asdict(student.kd), "num_layers": student.num_layers,
                    "layer_selection": student.layer_selection,
                    "hidden_size": student.hidden_size, "hidden_teacher": hidden_teacher,
                    "stages": [dataclasses.asdict(s) for s in student.stages]
                    if stages is not None else [],
                    "encoder": student.encoder or config.encoder.path, "workers": world})
    loop.hooks = chain_hooks(
        LoopHooks(on_checkpoint=times.timed_hook(save),
                  checkpoint_every=student.checkpoint_every,
                  checkpoint_minutes=student.checkpoint_minutes,
                  on_best=keep_best if student.keep == "best" else None),
        tracker.hooks() if tracker else None)
    try:
        final = loop.run(resume.state if resume else None,
                         rng=resume.rng if resume else None, seed=run["seed"])
    finally:
        if tracker:
            tracker.close()
        if student.step_timing:
            run_store.write_json_atomic(f"{STEP_TIMING_DIR}/rank{rank}.json", times.to_json())
    best_differs = (student.keep == "best" and final.best_step is not None
                    and final.best_step != final.step)
    if rank == 0 and best_differs and backend.engine.zero_optimization_partition_weights():
        log.info("kept the weights of step %d (best dev score); in-training dev outputs "
                 "are not recorded under ZeRO-3", final.best_step)
    elif rank == 0:  # what the exported weights predict on dev, to compare with the export
        if best_differs:
            backend.model.load_state_dict(load_safetensors(
                run_store.read_bytes(best_weights_file(final.best_step))))
        outputs = {task: {"uids": list(split["uid"]),
                          "outputs": predict_outputs(backend.model, data.specs[task], split,
                                                     device=backend.device,
                                                     precision=backend.precision).tolist()}
                   for task, split in data.dev.items()}
        run_store.write_json_atomic("in_training_dev_outputs.json", outputs)
        run_store.write_json_atomic("train_state.json", {
            "steps": final.step, "attempts": attempts, "step_log": final.step_log,
            "history": final.history, "examples_per_s": final.examples / max(
                final.train_seconds, 1e-9), "world_size": world,
            "precision": backend.resolved.to_json(), "loss_scale": backend.loss_scale(),
            "keep": student.keep, "best_step": final.best_step,
            "hidden_teacher": ({"member": hidden_teacher, "weight": student.kd.hidden_weight,
                                "layers": model.pairs} if hidden_teacher else None),
            "stages": ([{"name": s.name, "first_step": start + 1, "last_step": end}
                        for s, (start, end) in zip(stages.stages, stages.bounds, strict=True)]
                       if stages is not None else None),
            "best_score": final.best_score})
        log.info("finished at step %d: dev average %.2f", final.step,
                 final.history[-1]["average"] if final.history else float("nan"))
