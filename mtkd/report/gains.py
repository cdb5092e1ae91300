"""The report's seed statistics: mean ± std over seeds of the student and the baseline,
and KD minus baseline with a paired-bootstrap interval, from the runs' stored per-example
outputs (``student/<run>/predictions/<split>.parquet``). The statistics themselves are in
:mod:`mtkd.report.intervals`; this module reads, pairs and aligns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mtkd.data.prepared import read_task_spec
from mtkd.errors import MtkdError
from mtkd.experiment import student_dir
from mtkd.metrics import average_score, task_score
from mtkd.records import StudentRecord, digest
from mtkd.report.intervals import PairedTask, mean_std, paired_bootstrap
from mtkd.storage import Storage
from mtkd.student.predictions import SPLITS, predictions_file, read_predictions


def seed_spread(runs: list[StudentRecord]) -> dict[str, Any]:
    """Per split (dev; test where labelled), per task and on the average: the mean and
    sample std (ddof=1) over the runs' task scores; ``std`` is None for one seed."""
    out: dict[str, Any] = {}
    for split, of in (("dev", lambda r: r.metrics), ("test", lambda r: r.test_metrics)):
        scored = [of(r) for r in runs if of(r)]
        if not scored:
            continue
        tasks = sorted(set.intersection(*(set(m) for m in scored)))
        out[split] = {"tasks": {t: mean_std([task_score(m[t]) for m in scored]) for t in tasks},
                      "average": mean_std([average_score({t: m[t] for t in tasks})
                                           for m in scored]) if tasks else None}
    return out


def verdict(row: Mapping[str, Any]) -> str:
    """An interval in plain words."""
    if row["low"] > 0:
        return "KD better, distinguishable from noise (the interval excludes 0)"
    if row["high"] < 0:
        return "KD worse, distinguishable from noise (the interval excludes 0)"
    return "not distinguishable from noise (the interval includes 0)"


def _aligned(task: str, reference: np.ndarray, uids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` reordered to the ``reference`` uid order; ValueError when the uids differ."""
    if len(uids) != len(reference) or set(uids) != set(reference):
        raise ValueError(f"{task}: the runs were scored on different examples")
    position = {u: i for i, u in enumerate(uids)}
    return values[[position[u] for u in reference]]


def _read(store: Storage, run: StudentRecord, split: str) -> dict[str, dict[str, Any]]:
    rel = f"{student_dir(run.name)}/{predictions_file(split)}"
    data = store.read_bytes(rel)
    if digest(data) != run.predictions[split]:
        raise MtkdError(f"{store.uri_of(rel)} is not the file student run {run.name}'s record "
                        "describes (changed after the run); fix: `mtkd run CONFIG --from "
                        "student --force` to train and score the student runs again")
    return read_predictions(data)


def kd_gains(store: Storage, runs: Mapping[str, StudentRecord], samples: int,
             seed: int) -> dict[str, Any] | None:
    """KD minus baseline per split: the paired bootstrap's result (see
    :func:`mtkd.report.intervals.paired_bootstrap`) plus a plain-words ``verdict`` per row,
    the paired ``seeds`` and ``notes`` on what was left out; None without both a distilled
    and a baseline run, or when ``samples`` is 0."""
    kd = {r.seed: r for r in runs.values() if r.distill}
    base = {r.seed: r for r in runs.values() if not r.distill}
    seeds = sorted(set(kd) & set(base))
    if samples == 0 or not seeds:
        return None
    result: dict[str, Any] = {"seeds": seeds, "samples": samples, "bootstrap_seed": seed,
                              "notes": []}
    unpaired = sorted(set(kd) ^ set(base))
    if unpaired:
        result["notes"].append(f"seed(s) {', '.join(map(str, unpaired))} ran only with or "
                               "only without KD and are left out of the comparison")
    for split in SPLITS:
        pairs = [(kd[s], base[s]) for s in seeds]
        missing = sorted({r.name for pair in pairs for r in pair if split not in r.predictions})
        if missing:
            if split == "dev" or any(split in r.predictions for pair in pairs for r in pair):
                result["notes"].append(
                    f"{split}: no stored per-example outputs for {', '.join(missing)} (a run "
                    "recorded by an mtkd that did not store them; `mtkd run CONFIG --from "
                    "student --force` trains and stores them), so no interval")
            continue
        loaded = [(_read(store, k, split), _read(store, b, split)) for k, b in pairs]
        tasks: dict[str, PairedTask] = {}
        for task in sorted(set.intersection(*(set(p) for pair in loaded for p in pair))):
            first = loaded[0][0][task]
            reference = first["uids"]
            try:
                kd_out = [_aligned(task, reference, k[task]["uids"], k[task]["outputs"])
                          for k, _ in loaded]
                base_out = [_aligned(task, reference, b[task]["uids"], b[task]["outputs"])
                            for _, b in loaded]
            except ValueError as exc:
                result["notes"].append(f"{split}: {exc}; left out")
                continue
            spec = read_task_spec(store, task)
            labels = first["labels"]
            if not spec.kind.is_regression:
                labels = labels.astype(np.int64)
            tasks[task] = PairedTask(spec, labels, kd_out, base_out)
        if not tasks:
            continue
        boot = paired_bootstrap(tasks, samples=samples, seed=seed)
        for row in [*boot["tasks"].values(), boot["average"]]:
            row["verdict"] = verdict(row)
        result[split] = boot
    return result
