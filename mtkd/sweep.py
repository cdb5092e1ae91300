"""The ensemble-size sweep: how many teachers are worth it.

``mtkd sweep CONFIG --sizes 1,2,4,8`` runs one experiment per ensemble size k, where size
k is the first k members of one plan (:func:`mtkd.teachers.plan.plan_members`: member i
depends on i only). Every size is an experiment view, ``<name>/sweep/size-<k>/``
(:func:`mtkd.experiment.experiment_store`), that keeps its own soft targets, KD students
(``student.seeds``) and report, and shares with ``<name>/`` the tokenized data, the teacher
members, their predictions and the no-KD baselines
(:func:`mtkd.experiment.shared_across_sizes`). So the largest size's members are trained
once (first, in one Ray Tune run, as many side by side as the cluster holds), each
member's predictions are computed once, the baseline students (which read no soft
targets) once, and each size adds only its soft targets and its KD students. A
``mtkd run`` of the same config at size k shares the same members.

Interrupting and re-running resumes: finished members, predictions, students and whole
sizes are reused by their lineages (the pipeline's manifests), and the sweep's own outputs
(``sweep/sweep.json``, ``sweep.md``, ``sweep.png``) are rewritten from the sizes' reports.

Cost of a size: the measured wall time of what it consists of (its k members' training,
their predictions, its KD students) times the resources each requested, in CPU- or
GPU-hours, priced at :class:`Prices`. The plateau (:func:`plateau_size`) is the size after
which the student stops gaining measurably.

Source: the MT-DNN-KD paper (Liu et al. 2019, section 3) distils an ensemble of a fixed
size; the size axis, "scaling the ensemble", is this project's mission statement.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtkd.config import ExperimentConfig
from mtkd.errors import MtkdError
from mtkd.experiment import (
    REPORT_DIR,
    SWEEP_DIR,
    experiment_store,
    member_record,
    predictions_record,
    read_manifest,
    shared_across_sizes,
    size_view_dir,
)
from mtkd.records import MemberRecord, PredictionsRecord, StudentRecord
from mtkd.storage import Storage

log = logging.getLogger("mtkd")

SWEEP_JSON = f"{SWEEP_DIR}/sweep.json"
SWEEP_MD = f"{SWEEP_DIR}/sweep.md"
SWEEP_PNG = f"{SWEEP_DIR}/sweep.png"


def _on_demand(instance: str, units: int) -> float:
    from mtkd.clusterconfig import ON_DEMAND_USD_PER_HOUR

    return ON_DEMAND_USD_PER_HOUR[instance] / units


@dataclass(frozen=True)
class Prices:
    """Dollars per resource-hour (defaults: the verified on-demand prices of
    cluster/README.md, :data:`mtkd.clusterconfig.ON_DEMAND_USD_PER_HOUR`).

    ``cpu_hour_usd``: one vCPU for an hour, m5.2xlarge's $0.384/h over its 8 vCPUs;
    ``gpu_hour_usd``: one GPU for an hour, p3.2xlarge's $3.06/h (one V100, the paper's GPU;
    the instance's CPUs come with it, so GPU work is charged by GPU-hours only)."""

    cpu_hour_usd: float = field(default_factory=lambda: _on_demand("m5.2xlarge", 8))
    gpu_hour_usd: float = field(default_factory=lambda: _on_demand("p3.2xlarge", 1))


def parse_sizes(text: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]`` (sorted, duplicates dropped).

    Raises MtkdError naming the bad entry when one is not a positive integer."""
    sizes: set[int] = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not (part.isascii() and part.isdigit()) or int(part) < 1:
            raise MtkdError(f"--sizes {text}: {part!r} is not a positive whole number (fix: "
                            "give ensemble sizes separated by commas, e.g. --sizes 1,2,4,8)")
        sizes.add(int(part))
    return sorted(sizes)


def size_config(config: ExperimentConfig, size: int) -> ExperimentConfig:
    """The experiment of one size: ``teachers.size`` = ``size`` (``min_members`` capped at
    it) in its sweep view."""
    teachers = dataclasses.replace(config.teachers, size=size,
                                   min_members=min(config.teachers.min_members, size))
    return dataclasses.replace(config, teachers=teachers, sweep_view=True)


def check_sweep(config: ExperimentConfig, sizes: list[int]) -> None:
    """Refuse (MtkdError, exit 2) what cannot be swept, before anything runs."""
    from mtkd.teachers.plan import plan_members

    if not config.student.distill:
        raise MtkdError("the sweep distils one student per ensemble size, but student.distill "
                        "is false (fix: set student.distill: true)")
    if config.sweep_view:
        raise MtkdError("sweep_view is set by `mtkd sweep` for each size, not in a config "
                        "(fix: remove sweep_view from the config)")
    largest = size_config(config, sizes[-1])
    planned = {m.index for m in plan_members(largest)}
    if len(planned) < sizes[-1]:
        raise MtkdError(
            f"--sizes asks for {sizes[-1]} members, but teachers.variation lists "
            f"{len(planned)} (strategy 'list' plans one member per entry; fix: add entries "
            f"to teachers.variation.members or use sizes up to {len(planned)})")


@dataclass
class SizeResult:
    """One size's quality and cost (a row of the sweep table)."""

    size: int
    members: list[str]
    ensemble: dict[str, float | None]
    """{"dev": average, "test": average or None, "member_mean": dev mean member}"""
    student: dict[str, Any]
    """KD student over seeds: {"dev"/"test": {"mean", "std", "n", "per_seed"}}"""
    baseline: dict[str, Any]
    """The no-KD baseline over seeds (shared by every size), same keys."""
    cost: dict[str, float]
    """Resource-hours and dollars: cpu_hours, gpu_hours, usd, and the parts' hours."""
    view: str
    """The size's experiment view (its report is there)."""


def _seed_stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof 1; None for one seed) and count."""
    if not values:
        return {"mean": None, "std": None, "n": 0, "per_seed": []}
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values), "per_seed": [float(v) for v in values]}


def _runs(view: Storage) -> list[StudentRecord]:
    manifest = read_manifest(view, "student") or {}
    return [StudentRecord.from_json(r) for r in manifest.get("runs", {}).values()]


def _over_seeds(runs: list[StudentRecord]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r.seed)
    test = [r.test_average for r in ordered]
    return {"dev": _seed_stats([r.average for r in ordered if r.average is not None]),
            "test": _seed_stats([t for t in test if t is not None])
            if all(t is not None for t in test) else _seed_stats([]),
            "seeds": [r.seed for r in ordered]}


def _units(resources: Any, count: int = 1) -> tuple[str, float]:
    """("gpu", GPUs) when the work asked for GPUs, else ("cpu", CPUs), times ``count``."""
    if resources.gpu > 0:
        return "gpu", resources.gpu * count
    return "cpu", resources.cpu * count


def size_cost(store: Storage, view: Storage, config: ExperimentConfig, members: list[str],
              prices: Prices) -> dict[str, float]:
    """Measured resource-hours of one size: its members' training (``wall_seconds`` x
    workers x ``teachers.resources_per_member``), their predictions (``seconds`` x
    ``soft_targets.resources_per_actor`` x ``num_actors``, 1 when automatic: a lower
    bound) and its KD students (``seconds`` x ``num_workers`` x
    ``student.resources_per_worker``, GPUs when ``student.use_gpu``), in hours, and their
    price. ``store`` is the parent experiment (members live there), ``view`` the size's."""
    hours = {"cpu": 0.0, "gpu": 0.0}
    parts = {"members_hours": 0.0, "predictions_hours": 0.0, "students_hours": 0.0}
    for name in members:
        record = MemberRecord.from_json(store.read_json(member_record(name)))
        kind, units = _units(config.teachers.resources_per_member, record.workers)
        hours[kind] += record.wall_seconds * units / 3600
        parts["members_hours"] += record.wall_seconds * units / 3600
        if store.exists(predictions_record(name)):
            done = PredictionsRecord.from_json(store.read_json(predictions_record(name)))
            soft = config.soft_targets
            kind, units = _units(soft.resources_per_actor, soft.num_actors or 1)
            hours[kind] += done.seconds * units / 3600
            parts["predictions_hours"] += done.seconds * units / 3600
    student = config.student
    per_worker = student.worker_resources
    for run in _runs(view):
        if run.distill:
            kind, units = _units(per_worker, student.num_workers)
            hours[kind] += run.seconds * units / 3600
            parts["students_hours"] += run.seconds * units / 3600
    usd = hours["cpu"] * prices.cpu_hour_usd + hours["gpu"] * prices.gpu_hour_usd
    return {"cpu_hours": hours["cpu"], "gpu_hours": hours["gpu"], "usd": usd, **parts}


def collect_size(store: Storage, config: ExperimentConfig, size: int,
                 prices: Prices) -> SizeResult:
    """One finished size's row, from its report.json and records."""
    view = store.view(size_view_dir(size), shared_across_sizes)
    report = view.read_json(f"{REPORT_DIR}/report.json")
    ensemble = report.get("ensemble") or {}
    members = [m["name"] for m in report.get("members", [])]
    runs = _runs(view)
    return SizeResult(
        size=size, members=members,
        ensemble={"dev": ensemble.get("average"),
                  "test": (ensemble.get("test") or {}).get("average"),
                  "member_mean": ensemble.get("member_mean")},
        student=_over_seeds([r for r in runs if r.distill]),
        baseline=_over_seeds([r for r in runs if not r.distill]),
        cost=size_cost(store, view, size_config(config, size), members, prices), view=view.uri)


def main_split(rows: list[SizeResult]) -> str:
    """"test" when every size's student has test scores (the honest choice: dev chose the
    members' checkpoints), else "dev"."""
    return "test" if rows and all(r.student["test"]["n"] for r in rows) else "dev"


def plateau_size(rows: list[SizeResult], split: str) -> int | None:
    """The size after which the student stops gaining: the smallest size k such that no
    larger size's student mean exceeds k's by more than two standard errors of the
    difference, sqrt(s_k^2/n_k + s_j^2/n_j) (sample std over seeds; 0 with one seed, where
    any rise counts). None without rows."""
    def stats(row: SizeResult) -> tuple[float, float]:
        s = row.student[split]
        se2 = (s["std"] ** 2 / s["n"]) if s["std"] is not None else 0.0
        return s["mean"], se2

    ordered = sorted((r for r in rows if r.student[split]["n"]), key=lambda r: r.size)
    for i, row in enumerate(ordered):
        mean, se2 = stats(row)
        if all(stats(later)[0] - mean <= 2 * math.sqrt(se2 + stats(later)[1])
               for later in ordered[i + 1:]):
            return row.size
    return None


def _fmt(stats: dict[str, Any]) -> str:
    if not stats["n"]:
        return "—"
    if stats["std"] is None:
        return f"{stats['mean']:.2f}"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _usd(value: float) -> str:
    """Dollars: cents from $1 on, four decimals below (CPU sizes cost fractions of a cent)."""
    return f"{value:.2f}" if value >= 1 else f"{value:.4f}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render_markdown(rows: list[SizeResult], summary: dict[str, Any]) -> str:
    """The sweep's report: the table, the figure and how to read them."""
    split = summary["split"]
    lines = [f"# Ensemble-size sweep: {summary['experiment']}", "",
             f"Sizes {', '.join(str(r.size) for r in rows)} (size k = the first k members of "
             "one plan); per size its own soft targets and KD students, seeds "
             f"{summary['seeds']}; the no-KD baseline is shared. Scores: averages over tasks "
             f"({split} split for the student and the plateau; mean ± sample std over seeds). "
             f"Cost: measured resource-hours of the size's members, their predictions and its "
             f"KD students, at ${summary['prices']['cpu_hour_usd']:.3f}/CPU-h and "
             f"${summary['prices']['gpu_hour_usd']:.2f}/GPU-h.", "",
             "| size | ensemble dev | ensemble test | mean member dev | student dev | "
             "student test | baseline dev | baseline test | CPU-h | GPU-h | $ |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.size} | {_num(r.ensemble['dev'])} | {_num(r.ensemble['test'])} | "
            f"{_num(r.ensemble['member_mean'])} | {_fmt(r.student['dev'])} | "
            f"{_fmt(r.student['test'])} | {_fmt(r.baseline['dev'])} | "
            f"{_fmt(r.baseline['test'])} | {r.cost['cpu_hours']:.3f} | "
            f"{r.cost['gpu_hours']:.3f} | {_usd(r.cost['usd'])} |")
    plateau = summary["plateau"]
    if plateau is None:
        verdict = "No plateau: no size has student scores."
    elif plateau == rows[-1].size:
        verdict = (f"**No plateau within the sizes swept**: the student still gains up to "
                   f"size {plateau} (or it is the only size); try larger sizes.")
    else:
        verdict = (f"**The student stops gaining after size {plateau}**: no larger ensemble "
                   f"raises its {split} average by more than two standard errors.")
    lines += ["", "![quality and cost by ensemble size](sweep.png)", "", verdict,
              "", "Each size's full report: " + ", ".join(
                  f"[size {r.size}](size-{r.size}/report/report.md)" for r in rows), ""]
    return "\n".join(lines)


def draw(rows: list[SizeResult], split: str) -> bytes:
    """PNG: quality (ensemble, student ± std, baseline ± std) and cost by ensemble size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r.size for r in rows]
    fig, (quality, cost) = plt.subplots(1, 2, figsize=(10, 4))
    ens = [r.ensemble[split] for r in rows]
    if all(v is not None for v in ens):
        quality.plot(sizes, ens, "o-", label=f"ensemble ({split})")
    for key, style in (("student", "s-"), ("baseline", "^--")):
        stats = [getattr(r, key)[split] for r in rows]
        if all(s["n"] for s in stats):
            quality.errorbar(sizes, [s["mean"] for s in stats],
                             yerr=[s["std"] or 0.0 for s in stats], fmt=style, capsize=3,
                             label=f"{'KD student' if key == 'student' else 'baseline'} "
                                   f"({split}, mean ± std)")
    quality.set_xscale("log", base=2)
    quality.set_xticks(sizes, [str(s) for s in sizes])
    quality.set_xlabel("ensemble size (members)")
    quality.set_ylabel("average score")
    quality.legend(fontsize=8)
    cost.plot(sizes, [r.cost["usd"] for r in rows], "o-", color="tab:red")
    cost.set_xscale("log", base=2)
    cost.set_xticks(sizes, [str(s) for s in sizes])
    cost.set_xlabel("ensemble size (members)")
    cost.set_ylabel("cost of the size ($)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_outputs(store: Storage, config: ExperimentConfig, rows: list[SizeResult],
                  prices: Prices) -> dict[str, Any]:
    """sweep.json, sweep.png and sweep.md under ``<name>/sweep/`` (each atomically)."""
    split = main_split(rows)
    summary = {"experiment": store.uri, "sizes": [r.size for r in rows], "split": split,
               "seeds": list(config.student.seeds), "plateau": plateau_size(rows, split),
               "prices": dataclasses.asdict(prices),
               "rows": [dataclasses.asdict(r) for r in rows]}
    store.write_atomic(SWEEP_PNG, draw(rows, split))
    store.write_atomic(SWEEP_MD, render_markdown(rows, summary).encode("utf-8"))
    store.write_json_atomic(SWEEP_JSON, summary)  # last: the sweep's record
    return summary


def run_sweep(config: ExperimentConfig, sizes: list[int],
              prices: Prices | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep over ``sizes`` and write its outputs; returns sweep.json's
    content. Raises MtkdError (exit 2) for what :func:`check_sweep` refuses and for any
    stage's user error."""
    from mtkd.pipeline import run_pipeline

    prices = prices or Prices()
    check_sweep(config, sizes)
    store = experiment_store(config)
    started = time.time()
    log.info("[sweep] sizes %s: training the largest ensemble's %d member(s) and their "
             "predictions first", ", ".join(map(str, sizes)), sizes[-1])
    run_pipeline(size_config(config, sizes[-1]), to_stage="soft")
    rows = []
    for i, size in enumerate(sizes, 1):
        log.info("[sweep] size %d (%d/%d): soft targets, %d KD student(s), report",
                 size, i, len(sizes), len(config.student.seeds))
        run_pipeline(size_config(config, size))
        rows.append(collect_size(store, config, size, prices))
        split = main_split(rows[-1:])
        log.info("[sweep] size %d: ensemble %s, student %s (%s); %.1f min so far", size,
                 _num(rows[-1].ensemble[split]), _fmt(rows[-1].student[split]), split,
                 (time.time() - started) / 60)
    return write_outputs(store, config, rows, prices)


def sweep_summary(summary: dict[str, Any], store_uri: str) -> str:
    """The console's final lines: the table in short and where everything is."""
    split = summary["split"]
    lines = [f"\nmtkd sweep: {len(summary['sizes'])} size(s), scores on {split}"]
    for row in summary["rows"]:
        lines.append(f"  size {row['size']:>3}  ensemble {_num(row['ensemble'][split])}  "
                     f"student {_fmt(row['student'][split])}  baseline "
                     f"{_fmt(row['baseline'][split])}  ${_usd(row['cost']['usd'])}")
    if summary["plateau"] is not None and summary["plateau"] != summary["sizes"][-1]:
        lines.append(f"  the student stops gaining after size {summary['plateau']}")
    elif summary["plateau"] is not None:
        lines.append(f"  no plateau within the sizes swept: still gaining at size "
                     f"{summary['plateau']}")
    lines += [f"  table    {store_uri}/{SWEEP_MD}", f"  figure   {store_uri}/{SWEEP_PNG}",
              f"  record   {store_uri}/{SWEEP_JSON}"]
    return "\n".join(lines)
