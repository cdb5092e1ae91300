"""Stage ``soft``: every member predicts its tasks' train and dev splits (Ray Data), and
the predictions are averaged per uid into soft targets.

Layout:

* ``soft_targets/_members/<member>/<task>.parquet``: the member's outputs (uid, split,
  logits), then ``done.json`` last: a member whose predictions' lineage (the member's
  lineage and the precision actually used) matches is not re-run, so adding members runs
  inference for the new ones only, and a crash resumes member by member;
* ``soft_targets/<task>/<split>.parquet``: uid, label, soft_target (averaged
  probabilities, or [mean score] for regression), teacher_logits (mean logits),
  num_members; then ``targets.json`` last, the task's record: its lineage (aggregation,
  temperature, the lineages of the members' predictions and of the task's data), the
  members it averages, and its dev metrics;
* ``teachers/ensemble.json``: dev metrics of every member and of the ensemble.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtkd.config import ExperimentConfig, SoftTargetsConfig
from mtkd.data.columns import random_access_columns
from mtkd.data.prepared import prepared_splits, read_prepared, read_task_spec, task_lineages
from mtkd.errors import MtkdError
from mtkd.experiment import (
    ENSEMBLE_SUMMARY,
    StageContext,
    lineage,
    member_dir,
    member_record,
    outputs_fingerprint,
    predictions_dir,
    read_manifest,
    reusable,
    soft_targets_file,
    soft_targets_record,
)
from mtkd.metrics import average_score, compute_task_metrics, labelled, task_score
from mtkd.padding import real_candidates
from mtkd.precision import Resolved, stage_precision
from mtkd.progress import Progress
from mtkd.raycluster import ensure_ray, probe_work_device
from mtkd.records import (
    MemberRecord,
    PredictionsRecord,
    SoftTargetsRecord,
    digest,
    files_fingerprint,
)
from mtkd.resources import ray_resources, task_options
from mtkd.soft.aggregate import aggregate, check_targets, stack_members
from mtkd.soft.predictor import OUTPUT_SCHEMA, MemberPredictor
from mtkd.storage import Storage

log = logging.getLogger("mtkd")
TARGET_SPLITS = ("train", "dev")
"""Splits that get soft targets: the student trains on train; dev scores it. Members
predict every prepared split (test too, scored where labelled)."""


def actor_pool_size(config: SoftTargetsConfig, resources: dict[str, float]) -> int:
    """Actors the cluster can hold. On CPU one core is left for the driver, which collects
    the actors' outputs and writes them (one actor at least, however large its request)."""
    if config.num_actors:
        return config.num_actors
    per = config.resources_per_actor
    if per.gpu > 0:
        return max(1, int(resources.get("GPU", 0) // per.gpu))
    free = max(resources.get("CPU", 1) - 1, per.cpu)
    return max(1, int(free // per.cpu))


def _sequences(row: Any, layout: Any) -> list:
    """A row's token ids as a list of sequences: its candidates (ranking) or just itself."""
    return layout.sequences(row.tolist() if isinstance(row, np.ndarray) else row)


def member_rows(store: Storage, tasks: list[str],
                splits: tuple[str, ...] | None = None,
                tokenization: str | None = None) -> pa.Table:
    """Rows of ``tasks`` (``splits``, default every prepared split: train, dev, test) in the
    member's ``tokenization`` (None: encoder.path's), one task after another, longest rows
    first.

    Rows of a task are sorted by length so batches are bucketed. The order is longest
    first, and the task with the longest rows comes first: the actors then take the
    expensive blocks early and the pool ends on short, cheap ones instead of one actor
    finishing the longest block while the others idle.

    Token columns become list<list<int32>> (one sequence per row, or per candidate for
    ranking) so that every task fits one schema.
    """
    per_task: list[tuple[float, list[pa.Table]]] = []
    for task in tasks:
        layout = read_task_spec(store, task).kind.layout
        tables, lengths = [], []
        have = prepared_splits(store, task)
        for split in [s for s in splits if s in have] if splits else have:
            data = read_prepared(store, task, split, tokenization)
            columns = random_access_columns(data, ("uid", "input_ids", "token_type_ids",
                                                   "length"))
            ids, types = columns["input_ids"], columns["token_type_ids"]
            length = np.asarray(columns["length"])
            lengths.append(length)
            order = np.argsort(-length, kind="stable")
            tables.append(pa.table({
                "task": [task] * len(data), "split": [split] * len(data),
                "uid": [columns["uid"][i] for i in order],
                "input_ids": pa.array([_sequences(ids[i], layout) for i in order],
                                      pa.list_(pa.list_(pa.int32()))),
                "token_type_ids": pa.array([_sequences(types[i], layout) for i in order],
                                           pa.list_(pa.list_(pa.int32()))),
            }))
        all_lengths = np.concatenate(lengths)
        per_task.append((float(all_lengths.mean()) if len(all_lengths) else 0.0, tables))
    per_task.sort(key=lambda item: -item[0])  # stable: equal means keep the config order
    return pa.concat_tables([table for _, tables in per_task for table in tables])


def infer_member(config: ExperimentConfig, store: Storage, member: MemberRecord,
                 tasks: list[str], label: str = "",
                 splits: tuple[str, ...] | None = None,
                 precision: tuple[str, str] | None = None) -> pa.Table:
    """Run the member over its tasks' rows (``splits``: default every prepared split) with
    a Ray Data actor pool; a progress line (``label``: which member of how many) at least
    every 30 s. ``precision``: (setting, its key), default soft_targets.precision's."""
    import ray

    soft = config.soft_targets
    # the member reads its own encoder's tokenization (None in records before mixed
    # tokenizers, when every member read encoder.path's); outputs join by uid after this
    rows = member_rows(store, tasks, splits, member.tokenization)
    actors = actor_pool_size(soft, ray.cluster_resources())
    # Several blocks per actor so that the last ones (the shortest rows) balance the pool.
    blocks = max(1, min(actors * 8, len(rows) // max(soft.batch_size, 1)))
    per = soft.resources_per_actor
    request = ray_resources(per)
    # mtkd prints one progress line (rows, ex/s, ETA) at least every 30 s; Ray Data's own
    # non-terminal progress log would add a dozen lines every 10 s.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # The blocks are cut here, not by Dataset.repartition: that runs Ray tasks that need
    # a CPU of their own, and actors asking for every CPU of the cluster (e.g.
    # resources_per_actor {cpu: 2} on a 2-CPU machine) starved them: a silent hang.
    # From a list of tables Ray Data starts with these blocks and runs no task before
    # the actors.
    dataset = ray.data.from_arrow(_blocks(rows, blocks))
    outputs = dataset.map_batches(
        MemberPredictor, batch_size=soft.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"storage": store.uri_of(member_dir(member.name)),
                               "model_rel": "model",
                               "precision": (precision or (soft.precision,))[0],
                               "precision_key": (precision or ("", "soft_targets.precision"))[1],
                               "threads": max(1, round(per.cpu)),
                               "request": request},
        **task_options(request))
    what = " ".join(x for x in ("soft", label, member.name) if x)
    tables, done, progress = [], 0, None
    for block in outputs.iter_batches(batch_size=None, batch_format="pyarrow"):
        tables.append(block)
        done += len(block)
        if progress is None:  # rate and ETA from the first block on, not actor start-up
            progress = Progress(what, len(rows), "ex", start_done=done)
        progress.update(done)
    return pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()


def _blocks(rows: pa.Table, count: int) -> list[pa.Table]:
    """``rows`` cut into ``count`` contiguous blocks of near-equal size (zero-copy slices),
    in order; fewer when there are fewer rows. Never an empty list."""
    count = max(1, min(count, rows.num_rows))
    bounds = np.linspace(0, rows.num_rows, count + 1).round().astype(int)
    return [rows.slice(int(a), int(b - a)) for a, b in itertools.pairwise(bounds)]


def _write_parquet(store: Storage, rel: str, table: pa.Table) -> str:
    """Write ``table`` at ``rel``; returns the sha256 of the bytes written."""
    data = _parquet(table)
    store.write_atomic(rel, data)
    return digest(data)


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _read_parquet(store: Storage, rel: str) -> pa.Table:
    return pq.read_table(io.BytesIO(store.read_bytes(rel)))


def predictions_lineage(config: ExperimentConfig, member_lineage: str, precision: str) -> str:
    """One member's predictions: its model, and the precision they were made in (resolved
    on the actors' device, not as asked for)."""
    effective = dataclasses.replace(
        config, soft_targets=dataclasses.replace(config.soft_targets, precision=precision))
    return lineage("predictions", effective, inputs={"member": member_lineage,
                                                     "splits": "train, dev, test"})


SCORING_SPLITS = ("dev", "test")
"""The splits members and the ensemble are scored on (test where labelled)."""


def scoring_dir(member: str) -> str:
    """A member's dev/test outputs at the scoring precision (report.precision), when that
    differs from the soft-target precision: ``<task>.parquet`` and ``done.json``."""
    return f"{predictions_dir(member)}/scoring"


def scoring_predictions_lineage(config: ExperimentConfig, member_lineage: str,
                                precision: str) -> str:
    """A member's dev/test outputs made at the scoring ``precision`` (resolved)."""
    effective = dataclasses.replace(
        config, soft_targets=dataclasses.replace(config.soft_targets, precision=precision))
    return lineage("predictions", effective, inputs={"member": member_lineage,
                                                     "splits": ", ".join(SCORING_SPLITS)})


def scores_lineage(config: ExperimentConfig, precision: str,
                   predictions: dict[str, str]) -> str:
    """The member and ensemble scores: the scoring precision (report.precision as
    resolved) and the lineages of the member outputs they are computed from."""
    effective = dataclasses.replace(
        config, report=dataclasses.replace(config.report, precision=precision))
    return lineage("scores", effective, inputs={"predictions": predictions})


def targets_lineage(config: ExperimentConfig, task: str, predictions: dict[str, str],
                    data: str | None) -> str:
    """One task's soft targets: the aggregation settings, the predictions of the members
    that cover the task ({member: predictions lineage}), the task's tokenized data."""
    return lineage("soft_targets", config, inputs={"predictions": predictions, "data": data,
                                                   "task": task})


def _preflight(config: ExperimentConfig) -> tuple[Resolved | None, Resolved | None]:
    """The precisions the actors will run in, on the device an actor gets (refused with
    exit 2 if one cannot run there, warned if it runs badly): the soft targets'
    (soft_targets.precision) and the scoring one (report.precision, the precision every
    model is scored at)."""
    soft = config.soft_targets
    device = probe_work_device(config.ray, soft.resources_per_actor)
    return (stage_precision("soft", "soft_targets.precision", soft.precision, device),
            stage_precision("soft", "report.precision", config.report.precision, device))


def scoring_apart(config: ExperimentConfig, resolved: Resolved | None,
                  scoring: Resolved | None) -> bool:
    """Whether members need a pass of their own over dev/test to be scored: the scoring
    precision differs from the soft targets' (as resolved; as set when the device was not
    probed). Otherwise the soft pass's dev/test outputs are the scoring outputs."""
    if resolved is not None and scoring is not None:
        return resolved.precision != scoring.precision
    return config.soft_targets.precision != config.report.precision


def _predict_members(config: ExperimentConfig, store: Storage,
                     members: list[MemberRecord], tasks: set[str],
                     resolved: Resolved | None, rebuild: bool = False,
                     scoring: Resolved | None = None, apart: bool = False
                     ) -> dict[str, str]:
    """Predictions of every member not yet done; returns {member: predictions lineage}.

    ``apart``: the members' dev/test outputs for scoring are made in a second pass at
    ``scoring`` (report.precision) into :func:`scoring_dir`; the returned lineages are then
    those of the scoring outputs under ``"scoring:<member>"`` keys besides the soft ones."""
    precision = resolved.precision if resolved else config.soft_targets.precision
    lineages: dict[str, str] = {}
    for i, member in enumerate(members, 1):
        lineages[member.name] = _predict_one(
            config, store, member, tasks, f"{i}/{len(members)}", rebuild,
            predictions_lineage(config, member.lineage, precision), resolved,
            predictions_dir(member.name), None, None)
    if not apart:
        return lineages
    at = scoring.precision if scoring else config.report.precision
    for i, member in enumerate(members, 1):
        lineages[f"scoring:{member.name}"] = _predict_one(
            config, store, member, tasks, f"{i}/{len(members)} scoring", rebuild,
            scoring_predictions_lineage(config, member.lineage, at), scoring,
            scoring_dir(member.name), SCORING_SPLITS,
            (config.report.precision, "report.precision"))
    return lineages


def _predict_one(config: ExperimentConfig, store: Storage, member: MemberRecord,
                 tasks: set[str], label: str, rebuild: bool, expected: str,
                 resolved: Resolved | None, folder: str,
                 splits: tuple[str, ...] | None, precision: tuple[str, str] | None) -> str:
    """One member's outputs over ``splits`` (None: every prepared one) into ``folder``,
    unless its record there carries ``expected``; returns ``expected``."""
    name = member.name
    record_path = f"{folder}/done.json"
    if not rebuild and reusable(store, record_path, expected,
                                PredictionsRecord) is not None:
        log.info("[soft] %s %s: predictions reused", label, name)
        return expected
    ensure_ray(config.ray)
    started = time.time()
    own = [t for t in member.tasks if t in tasks]
    store.delete(record_path)  # an old record never describes new files
    result = infer_member(config, store, member, own, label, splits, precision)
    seconds = time.time() - started
    files = {}
    for task in own:
        mask = np.asarray(result["task"].to_pylist()) == task
        files[f"{task}.parquet"] = _write_parquet(
            store, f"{folder}/{task}.parquet",
            result.filter(pa.array(mask)).drop(["task"]))
    record = PredictionsRecord(lineage=expected, content=files_fingerprint(files),
                               member=member.lineage, tasks=own, rows=len(result),
                               seconds=round(seconds, 2),
                               precision=resolved.to_json() if resolved else None)
    store.write_json_atomic(record_path, record.to_json())
    log.info("[soft] %s %s: %d examples in %.1f s (%.0f ex/s)", label, name,
             len(result), seconds, len(result) / max(seconds, 1e-9))
    return expected


def _stacked(outputs: dict[str, pa.Table], split: str, uids: Any, task: str) -> np.ndarray:
    """Every member's outputs of ``split`` as [M, N, K], rows in ``uids`` order."""
    per_member = []
    for table in outputs.values():
        chosen = table.filter(pa.compute.equal(table["split"], split))
        per_member.append({u: np.asarray(v, dtype=np.float64) for u, v in
                           zip(chosen["uid"].to_pylist(), chosen["logits"].to_pylist(),
                               strict=True)})
    return stack_members(per_member, uids, task)


def _aggregated(outputs: dict[str, pa.Table], split: str, uids: Any, spec: Any,
                soft: SoftTargetsConfig) -> tuple[np.ndarray, Any]:
    """The members' outputs of ``split`` stacked [M, N, K] and their checked aggregate."""
    stacked = _stacked(outputs, split, uids, spec.name)
    targets = aggregate(stacked, list(uids), regression=spec.kind.is_regression,
                        method=soft.aggregation, temperature=soft.temperature)
    check_targets(targets, uids, spec.name, split)
    return stacked, targets


def _task_targets(config: ExperimentConfig, store: Storage, task: str,
                  members: list[MemberRecord], apart: bool = False
                  ) -> tuple[dict[str, Any], dict[str, str]]:
    """Aggregate, check and write one task's soft targets (train, dev); returns the dev
    metrics of every member and of the ensemble, and under ``"test"`` the same on the
    labelled test rows where the task has them; and the files written ({file: sha256}).

    The metrics are computed from the members' outputs at the scoring precision: those of
    the soft pass, or (``apart``) those of the scoring pass in :func:`scoring_dir`, whose
    ensemble is aggregated the same way as the soft targets."""
    spec = read_task_spec(store, task)
    soft = config.soft_targets
    outputs = {m.name: _read_parquet(store, f"{predictions_dir(m.name)}/{task}.parquet")
               for m in members}
    scoring = ({m.name: _read_parquet(store, f"{scoring_dir(m.name)}/{task}.parquet")
                for m in members} if apart else outputs)
    metrics: dict[str, Any] = {"members": {}}
    files: dict[str, str] = {}
    for split in prepared_splits(store, task):
        prepared = read_prepared(store, task, split)
        uids, labels = prepared["uid"], np.asarray(prepared["label"])
        if split == "test" and not labelled(spec, labels).any():
            continue
        stacked, targets = _aggregated(outputs, split, uids, spec, soft)
        if split in TARGET_SPLITS:
            files[f"{split}.parquet"] = _write_targets(store, task, split, targets, labels)
        if split in SCORING_SPLITS:
            if apart:
                stacked, targets = _aggregated(scoring, split, uids, spec, soft)
            scored = metrics if split == "dev" else metrics.setdefault("test", {"members": {}})
            for name, member_out in zip(outputs, stacked, strict=True):
                scored["members"][name] = compute_task_metrics(spec, _outputs(member_out,
                                                                              spec), labels)
            scored["ensemble"] = compute_task_metrics(spec, _ensemble_outputs(targets, spec),
                                                      labels)
    member_scores = [task_score(m) for m in metrics["members"].values()]
    metrics["member_mean"] = float(np.mean(member_scores))
    metrics["ensemble_score"] = task_score(metrics["ensemble"])
    return metrics, files


def _outputs(member_out: np.ndarray, spec: Any) -> np.ndarray:
    """One member's [N, K] output block as the metrics expect it ([N] for regression)."""
    return member_out[:, 0] if spec.kind.is_regression else member_out


def _ensemble_outputs(targets: Any, spec: Any) -> np.ndarray:
    """The ensemble's outputs as the metrics take them: the mean score (regression), the
    probabilities (classification), or the log-probabilities of the candidates (ranking:
    the same order as the probabilities; padded candidates, probability 0, get
    :data:`~mtkd.padding.PAD_SCORE`)."""
    if targets.probs is None:
        return targets.score
    return spec.kind.layout.metric_outputs(targets.probs, targets.logits)


def _write_targets(store: Storage, task: str, split: str, targets: Any,
                   labels: np.ndarray) -> str:
    if targets.probs is None:
        soft = [[float(s)] for s in targets.score]
        logits = soft
    else:
        keep = real_candidates(targets.logits)
        soft = [p[k].tolist() for p, k in zip(targets.probs, keep, strict=True)]
        logits = [x[k].tolist() for x, k in zip(targets.logits, keep, strict=True)]
    table = pa.table({"uid": targets.uids, "label": labels,
                      "soft_target": pa.array(soft, pa.list_(pa.float32())),
                      "teacher_logits": pa.array(logits, pa.list_(pa.float32())),
                      "num_members": pa.array([targets.num_members] * len(labels), pa.int32())})
    return _write_parquet(store, soft_targets_file(task, split), table)


def run_soft(ctx: StageContext) -> dict[str, Any]:
    """Predict with every member not yet done, then aggregate every teacher task (and
    record each task's soft-target lineage)."""
    config, store = ctx.config, ctx.store
    teachers = read_manifest(store, "teachers")
    if not teachers:
        raise MtkdError("the soft stage needs the teachers stage first (fix: run `mtkd run` "
                        "without --only)")
    members = [MemberRecord.from_json(store.read_json(member_record(name)))
               for name in teachers["members"]]
    tasks = {t.name for t in config.tasks if t.teacher}
    resolved, scoring = _preflight(config)
    apart = scoring_apart(config, resolved, scoring)
    predictions = _predict_members(config, store, members, tasks, resolved, ctx.rebuild,
                                   scoring, apart)
    data = task_lineages(store)
    scored_from = {m.name: predictions[f"scoring:{m.name}" if apart else m.name]
                   for m in members}
    # the precision every model is scored at: report.precision, resolved on the actors'
    # device (as set when that device was not probed)
    scored_in = (scoring.to_json() if scoring else
                 {"requested": config.report.precision, "precision": None})
    scores = scores_lineage(config, scoring.precision if scoring else config.report.precision,
                            scored_from)
    report: dict[str, Any] = {"tasks": {}, "aggregation": config.soft_targets.aggregation,
                              "precision": resolved.to_json() if resolved else None,
                              "scoring": {"lineage": scores, "precision": scored_in,
                                          "separate_pass": apart}}
    lineages: dict[str, str] = {}
    contents: dict[str, str | None] = {}
    for task in sorted(tasks):
        covering = [m for m in members if task in m.tasks]
        expected = targets_lineage(config, task, {m.name: predictions[m.name]
                                                  for m in covering}, data.get(task))
        lineages[task] = expected
        # Aggregating is cheap and re-checks every member's predictions (a uid missing,
        # a non-finite output), so a running soft stage always does it.
        store.delete(soft_targets_record(task))
        metrics, files = _task_targets(config, store, task, covering, apart)
        record = SoftTargetsRecord(
            lineage=expected, content=files_fingerprint(files),
            members=[m.name for m in covering], metrics=metrics,
            scoring={"lineage": scores_lineage(
                config, scoring.precision if scoring else config.report.precision,
                {m.name: scored_from[m.name] for m in covering}), "precision": scored_in})
        store.write_json_atomic(soft_targets_record(task), record.to_json())
        contents[task] = record.content
        report["tasks"][task] = info = metrics
        log.info("[soft] %-16s %d member(s): ensemble %.2f vs mean member %.2f", task,
                 len(covering), info["ensemble_score"], info["member_mean"])
    report["ensemble_average"] = average_score(
        {t: v["ensemble"] for t, v in report["tasks"].items()})
    report["member_mean_average"] = float(np.mean([v["member_mean"]
                                                   for v in report["tasks"].values()]))
    ensemble = outputs_fingerprint(lineages)
    report["lineage"] = ensemble
    report["members"] = [m.name for m in members]
    store.write_json_atomic(ENSEMBLE_SUMMARY, report)
    log.info("[soft] ensemble %s (%d members): average %.2f vs mean member %.2f; %s",
             ensemble[:8], len(members), report["ensemble_average"],
             report["member_mean_average"], store.uri_of(ENSEMBLE_SUMMARY))
    return {"ensemble_average": report["ensemble_average"],
            "precision": report["precision"], "scoring": report["scoring"],
            "member_mean_average": report["member_mean_average"],
            "members": report["members"], "lineages": lineages, "contents": contents,
            "output_fingerprint": ensemble,
            "artifacts": [soft_targets_file(t, s) for t in sorted(tasks)
                          for s in TARGET_SPLITS]
            + [ENSEMBLE_SUMMARY]}
