"""Stage ``student``: the distilled student (and the no-KD baseline) with Ray Train.

One ``TorchTrainer`` run per (variant, seed): ``student`` learns from hard labels and the
teachers' soft targets; ``baseline`` (``student.baseline``) trains the same student
without soft targets, the paper's MT-DNN row. A run's lineage (see :mod:`mtkd.experiment`:
the student settings that change the model, the tokenized data, and for a distilled run
the soft targets it learns from) names its Ray Train run, so re-running after a crash
resumes the unfinished run from its own latest checkpoint in storage, never from one of
another lineage, and finished runs (``student/<run>/student.json``) are reused only while
their lineage matches. Changing only how the work is done (checkpoint cadence and
retention, resources, retries) keeps the lineage, so the run resumes.

After training, the final DeepSpeed checkpoint is consolidated from its ZeRO shards
(DeepSpeed's ``zero_to_fp32``) into a self-contained model directory under
``student/<run>/final/`` that loads and predicts without Ray or DeepSpeed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mtkd.config import ExperimentConfig, KDConfig, config_to_dict
from mtkd.data.prepared import (
    encoder_tokenization,
    prepared_splits,
    read_prepared,
    task_lineages,
)
from mtkd.data.transfer import recorded_transfer
from mtkd.errors import MtkdError
from mtkd.experiment import (
    STUDENT_TRAIN_RUNS,
    StageContext,
    lineage,
    outputs_fingerprint,
    read_manifest,
    reusable,
    student_dir,
    student_record,
)
from mtkd.model.mtdnn import num_parameters
from mtkd.model.remote import save_model_to
from mtkd.precision import Resolved, resolve_here, stage_precision
from mtkd.raycluster import Placement, ensure_ray, probe_work_device
from mtkd.records import EnsembleRef, StudentRecord, digest
from mtkd.resources import on_gpu, ray_resources
from mtkd.storage import Storage
from mtkd.student.deepspeed_backend import CHECKPOINT_TAG
from mtkd.student.hidden import representation_teacher, student_weights
from mtkd.student.predictions import predictions_bytes, predictions_file, run_content
from mtkd.student.worker import best_weights_file, load_safetensors, student_worker
from mtkd.training.evaluate import evaluate
from mtkd.training.recipe import build_student, load_prepared_tasks

log = logging.getLogger("mtkd")


@dataclasses.dataclass(frozen=True)
class StudentRun:
    """One student training: its name, seed and whether it distills."""

    name: str
    seed: int
    distill: bool


def plan_runs(config: ExperimentConfig) -> list[StudentRun]:
    """``student`` (KD, if student.distill) and ``baseline`` (if student.baseline or
    distill is off), one per seed; names get ``-s<seed>`` when there are several seeds."""
    student, runs = config.student, []
    several = len(student.seeds) > 1
    for seed in student.seeds:
        suffix = f"-s{seed}" if several else ""
        if student.distill:
            runs.append(StudentRun(f"student{suffix}", seed, True))
        if student.baseline or not student.distill:
            runs.append(StudentRun(f"baseline{suffix}", seed, False))
    return runs


def consolidate(folder: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """fp32 model weights from a DeepSpeed checkpoint folder (all ranks' shards)."""
    if zero_stage > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=CHECKPOINT_TAG)
    # Stage 0: the full module is in rank 0's model-states file, written by DeepSpeed itself.
    states = torch.load(folder / CHECKPOINT_TAG / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in states["module"].items()}


def run_config(config: ExperimentConfig, run: StudentRun) -> ExperimentConfig:
    """The effective config a run is built from: a baseline never reads ``student.kd``
    nor ``student.stages`` (it trains ``student.training`` in one stage)."""
    if run.distill:
        return config
    return dataclasses.replace(config, student=dataclasses.replace(config.student,
                                                                   kd=KDConfig(), stages=[]))


def run_lineage(config: ExperimentConfig, run: StudentRun, data: dict[str, str],
                soft: dict[str, str] | None, hidden: str | None = None,
                transfer: str | None = None) -> str:
    """A student run's lineage: the declared student settings, the lineages of every
    task's tokenized data and, when it distils, of every task's soft targets, (with
    representation distillation) the lineage of its representation teacher, ``hidden``,
    and (with transfer text) the lineage of the tokenized transfer text, ``transfer``."""
    inputs: dict[str, Any] = {"data": data, "soft": soft if run.distill else None}
    if run.distill and hidden is not None:
        inputs["hidden_teacher"] = hidden
    if run.distill and transfer is not None:
        inputs["transfer_text"] = transfer
    return lineage("student_run", run_config(config, run), inputs=inputs,
                   instance=dataclasses.asdict(run))


def train_run_name(run: StudentRun, lineage: str) -> str:
    """The run's Ray Train run under student/_train/: a resume never picks up another
    lineage's checkpoints."""
    return f"{run.name}-{lineage[:10]}"


def _train(ctx: StageContext, run: StudentRun, run_lineage: str,
           hidden_teacher: str | None) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config, store, student = ctx.config, ctx.store, ctx.config.student
    per_worker = ray_resources(student.worker_resources)
    trainer = TorchTrainer(
        student_worker,
        train_loop_config={"experiment": config_to_dict(config, redact=False),
                           "run": dataclasses.asdict(run),
                           "storage": Storage.from_uri(config.storage_path).uri,
                           "hidden_teacher": hidden_teacher if run.distill else None},
        scaling_config=ScalingConfig(num_workers=student.num_workers, use_gpu=on_gpu(per_worker),
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=train_run_name(run, run_lineage),
            storage_path=store.full_path(STUDENT_TRAIN_RUNS),
            storage_filesystem=store.filesystem,
            failure_config=FailureConfig(max_failures=student.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=student.keep_checkpoints)),
    )
    return trainer.fit()


def _export(ctx: StageContext, run: StudentRun, result: Any) -> dict[str, Any]:
    """Export and score a finished run where a student worker runs: one Ray task with
    student.resources_per_worker (and its GPU), placed by Ray (:func:`export_run`)."""
    if result.checkpoint is None:
        raise MtkdError(f"student run {run.name} finished without a checkpoint")
    exported, _ = Placement.student(ctx.config, "student").run(
        f"{run.name} export and scoring", export_run, ctx.config, ctx.store, run,
        result.checkpoint)
    return exported


def export_run(config: ExperimentConfig, store: Storage, run: StudentRun, checkpoint: Any,
               *, device: str = "cpu") -> dict[str, Any]:
    """Consolidate the run's final ``checkpoint`` (a Ray Train Checkpoint; or, with
    student.keep: best, its best step's weights), save the model under
    ``student/<run>/final``, then score it on dev and test on ``device`` at
    report.precision resolved there, storing the per-example outputs. Returns the
    StudentRecord fields it decides."""
    scoring = resolve_here(config.report.precision, device, "report.precision")
    encoder = config.student.encoder or config.encoder.path
    tokenization = encoder_tokenization(store, encoder)
    data = load_prepared_tasks(store, [t.name for t in config.tasks], tokenization)
    model = build_student(config, list(data.specs.values()), seed=run.seed)
    state_path = f"{student_dir(run.name)}/train_state.json"
    trained = store.read_json(state_path) if store.exists(state_path) else {}
    best, steps = trained.get("best_step"), trained.get("steps")
    if config.student.keep == "best" and best is not None and best != steps:
        model.load_state_dict(student_weights(load_safetensors(
            store.child(student_dir(run.name)).read_bytes(best_weights_file(best)))))
        log.info("[student] %s: keeping the weights of step %d of %d (best dev score %.2f; "
                 "student.keep: best)", run.name, best, steps, trained.get("best_score"))
    else:
        with checkpoint.as_directory() as folder:
            model.load_state_dict(student_weights(
                consolidate(Path(folder), config.student.zero_stage)))
    selected = {"keep": config.student.keep, "step": best if (
        config.student.keep == "best" and best is not None) else steps, "steps": steps}
    from mtkd.data.tokenize import load_tokenizer
    from mtkd.pretrained import resolve_encoder_dir

    # the tokenizer the student's inputs were made with: its own encoder's
    tokenizer = load_tokenizer(resolve_encoder_dir(encoder))
    saved = save_model_to(store.child(student_dir(run.name)), "final", model, tokenizer,
                          extra={"run": dataclasses.asdict(run)})
    scored = score_model(config, store, run.name, model, tokenization, scoring, device, data)
    return {"selected": selected, "model": saved.uri,
            "content": run_content(saved.content, scored["predictions"]), **scored,
            "params": num_parameters(model), "encoder": encoder,
            "tokenization": tokenization, "precision": trained.get("precision"),
            "loss_scale": trained.get("loss_scale"), "scored_in": scoring.to_json()}


def score_model(config: ExperimentConfig, store: Storage, run_name: str, model: Any,
                tokenization: str | None, scoring: Resolved, device: str,
                data: Any = None) -> dict[str, Any]:
    """Score a student run's model on dev and (where labelled) test at ``scoring``'s
    precision on ``device`` and store its per-example outputs under ``student/<run>/``
    (for the report's paired bootstrap; written before the caller's record). Returns the
    StudentRecord fields: metrics, average, test_metrics, test_average, predictions.
    ``data``: the prepared tasks when the caller has them (else read here)."""
    if data is None:
        data = load_prepared_tasks(store, [t.name for t in config.tasks], tokenization)
    model.to(device)
    metrics = evaluate(model, data.specs, data.dev, precision=scoring.precision,
                       device=device, progress=f"{run_name} dev", keep_outputs=True)
    test = {task: read_prepared(store, task, "test", tokenization) for task in data.specs
            if "test" in prepared_splits(store, task)}
    tested = evaluate(model, data.specs, test, precision=scoring.precision,
                      device=device, progress=f"{run_name} test", keep_outputs=True)
    predictions = {}
    for split, result in (("dev", metrics), ("test", tested)):
        if result["outputs"]:
            payload = predictions_bytes(result["outputs"])
            store.write_atomic(f"{student_dir(run_name)}/{predictions_file(split)}", payload)
            predictions[split] = digest(payload)
    return {"metrics": metrics["tasks"], "average": metrics["average"],
            "test_metrics": tested["tasks"], "test_average": tested["average"],
            "predictions": predictions}


def rescore_run(config: ExperimentConfig, store: Storage, record: StudentRecord, *,
                device: str = "cpu") -> dict[str, Any]:
    """Score a finished run's saved model (``student/<run>/final``) again, at
    report.precision resolved on ``device``: a reused run whose scores were made at another
    precision than every other model's now (the precision rule: one per hardware).
    Returns the StudentRecord fields that change."""
    from mtkd.model.remote import load_model_from
    from mtkd.records import folder_fingerprint

    scoring = resolve_here(config.report.precision, device, "report.precision")
    with tempfile.TemporaryDirectory(prefix="mtkd-rescore-") as tmp:
        model, _ = load_model_from(store, f"{student_dir(record.name)}/final",
                                   Path(tmp) / "final", device=device)
        content = folder_fingerprint(Path(tmp) / "final")
        model.eval()
        scored = score_model(config, store, record.name, model, record.tokenization,
                             scoring, device)
    return {**scored, "content": run_content(content, scored["predictions"]),
            "scored_in": scoring.to_json()}


def _scored_now(ctx: StageContext, record: StudentRecord, target: Resolved | None
                ) -> StudentRecord:
    """``record`` as it stands when its scores were made at ``target``'s precision (or the
    device could not be probed); else its model re-scored at ``target`` where a student
    worker runs, and the record rewritten (same lineage: the model is the same)."""
    made = (record.scored_in or {}).get("precision")
    if target is None or made == target.precision:
        return record
    log.info("[student] %s was scored at %s; scoring it again at %s (report.precision %s)",
             record.name, made or "an unrecorded precision", target.precision,
             target.requested)
    fields, _ = Placement.student(ctx.config, "student").run(
        f"{record.name} scoring", rescore_run, ctx.config, ctx.store, record)
    updated = dataclasses.replace(record, **fields)
    ctx.store.write_json_atomic(student_record(record.name), updated.to_json())
    return updated


def run_student(ctx: StageContext) -> dict[str, Any]:
    """Train (or reuse) every planned student run and export its final model."""
    config, store = ctx.config, ctx.store
    soft_manifest = read_manifest(store, "soft") if config.student.distill else None
    if config.student.distill and not soft_manifest:
        raise MtkdError("the student needs soft targets first (fix: run `mtkd run` without "
                        "--only, or set student.distill: false)")
    soft = soft_manifest.get("lineages") if soft_manifest else None
    ensemble = (EnsembleRef(soft_manifest["output_fingerprint"],
                            list(soft_manifest.get("members", []))) if soft_manifest else None)
    # the lineages of the tokenization the student reads (its encoder's)
    tokenization = encoder_tokenization(store, config.student.encoder or config.encoder.path)
    data = task_lineages(store, tokenization)
    hidden = (representation_teacher(store, config.student.kd.hidden_teacher, tokenization)
              if config.student.distill and config.student.hidden_distillation else None)
    if hidden is not None:
        log.info("[student] representation teacher: member %s (dev average %.2f)",
                 hidden["name"], hidden["average"])
    transfer = recorded_transfer(store) if config.student.kd.transfer_text.enabled else None
    if config.student.kd.transfer_text.enabled and transfer is None:
        raise MtkdError("student.kd.transfer_text is set but the last prepare run did not "
                        "tokenize it (fix: run prepare again: `mtkd run CONFIG` without "
                        "--only/--from)")
    summaries: dict[str, StudentRecord] = {}
    checked = False

    # the device a student worker gets, probed once per stage: it trains there, and the
    # export and re-scoring tasks with its resources score there
    device = functools.cache(lambda: probe_work_device(config.ray,
                                                       config.student.worker_resources))
    scoring = functools.cache(lambda: stage_precision(  # refused (exit 2) or warned once
        "student", "report.precision", config.report.precision, device()))

    for run in plan_runs(config):
        expected = run_lineage(config, run, data, soft, hidden["lineage"] if hidden else None,
                               transfer)
        record = (None if ctx.rebuild else
                  reusable(store, student_record(run.name), expected, StudentRecord))
        if record is not None:
            record = _scored_now(ctx, record, scoring())
            summaries[run.name] = record
            log.info("[student] %s finished before, reusing %s", run.name, record.model)
            continue
        if not checked:  # before the first run: refused (exit 2) or warned once
            stage_precision("student", "student.training.precision",
                            config.student.training.precision, device())
            scoring()
            checked = True
        ensure_ray(config.ray)
        store.delete(student_record(run.name))  # an old record never describes a new model
        if ctx.rebuild:  # from step 0: the Ray Train run of this lineage starts afresh
            store.delete(f"{STUDENT_TRAIN_RUNS}/{train_run_name(run, expected)}")
        started = time.time()
        log.info("[student] %s: %d worker(s), ZeRO-%d, %s", run.name,
                 config.student.num_workers, config.student.zero_stage,
                 "distilling from ensemble " + ensemble.ensemble[:8]
                 + f" ({len(ensemble.members)} members)"
                 if run.distill and ensemble else "hard labels only (baseline)")
        with tempfile.TemporaryDirectory():
            result = _train(ctx, run, expected, hidden["name"] if hidden else None)
        if result.error is not None:
            raise MtkdError(f"student run {run.name} failed: {result.error}")
        summary = StudentRecord(lineage=expected, name=run.name, seed=run.seed,
                                distill=run.distill,
                                distilled_from=ensemble if run.distill else None,
                                **_export(ctx, run, result),
                                seconds=round(time.time() - started, 1))
        store.write_json_atomic(student_record(run.name), summary.to_json())
        summaries[run.name] = summary
        log.info("[student] %s: dev average %.2f, %d parameters, model %s", run.name,
                 summary.average, summary.params, summary.model)
    return {"runs": {name: s.to_json() for name, s in summaries.items()},
            "lineages": {name: s.lineage for name, s in summaries.items()},
            "contents": {name: s.content for name, s in summaries.items()},
            "output_fingerprint": outputs_fingerprint({name: s.lineage
                                                       for name, s in summaries.items()})}
