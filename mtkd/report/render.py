"""Render report.json into report.md and a PNG plot."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to files only
import matplotlib.pyplot as plt

from mtkd.precision import DeviceInfo


def describe_device(device: dict[str, Any]) -> str:
    """A recorded DeviceInfo as one phrase, e.g. "cpu AMD EPYC (AVX2, bf16 emulated)"."""
    return DeviceInfo(**device).describe()


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(m["name"], m) for m in report["members"]]
    for key, label in (("ensemble", "ensemble"), ("student", "student (KD)"),
                       ("baseline", "baseline (no KD)")):
        if report.get(key):
            rows.append((label, report[key]))
    return rows


def _scoring_line(report: dict[str, Any]) -> list[str]:
    """The one statement of the scoring precision (report.precision, resolved per device)."""
    scoring = report.get("scoring") or {}
    seen: dict[str, list[str]] = {}
    for what, got in [("members and ensemble", scoring.get("ensemble")),
                      *[(name, got) for name, got in (scoring.get("runs") or {}).items()]]:
        if got and got.get("precision"):
            device = (got.get("device") or {}).get("name", "")
            key = got["precision"] + (f" on {device}" if device else "")
            seen.setdefault(key, []).append(what)
    if not seen:
        return []
    parts = "; ".join(f"{key}: {', '.join(names)}" for key, names in seen.items())
    return [f"Every model is scored at report.precision, one precision per device ({parts}).",
            ""]


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: metrics table, speed and size, stage times, artifact paths."""
    tasks = report["tasks"]
    lines = [f"# mtkd report: {report['experiment']}", "",
             "Dev metrics (GLUE scale, 0-100); a task's score is the mean of its metrics "
             "(pair_accuracy, shown for ranking tasks pairwise in origin, is reported beside "
             "them, not in it), the average is the mean over tasks.", "",
             *_scoring_line(report),
             "| model | " + " | ".join(tasks) + " | average |",
             "|---|" + "---|" * (len(tasks) + 1)]
    for label, row in _rows(report):
        cells = []
        for task in tasks:
            metrics = row["metrics"].get(task)
            cells.append(", ".join(f"{k} {v:.1f}" for k, v in metrics.items())
                         if metrics else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['average']:.2f} |")
    if report["members"] and report.get("ensemble"):
        mean_member = report["ensemble"]["member_mean"]
        lines += ["", f"Ensemble {report['ensemble']['average']:.2f} vs mean member "
                      f"{mean_member:.2f} ({report['ensemble']['average'] - mean_member:+.2f})."]
    if report.get("student") and report.get("baseline"):
        gain = report["student"]["average"] - report["baseline"]["average"]
        lines += ["", f"Distillation: student {report['student']['average']:.2f} vs "
                      f"baseline {report['baseline']['average']:.2f} ({gain:+.2f})."]
        dev = (report.get("kd_vs_baseline") or {}).get("dev")
        if dev:
            row = dev["average"]
            lines.append(f"On the dev average the gain of KD is {row['gain']:+.2f} points, 95% "
                         f"interval [{row['low']:+.2f}, {row['high']:+.2f}] over examples and "
                         f"{_seeds(dev['seeds'])}: {row['verdict']}; per task under "
                         "\"KD minus baseline\".")
    lines += _encoder_lines(report)
    tested = [(label, row["test"]) for label, row in _rows(report)
              if (row.get("test") or {}).get("metrics")]
    if tested:
        lines += ["", "## Test", "",
                  "The same models on each task's labelled test rows (never used to train, "
                  "select weights or stop early); a task without test labels is left out.", "",
                  "| model | " + " | ".join(tasks) + " | average |",
                  "|---|" + "---|" * (len(tasks) + 1)]
        for label, row in tested:
            cells = [", ".join(f"{k} {v:.1f}" for k, v in row["metrics"][t].items())
                     if t in row["metrics"] else "—" for t in tasks]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['average']:.2f} |")
    lines += _spread_lines(report)
    lines += _gain_lines(report)
    lines += ["", "## Size and inference speed", ""]
    rows = []
    if report.get("ensemble") and "examples_per_s" in report["ensemble"]:
        rows.append(f"| ensemble ({report['ensemble']['size']} members) | "
                    f"{report['ensemble']['params']:,} | "
                    f"{report['ensemble']['examples_per_s']:.1f} |")
    student = report.get("student") or report.get("baseline")
    if student and "examples_per_s" in student:
        rows.append(f"| student | {student['params']:,} | {student['examples_per_s']:.1f} |")
    if rows:
        lines += ["| model | parameters | examples/s |", "|---|---|---|", *rows]
    else:  # mtkd report --no-speed, or no student
        size = f" The student has {student['params']:,} parameters." if student else ""
        lines.append(f"Inference speed was not measured (`mtkd report --no-speed`, or no "
                     f"student).{size}")
    if report.get("speedup"):
        lines.append(f"\nThe student predicts {report['speedup']:.1f}x faster than the "
                     f"ensemble (same dev examples, {report.get('speed_precision', 'fp32')}, "
                     "one process).")
    where = report.get("speed_where") or {}
    if where.get("device"):
        lines.append(f"\nTimed in one process on node {where['node']}, {where['device']}"
                     + (f" (Ray resources {where['resources']})." if where.get("resources")
                        else ", outside Ray."))
    if report.get("hardware"):
        lines += ["", "## Hardware and precision", "",
                  "| stage | work | precision | device |", "|---|---|---|---|"]
        lines += [f"| {h['stage']} | {h['what']} | {h['requested']} -> {h['precision']} | "
                  f"{describe_device(h['device'])} |" for h in report["hardware"]]
    if report.get("selection"):
        lines += ["", "## Model selection", "",
                  "Which weights each model is: its best dev evaluation (teacher members; "
                  "student runs with student.keep: best) or its last step "
                  "(student.keep: final). Scores above are on the same dev rows.", "",
                  "| model | weights | step |", "|---|---|---|"]
        for row in report["selection"]:
            what = "best dev evaluation" if row["keep"] == "best" else "final step"
            step = (f"{row['step']} of {row['steps']}" if row.get("step") is not None
                    else "—")
            lines.append(f"| {row['model']} | {what} | {step} |")
    lines += _lineage_lines(report.get("lineage"))
    lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["stages"].items()]
    lines += ["", "## Artifacts", ""]
    lines += [f"- {k}: `{v}`" for k, v in sorted(report["artifacts"].items())]
    return "\n".join(lines) + "\n"


def _encoder_lines(report: dict[str, Any]) -> list[str]:
    """Which encoder (and tokenization) each member and the student read their inputs with
    (mixed ensembles: members may differ; soft targets join by uid)."""
    rows = [(f"member {m['name']}", m) for m in report["members"]]
    rows += [(label, report[key]) for key, label in (("student", "student (KD)"),
                                                     ("baseline", "baseline (no KD)"))
             if report.get(key)]
    if not any(row.get("encoder") for _, row in rows):
        return []  # an experiment reported before encoders were recorded
    lines = ["", "## Encoders", "",
             "The encoder each model was trained from, and the tokenization it read "
             "(encoder.path's in data/<task>/, another tokenizer's in "
             "data/<task>/tok-<fingerprint>/); its saved model ships that tokenizer.", "",
             "| model | encoder | tokenization |", "|---|---|---|"]
    for label, row in rows:
        tokenization = row.get("tokenization")
        where = f"tok-{tokenization[:10]}" if tokenization else "encoder.path's"
        lines.append(f"| {label} | `{row.get('encoder') or '—'}` | {where} |")
    return lines


def _seeds(count: int) -> str:
    return "1 seed" if count == 1 else f"{count} paired seeds"


def _spread_lines(report: dict[str, Any]) -> list[str]:
    """Mean ± sample std over seeds of the student and the baseline, per split and task."""
    rows = [(label, report[key]) for key, label in (("student", "student (KD)"),
                                                     ("baseline", "baseline (no KD)"))
            if (report.get(key) or {}).get("spread")]
    if not rows:
        return []
    tasks = report["tasks"]
    lines = ["", "## Spread over seeds", "",
             "Each run's task score (the mean of the task's metrics) and average, as mean ± "
             "sample standard deviation (ddof=1) over the seeds; with one seed there is no "
             "spread to show, and a difference between two single runs says little "
             "(seed-to-seed spreads of 0.5-1.2 points are usual on small GLUE tasks).", "",
             "| model | split | seeds | " + " | ".join(tasks) + " | average |",
             "|---|---|---|" + "---|" * (len(tasks) + 1)]

    def cell(stat: dict[str, Any] | None) -> str:
        if not stat:
            return "—"
        return (f"{stat['mean']:.2f}" if stat["std"] is None
                else f"{stat['mean']:.2f} ± {stat['std']:.2f}")

    for label, row in rows:
        for split, spread in row["spread"].items():
            count = (spread["average"] or {}).get("n") or len(row["seeds"])
            seeds = "1 seed, no spread" if count == 1 else str(count)
            cells = [cell(spread["tasks"].get(t)) for t in tasks]
            lines.append(f"| {label} | {split} | {seeds} | " + " | ".join(cells)
                         + f" | {cell(spread['average'])} |")
    return lines


def _gain_lines(report: dict[str, Any]) -> list[str]:
    """KD minus baseline with its paired-bootstrap interval, per split, task and average."""
    gains = report.get("kd_vs_baseline")
    if not gains:
        return []
    splits = [s for s in ("dev", "test") if gains.get(s)]
    lines = ["", "## KD minus baseline", "",
             f"Student (KD) minus baseline (no KD), in task-score points, with a 95% interval "
             f"from a paired bootstrap ({gains['samples']} replicates, seed "
             f"{gains['bootstrap_seed']}): each replicate resamples the examples (the same ones "
             "for both models) and the seeds (student seed s paired with baseline seed s), "
             "rescores both with the task's metrics and takes the difference; the interval is "
             "the 2.5th-97.5th percentile (Efron & Tibshirani 1993; Koehn 2004). A gain whose "
             "interval excludes 0 is distinguishable from the noise of examples and seeds; "
             "one whose interval includes 0 is not."]
    if splits:
        lines += ["", "| split | task | gain | 95% interval | |", "|---|---|---|---|---|"]
    for split in splits:
        boot = gains[split]
        named = [*boot["tasks"].items(), ("**average**", boot["average"])]
        for task, row in named:
            lines.append(f"| {split} ({_seeds(boot['seeds'])}) | {task} | {row['gain']:+.2f} | "
                         f"[{row['low']:+.2f}, {row['high']:+.2f}] | {row['verdict']} |")
    if splits:
        lines.append("")
    for split in splits:
        row = gains[split]["average"]
        lines.append(f"On the {split} average over tasks: {row['gain']:+.2f} points, "
                     f"{row['verdict']}.")
    if any(gains[s]["seeds"] == 1 for s in splits):
        lines.append("With one seed only the examples are resampled: the interval leaves out "
                     "seed-to-seed variation, so it is narrower than the real uncertainty.")
    elif any(gains[s]["seeds"] < 5 for s in splits):
        lines.append("With few seeds the seed part of the interval rests on few draws; more "
                     "seeds (student.seeds) make it more reliable.")
    lines += [f"\nNote: {note}." for note in gains.get("notes", [])]
    return lines


def _lineage_lines(lineage: dict[str, Any] | None) -> list[str]:
    """Where each model came from: lineages (first 8 hex digits), and the ensemble each
    student run was distilled from."""
    if not lineage:
        return []
    lines = ["", "## Lineage", "",
             "Each artifact's lineage hashes the settings that shape it and the lineages of "
             "what it was built from; equal lineages mean the same inputs. Its content "
             "fingerprint hashes the files it consists of.", "",
             "| model | lineage | content | built from |", "|---|---|---|---|"]

    def short(value: str | None) -> str:
        return value[:8] if value else "?"

    for name, value in sorted((lineage.get("members") or {}).items()):
        lines.append(f"| member {name} | {short(value.get('lineage'))} | "
                     f"{short(value.get('content'))} | tokenized tasks |")
    ensemble = lineage.get("ensemble")
    if ensemble:
        lines.append(f"| ensemble | {short(ensemble['lineage'])} | soft targets of "
                     f"{len(ensemble.get('contents') or {})} task(s) | "
                     f"{len(ensemble['members'])} members: {', '.join(ensemble['members'])} |")
    for name, run in sorted((lineage.get("student_runs") or {}).items()):
        source = run.get("distilled_from")
        built = (f"distilled from ensemble {source['ensemble'][:8]}, "
                 f"{len(source['members'])} members" if source else "hard labels only")
        lines.append(f"| {name} | {short(run.get('lineage'))} | {short(run.get('content'))} "
                     f"| {built} |")
    return lines


def render_plot(report: dict[str, Any]) -> bytes:
    """PNG: average dev score of every member, the ensemble, the student and the baseline."""
    rows = _rows(report)
    colors = {"ensemble": "tab:orange", "student (KD)": "tab:green",
              "baseline (no KD)": "tab:gray"}
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 3.6), dpi=120)
    labels = [label for label, _ in rows]
    values = [row["average"] for _, row in rows]
    ax.bar(labels, values, color=[colors.get(label, "tab:blue") for label in labels])
    for i, value in enumerate(values):
        ax.text(i, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("dev average (0-100)")
    ax.set_title("Members, ensemble and distilled student")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
