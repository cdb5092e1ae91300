"""Gather an experiment's results from storage into ``report.json``'s structure.

Everything comes from what the stages wrote (manifests, teachers/ensemble.json,
student/<run>/student.json), so ``mtkd report`` can re-render any finished experiment.
Inference speed is measured here: all ensemble members against the student, on the same
dev examples.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mtkd.data.prepared import read_prepared, read_task_spec
from mtkd.errors import MtkdError
from mtkd.experiment import (
    ENSEMBLE_SUMMARY,
    TEACHERS_SUMMARY,
    manifest_path,
    member_dir,
    read_manifest,
    student_dir,
)
from mtkd.metrics import average_score
from mtkd.model.mtdnn import num_parameters
from mtkd.model.remote import load_model_from
from mtkd.precision import Resolved, probe_device, resolve_here, stage_precision
from mtkd.raycluster import Placement
from mtkd.records import StudentRecord
from mtkd.report.gains import kd_gains, seed_spread
from mtkd.storage import Storage
from mtkd.training.evaluate import predict_outputs

log = logging.getLogger("mtkd")
STAGES = ("prepare", "teachers", "soft", "student", "report")


def _mean_run(runs: list[StudentRecord]) -> dict[str, Any] | None:
    """A model row for several seeds: per-metric means, plus each seed's average."""
    if not runs:
        return None

    def mean(per_run: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
        return {t: {m: float(np.mean([r[t][m] for r in per_run])) for m in per_run[0][t]}
                for t in per_run[0]}

    metrics = mean([r.metrics for r in runs])
    test = mean([r.test_metrics for r in runs])
    return {"metrics": metrics, "average": average_score(metrics),
            "test": {"metrics": test, "average": average_score(test) if test else None},
            "seeds": [r.seed for r in runs], "seed_averages": [r.average for r in runs],
            "spread": seed_spread(runs),
            "params": runs[0].params, "models": [r.model for r in runs],
            "encoder": runs[0].encoder or None, "tokenization": runs[0].tokenization}


def _encoders(store: Storage) -> dict[str, dict[str, Any]]:
    """Each member's encoder and tokenization, from teachers.json ({name: {encoder,
    tokenization}}; records before mixed tokenizers name the variant's encoder and read
    encoder.path's tokenization)."""
    if not store.exists(TEACHERS_SUMMARY):
        return {}
    return {m["name"]: {"encoder": m.get("encoder") or m.get("variant", {}).get("encoder"),
                        "tokenization": m.get("tokenization")}
            for m in store.read_json(TEACHERS_SUMMARY)["members"]}


def _scored(metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"metrics": metrics, "average": average_score(metrics) if metrics else None}


def measure_speed(store: Storage, model_rels: list[str], examples: int,
                  precision: str = "fp32",
                  tokenizations: dict[str, str | None] | None = None,
                  device: str = "cpu") -> dict[str, Any]:
    """Examples per second of predicting ``examples`` dev rows of every task with each model
    in turn (length-sorted batches, this process, on ``device``, a resolved ``precision``;
    each model reads its own tokenization, ``tokenizations``: {model rel: fingerprint or
    None}); returns per-model rates (examples/s), the rate of all of them together (an
    ensemble predicts with every member), parameters and the examples timed per task."""
    rates, params, total_seconds, examples_per_task = {}, {}, 0.0, {}
    with tempfile.TemporaryDirectory(prefix="mtkd-report-") as tmp:
        for i, rel in enumerate(model_rels):
            model, _ = load_model_from(store, rel, Path(tmp) / f"m{i}", device=device)
            params[rel] = num_parameters(model)
            count, seconds = 0, 0.0
            for task in model.specs:
                split = read_prepared(store, task, "dev", (tokenizations or {}).get(rel))
                split = split.select(range(min(examples, len(split))))
                spec = read_task_spec(store, task)
                predict_outputs(model, spec, split.select(range(min(8, len(split)))),
                                precision=precision, device=device)  # warm-up
                started = time.perf_counter()
                # (outputs come back to the CPU: a CUDA pass is finished when this returns)
                predict_outputs(model, spec, split, precision=precision, device=device)
                seconds += time.perf_counter() - started
                count += len(split)
                examples_per_task[task] = len(split)
            rates[rel] = count / max(seconds, 1e-9)
            total_seconds += seconds
            del model
    # Together: every distinct example gets a prediction from every model that covers it.
    together = sum(examples_per_task.values()) / max(total_seconds, 1e-9)
    return {"per_model": rates, "together": together, "params": params,
            "examples": examples_per_task}


def measure_models(store: Storage, student: tuple[str, str | None],
                   members: dict[str, str | None], examples: int, requested: str, *,
                   device: str = "cpu") -> dict[str, Any]:
    """The report's speed measurement, run where its :class:`~mtkd.raycluster.Placement`
    puts it (a Ray task with a student worker's resources): ``requested``
    (report.precision) resolved on ``device``, then :func:`measure_speed` of the student
    (``student``: its model rel and tokenization) and of all ``members`` together ({model
    rel: tokenization}; none: no ensemble timing). Returns {"resolved": Resolved,
    "student": ..., "ensemble": ... or None}."""
    resolved = resolve_here(requested, device, "report.precision")
    rel, tokenization = student
    return {"resolved": resolved,
            "student": measure_speed(store, [rel], examples, resolved.precision,
                                     {rel: tokenization}, device=device),
            "ensemble": (measure_speed(store, list(members), examples, resolved.precision,
                                       members, device=device) if members else None)}


def _hardware(store: Storage, manifests: dict[str, Any], runs: dict[str, StudentRecord],
              report_precision: Resolved | None, node: str | None = None
              ) -> list[dict[str, Any]]:
    """One row per piece of work: stage, what, requested -> resolved precision, device."""
    rows: list[dict[str, Any]] = []

    def add(stage: str, what: str, recorded: dict[str, Any] | None) -> None:
        if recorded:
            rows.append({"stage": stage, "what": what, **recorded})

    if store.exists(TEACHERS_SUMMARY):
        for member in store.read_json(TEACHERS_SUMMARY)["members"]:
            add("teachers", f"member {member['name']}", member.get("precision"))
    if manifests.get("soft"):
        add("soft", "soft-target inference", manifests["soft"].get("precision"))
    for name, run in runs.items():
        add("student", f"{name} training", run.precision)
        add("student", f"{name} dev scores", run.scored_in)
    add("report", "inference speed", report_precision and {
        **report_precision.to_json(), **({"node": node} if node else {})})
    return rows


def _scoring(store: Storage, runs: dict[str, StudentRecord],
             resolved: Resolved | None) -> dict[str, Any]:
    """The precision every model is scored at (report.precision, resolved per device):
    members and ensemble where the soft stage's actors ran, students and baseline where
    they were exported; {"ensemble": resolved or None, "runs": {run: resolved or None},
    "report": the speed measurement's (None: its device was not probed)}."""
    ensemble = (store.read_json(ENSEMBLE_SUMMARY).get("scoring") or {}
                if store.exists(ENSEMBLE_SUMMARY) else {})
    return {"ensemble": ensemble.get("precision"),
            "runs": {name: run.scored_in for name, run in runs.items()},
            "report": resolved.to_json() if resolved else None}


def _selection(store: Storage, runs: dict[str, StudentRecord]) -> list[dict[str, Any]]:
    """How each model's weights were chosen: teacher members keep their best dev
    evaluation; student runs what ``student.keep`` said (recorded with the run)."""
    rows: list[dict[str, Any]] = []
    if store.exists(TEACHERS_SUMMARY):
        for member in store.read_json(TEACHERS_SUMMARY)["members"]:
            rows.append({"model": f"member {member['name']}", "keep": "best",
                         "step": member.get("best_step"), "steps": member.get("steps")})
    for name, run in runs.items():
        chosen = run.selected or {"keep": "final"}
        rows.append({"model": name, "keep": chosen.get("keep"), "step": chosen.get("step"),
                     "steps": chosen.get("steps")})
    return rows


def _lineage(manifests: dict[str, Any], runs: dict[str, StudentRecord]) -> dict[str, Any]:
    """The lineage of every model the report shows, and which ensemble each distilled
    student learnt from. Raises MtkdError (exit 2) when a distilled student was not
    distilled from the ensemble shown beside it."""
    soft = manifests.get("soft") or {}
    ensemble = soft.get("output_fingerprint")
    members = list(soft.get("members", []))
    for name, run in runs.items():
        if not run.distill:
            continue
        source = run.distilled_from
        if ensemble is None or source is None or source.ensemble != ensemble:
            was = (f"ensemble {source.ensemble[:8]} ({len(source.members)} members)"
                   if source else "an unrecorded ensemble")
            now = (f"ensemble {ensemble[:8]} ({len(members)} members)" if ensemble
                   else "no ensemble (the soft stage has not finished)")
            raise MtkdError(f"student run {name} was distilled from {was}, but this "
                            f"experiment's soft targets are now from {now}; a report would "
                            "set them side by side (fix: `mtkd run CONFIG --from student` "
                            "distils the student again from the current ensemble)")
    prepared = (manifests.get("prepare") or {}).get("tasks") or {}
    teachers = manifests.get("teachers") or {}
    return {"data": {task: {"lineage": info.get("lineage"), "content": info.get("content")}
                     for task, info in prepared.items()},
            "members": {name: {"lineage": lin, "content": teachers.get("contents", {}).get(name)}
                        for name, lin in teachers.get("lineages", {}).items()},
            "ensemble": {"lineage": ensemble, "members": members,
                         "contents": soft.get("contents", {})} if ensemble else None,
            "student_runs": {name: {"lineage": run.lineage, "content": run.content,
                                    "distilled_from": (dataclasses.asdict(run.distilled_from)
                                                       if run.distilled_from else None)}
                             for name, run in runs.items()}}


def collect(store: Storage, speed_examples: int = 256, measure: bool = True,
            precision: str = "auto", bootstrap_samples: int = 1000,
            bootstrap_seed: int = 0, placement: Placement | None = None) -> dict[str, Any]:
    """The report's data (see docs/ARCHITECTURE.md for the keys). ``precision``: that of
    the speed measurement (report.precision), resolved on the device it runs on;
    ``bootstrap_samples``/``bootstrap_seed``: the KD-minus-baseline intervals (0: none);
    ``placement``: where the speed measurement runs (the pipeline: a Ray task with a
    student worker's resources; None: this process's CPU)."""
    placement = placement or Placement()
    timed = measure and bool((read_manifest(store, "student") or {}).get("runs"))
    # checked before anything runs (exit 2 for a precision the device cannot run); the
    # measurement resolves it again where it runs
    resolved = stage_precision("report", "report.precision", precision,
                               placement.probe() if timed else probe_device("cpu"))
    manifests = {s: read_manifest(store, s) for s in STAGES}
    prepared = manifests["prepare"] or {}
    report: dict[str, Any] = {"experiment": store.uri, "tasks": sorted(prepared.get("tasks", {})),
                              "members": [], "ensemble": None, "student": None,
                              "baseline": None, "stages": {}, "artifacts": {}}
    for stage, manifest in manifests.items():
        if manifest:
            report["stages"][stage] = manifest["seconds"]
            report["artifacts"][f"manifest:{stage}"] = store.uri_of(manifest_path(stage))
    encoders = _encoders(store)
    if store.exists(ENSEMBLE_SUMMARY):
        ensemble = store.read_json(ENSEMBLE_SUMMARY)
        names = sorted({m for t in ensemble["tasks"].values() for m in t["members"]})
        for name in names:
            metrics = {t: v["members"][name] for t, v in ensemble["tasks"].items()
                       if name in v["members"]}
            test = {t: v["test"]["members"][name] for t, v in ensemble["tasks"].items()
                    if name in v.get("test", {}).get("members", {})}
            report["members"].append({"name": name, "metrics": metrics,
                                      "average": average_score(metrics),
                                      "test": _scored(test),
                                      **encoders.get(name, {"encoder": None,
                                                            "tokenization": None})})
        metrics = {t: v["ensemble"] for t, v in ensemble["tasks"].items()}
        test = {t: v["test"]["ensemble"] for t, v in ensemble["tasks"].items() if "test" in v}
        # "mean member", defined once (soft stage): per task the mean score of the members
        # covering it, then the mean over tasks (per_task ensembles cover tasks unevenly)
        report["ensemble"] = {"metrics": metrics, "average": average_score(metrics),
                              "size": len(names), "test": _scored(test),
                              "member_mean": ensemble["member_mean_average"]}
        report["artifacts"]["ensemble"] = store.uri_of(ENSEMBLE_SUMMARY)
    runs = {name: StudentRecord.from_json(run)
            for name, run in (manifests["student"] or {}).get("runs", {}).items()}
    report["lineage"] = _lineage(manifests, runs)
    report["student"] = _mean_run([r for r in runs.values() if r.distill])
    report["baseline"] = _mean_run([r for r in runs.values() if not r.distill])
    report["kd_vs_baseline"] = kd_gains(store, runs, bootstrap_samples, bootstrap_seed)
    report["student_runs"] = {n: {"average": r.average, "test_average": r.test_average,
                                  "seed": r.seed, "distill": r.distill}
                              for n, r in runs.items()}
    node = None
    if measure and (report["student"] or report["baseline"]):
        student_run = next(n for n, r in runs.items() if r.distill == bool(report["student"]))
        student_rel = f"{student_dir(student_run)}/final"
        members = {f"{member_dir(m['name'])}/model": m.get("tokenization")
                   for m in report["members"]}
        log.info("[report] timing inference: the student and %d member(s) on up to %d dev "
                 "examples per task", len(members), speed_examples)
        speed, where = placement.run(
            "speed measurement", measure_models, store,
            (student_rel, runs[student_run].tokenization), members, speed_examples,
            precision)
        resolved, node = speed["resolved"], where["node"]
        row = report["student"] or report["baseline"]
        row["examples_per_s"] = speed["student"]["together"]
        if speed["ensemble"]:
            report["ensemble"]["examples_per_s"] = speed["ensemble"]["together"]
            report["ensemble"]["params"] = int(sum(speed["ensemble"]["params"].values()))
            report["speedup"] = speed["student"]["together"] / max(
                speed["ensemble"]["together"], 1e-9)
        report["speed_precision"] = resolved.precision
        report["speed_where"] = where
    report["hardware"] = _hardware(store, manifests, runs, resolved, node)
    report["scoring"] = _scoring(store, runs, resolved)
    report["selection"] = _selection(store, runs)
    for name, run in runs.items():
        report["artifacts"][f"model:{name}"] = run.model
    for name in (m["name"] for m in report["members"]):
        report["artifacts"][f"model:{name}"] = store.uri_of(f"{member_dir(name)}/model")
    return report
