"""The report's seed statistics, from stored records of two seeds: mean ± std over seeds and
KD minus baseline with its paired-bootstrap interval in report.json and report.md, checked
against an independent numpy/scikit-learn/scipy computation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn import metrics as skm

from mtkd.config import ReportConfig
from mtkd.experiment import manifest_path, student_dir, student_record, task_data_dir
from mtkd.metrics import average_score, compute_task_metrics
from mtkd.records import EnsembleRef, StudentRecord, TaskRecord, digest
from mtkd.report.stage import write_report
from mtkd.storage import Storage
from mtkd.student.predictions import predictions_bytes, predictions_file
from mtkd.tasks.spec import TaskSpec

SST2 = TaskSpec(name="sst2", type="classification", labels=("negative", "positive"))
STSB = TaskSpec(name="stsb", type="regression")
SEEDS = (1, 2)
SAMPLES, BOOT_SEED = 400, 3


def one_hot(classes: np.ndarray) -> np.ndarray:
    out = np.zeros((len(classes), 2), dtype=np.float32)
    out[np.arange(len(classes)), classes] = 1.0
    return out


def make_data() -> dict[str, Any]:
    """Canonical-order labels and outputs: {split: {task: {"uids", "labels", run: outputs}}}.
    The KD student is right more often on sst2; on stsb both are equally noisy."""
    rng = np.random.default_rng(0)
    data: dict[str, Any] = {}
    for split, sizes in (("dev", {"sst2": 150, "stsb": 90}), ("test", {"sst2": 120})):
        data[split] = {}
        for task, n in sizes.items():
            entry: dict[str, Any] = {"uids": [f"{task}-{split}-{i}" for i in range(n)]}
            if task == "sst2":
                labels = rng.integers(0, 2, n)
                entry["labels"] = labels
                for seed in SEEDS:
                    for kind, right in (("student", 0.9), ("baseline", 0.7)):
                        wrong = rng.random(n) > right
                        entry[f"{kind}-s{seed}"] = one_hot(np.where(wrong, 1 - labels, labels))
            else:
                gold = np.round(rng.uniform(0, 5, n), 1)
                entry["labels"] = gold
                for seed in SEEDS:
                    for kind in ("student", "baseline"):
                        entry[f"{kind}-s{seed}"] = (gold + rng.normal(0, 1.0, n)).astype(
                            np.float32)
            data[split][task] = entry
    return data


def build_experiment(root: Path, data: dict[str, Any]) -> Storage:
    """The files the report reads: manifests, task records, student records, predictions.
    Every run but the first KD one stores its rows in another order (joined by uid)."""
    store = Storage.from_uri(str(root))
    for spec in (SST2, STSB):
        store.write_json(f"{task_data_dir(spec.name)}/meta.json",
                         TaskRecord(lineage=f"data-{spec.name}", content="c",
                                    spec=spec.to_json()).to_json())
    store.write_json(manifest_path("prepare"), {"seconds": 1.0, "tasks": {
        t: {"lineage": f"data-{t}", "content": "c"} for t in ("sst2", "stsb")}})
    store.write_json(manifest_path("soft"), {"seconds": 1.0, "output_fingerprint": "ens" * 8,
                                             "members": ["m0"]})
    rng = np.random.default_rng(1)
    runs = {}
    for seed in SEEDS:
        for kind in ("student", "baseline"):
            name = f"{kind}-s{seed}"
            scored, shas = {}, {}
            for split, tasks in data.items():
                per_task = {}
                for task, entry in tasks.items():
                    n = len(entry["uids"])
                    order = np.arange(n) if name == "student-s1" else rng.permutation(n)
                    per_task[task] = ([entry["uids"][i] for i in order], entry["labels"][order],
                                      entry[name][order])
                payload = predictions_bytes(per_task)
                store.write_bytes(f"{student_dir(name)}/{predictions_file(split)}", payload)
                shas[split] = digest(payload)
                spec = {"sst2": SST2, "stsb": STSB}
                scored[split] = {t: compute_task_metrics(spec[t], e[name], e["labels"])
                                 for t, e in tasks.items()}
            record = StudentRecord(
                lineage=f"lin-{name}", content=f"content-{name}", name=name, seed=seed,
                distill=kind == "student",
                distilled_from=EnsembleRef("ens" * 8, ["m0"]) if kind == "student" else None,
                model=f"{root}/student/{name}/final", metrics=scored["dev"],
                average=average_score(scored["dev"]), test_metrics=scored["test"],
                test_average=average_score(scored["test"]), params=10,
                predictions=shas)
            store.write_json(student_record(name), record.to_json())
            runs[name] = record.to_json()
    store.write_json(manifest_path("student"), {"seconds": 1.0, "runs": runs})
    return store


# ---------------------------------------------------------------- independent computation


def task_score(task: str, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Score of every row of gathered ``outputs`` [B, n(, 2)] against ``labels`` [B, n]."""
    if task == "sst2":
        p = outputs.argmax(axis=-1)
        acc = (p == labels).mean(axis=1)
        tp = ((p == 1) & (labels == 1)).sum(axis=1)
        f1 = 2 * tp / ((p == 1).sum(axis=1) + (labels == 1).sum(axis=1))
        return 100 * (acc + f1) / 2

    def corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(x, y, strict=True)])

    x, y = outputs.astype(np.float64), labels
    return 50 * (corr(x, y) + corr(rankdata(x, axis=1), rankdata(y, axis=1)))


def expected_intervals(split: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """{task or "average": (gain, low, high)}: the same resampling, by gathering rows."""
    rng = np.random.default_rng(BOOT_SEED)
    seed_index = rng.integers(0, len(SEEDS), size=(SAMPLES, len(SEEDS)))
    out, replicates = {}, []
    for task in sorted(split):
        entry = split[task]
        labels = entry["labels"]
        index = rng.integers(0, len(labels), size=(SAMPLES, len(labels)))
        per_seed = np.stack([task_score(task, entry[f"student-s{s}"][index], labels[index])
                             - task_score(task, entry[f"baseline-s{s}"][index], labels[index])
                             for s in SEEDS])  # [S, B]
        gains = per_seed[seed_index.T, np.arange(SAMPLES)].mean(axis=0)
        whole = np.arange(len(labels))[None, :]
        point = np.mean([task_score(task, entry[f"student-s{s}"][whole], labels[whole])[0]
                         - task_score(task, entry[f"baseline-s{s}"][whole], labels[whole])[0]
                         for s in SEEDS])
        low, high = np.percentile(gains, [2.5, 97.5])
        out[task] = (float(point), float(low), float(high))
        replicates.append(gains)
    low, high = np.percentile(np.mean(replicates, axis=0), [2.5, 97.5])
    out["average"] = (float(np.mean([v[0] for v in out.values()])), float(low), float(high))
    return out


def seed_scores(split: dict[str, Any], kind: str, task: str) -> list[float]:
    entry = split[task]
    labels = entry["labels"]
    if task == "sst2":
        return [100 * (skm.accuracy_score(labels, entry[f"{kind}-s{s}"].argmax(axis=1))
                       + skm.f1_score(labels, entry[f"{kind}-s{s}"].argmax(axis=1))) / 2
                for s in SEEDS]
    return [task_score(task, entry[f"{kind}-s{s}"][None, :], labels[None, :])[0]
            for s in SEEDS]


# ---------------------------------------------------------------------------------- tests


@pytest.fixture
def reported(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    data = make_data()
    store = build_experiment(tmp_path / "exp", data)
    write_report(store, ReportConfig(plot=False, bootstrap_samples=SAMPLES,
                                     bootstrap_seed=BOOT_SEED), measure=False)
    report = json.loads(store.read_text("report/report.json"))
    return data, report, store.read_text("report/report.md")


def test_mean_and_std_over_seeds_match_numpy(reported: tuple) -> None:
    data, report, markdown = reported
    for kind, label in (("student", "student (KD)"), ("baseline", "baseline (no KD)")):
        spread = report[kind]["spread"]
        cells = []
        for task in ("sst2", "stsb"):
            scores = seed_scores(data["dev"], kind, task)
            assert spread["dev"]["tasks"][task]["mean"] == pytest.approx(np.mean(scores))
            assert spread["dev"]["tasks"][task]["std"] == pytest.approx(np.std(scores, ddof=1))
            cells.append(f"{np.mean(scores):.2f} ± {np.std(scores, ddof=1):.2f}")
        averages = np.mean([seed_scores(data["dev"], kind, t) for t in ("sst2", "stsb")],
                           axis=0)
        cells.append(f"{averages.mean():.2f} ± {averages.std(ddof=1):.2f}")
        assert f"| {label} | dev | 2 | " + " | ".join(cells) + " |" in markdown
        test = seed_scores(data["test"], kind, "sst2")
        assert (f"| {label} | test | 2 | {np.mean(test):.2f} ± {np.std(test, ddof=1):.2f} | — "
                f"| {np.mean(test):.2f} ± {np.std(test, ddof=1):.2f} |") in markdown


def test_kd_minus_baseline_intervals_match_an_independent_computation(reported: tuple) -> None:
    data, report, markdown = reported
    gains = report["kd_vs_baseline"]
    assert gains["seeds"] == [1, 2] and gains["samples"] == SAMPLES and gains["notes"] == []
    for split in ("dev", "test"):
        want = expected_intervals(data[split])
        got = gains[split]
        assert set(got["tasks"]) == set(want) - {"average"}
        for name, (point, low, high) in want.items():
            row = got["average"] if name == "average" else got["tasks"][name]
            assert (row["gain"], row["low"], row["high"]) == pytest.approx((point, low, high),
                                                                          abs=1e-6)
            shown = "**average**" if name == "average" else name
            assert (f"| {split} (2 paired seeds) | {shown} | {point:+.2f} | "
                    f"[{low:+.2f}, {high:+.2f}] | {row['verdict']} |") in markdown
    # plain words: sst2's gain (0.9 vs 0.7 right) is clear, stsb's (equal noise) is not
    assert gains["dev"]["tasks"]["sst2"]["verdict"].startswith("KD better, distinguishable")
    assert gains["dev"]["tasks"]["stsb"]["verdict"].startswith("not distinguishable")
    assert "On the dev average the gain of KD is" in markdown
    assert "On the test average over tasks:" in markdown


def test_a_run_without_stored_predictions_is_named_and_left_out(tmp_path: Path) -> None:
    """Records of an mtkd that did not store per-example outputs: spreads still shown, no
    interval, and a note that says why and how to get one."""
    store = build_experiment(tmp_path / "exp", make_data())
    manifest = store.read_json(manifest_path("student"))
    manifest["runs"]["baseline-s2"]["predictions"] = {}
    store.write_json(manifest_path("student"), manifest)
    write_report(store, ReportConfig(plot=False, bootstrap_samples=100), measure=False)
    report = json.loads(store.read_text("report/report.json"))
    assert "dev" not in report["kd_vs_baseline"] and "test" not in report["kd_vs_baseline"]
    assert any("baseline-s2" in note for note in report["kd_vs_baseline"]["notes"])
    assert report["student"]["spread"]["dev"]["average"]["n"] == 2
    assert "Note: dev: no stored per-example outputs for baseline-s2" in store.read_text(
        "report/report.md")


def test_no_intervals_with_zero_samples_and_one_seed_says_no_spread(tmp_path: Path) -> None:
    store = build_experiment(tmp_path / "exp", make_data())
    manifest = store.read_json(manifest_path("student"))
    manifest["runs"] = {k: v for k, v in manifest["runs"].items() if k.endswith("-s1")}
    store.write_json(manifest_path("student"), manifest)
    write_report(store, ReportConfig(plot=False, bootstrap_samples=0), measure=False)
    report = json.loads(store.read_text("report/report.json"))
    assert report["kd_vs_baseline"] is None
    assert report["student"]["spread"]["dev"]["tasks"]["sst2"]["std"] is None
    markdown = store.read_text("report/report.md")
    assert "| student (KD) | dev | 1 seed, no spread |" in markdown
    assert "## KD minus baseline" not in markdown


def test_the_report_lineage_covers_the_bootstrap_settings(tmp_path: Path) -> None:
    store = build_experiment(tmp_path / "exp", make_data())
    lineages = []
    for seed in (0, 1):
        write_report(store, ReportConfig(plot=False, bootstrap_samples=100,
                                         bootstrap_seed=seed), measure=False)
        lineages.append(store.read_json("report/record.json")["lineage"])
    assert lineages[0] != lineages[1]


def test_a_predictions_file_changed_after_its_record_is_refused(tmp_path: Path) -> None:
    from mtkd.errors import MtkdError

    store = build_experiment(tmp_path / "exp", make_data())
    rel = f"{student_dir('baseline-s1')}/{predictions_file('dev')}"
    store.write_bytes(rel, predictions_bytes({"sst2": (["x"], np.array([0]),
                                                       np.zeros((1, 2)))}))
    with pytest.raises(MtkdError, match="not the file student run baseline-s1"):
        write_report(store, ReportConfig(plot=False, bootstrap_samples=100), measure=False)


def test_bootstrap_settings_are_validated() -> None:
    problems = ReportConfig(bootstrap_samples=50, bootstrap_seed=-1).problems("report")
    assert [p.path for p in problems] == ["report.bootstrap_samples", "report.bootstrap_seed"]
    assert "0 (no intervals) or >= 100, got 50" in str(problems[0])
    assert ReportConfig(bootstrap_samples=0).problems("report") == []


def test_mtkd_report_takes_the_bootstrap_settings(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from mtkd.cli import main

    store = build_experiment(tmp_path / "exp", make_data())
    assert main(["report", store.uri, "--no-speed", "--bootstrap-samples", "10"]) == 2
    assert "report.bootstrap_samples: must be 0 (no intervals) or >= 100" in (
        capsys.readouterr().err)
    assert main(["report", store.uri, "--no-speed", "--bootstrap-samples", "200",
                 "--bootstrap-seed", "5"]) == 0
    gains = json.loads(store.read_text("report/report.json"))["kd_vs_baseline"]
    assert (gains["samples"], gains["bootstrap_seed"]) == (200, 5)


def test_predictions_file_round_trip_and_run_content() -> None:
    from mtkd.records import files_fingerprint
    from mtkd.student.predictions import read_predictions, run_content

    per_task = {"stsb": (["b", "a"], np.array([np.nan, 2.5]), np.array([1.25, -0.5])),
                "sst2": (["x", "y", "z"], np.array([1, -1, 0]),
                         np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5]]))}
    data = predictions_bytes(per_task)
    assert predictions_bytes(per_task) == data  # the same outputs give the same bytes
    back = read_predictions(data)
    assert list(back["stsb"]["uids"]) == ["b", "a"]
    np.testing.assert_array_equal(back["stsb"]["labels"], [np.nan, 2.5])
    np.testing.assert_array_equal(back["stsb"]["outputs"], [[1.25], [-0.5]])
    np.testing.assert_array_equal(back["sst2"]["labels"], [1, -1, 0])
    np.testing.assert_allclose(back["sst2"]["outputs"], per_task["sst2"][2], rtol=1e-7)
    content = run_content("model", {"dev": digest(data)})
    assert content == files_fingerprint({"final/": "model",
                                         "predictions/dev.parquet": digest(data)})
    assert content != run_content("model", {})


def _blocks_are_separated(markdown: str) -> list[str]:
    """Markdown structure problems: a table (lines starting with '|') or a heading must have
    a blank line before and after it, or a sentence would render as a table row."""
    lines = markdown.splitlines()
    problems = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        prev = lines[i - 1] if i else ""
        if line.startswith("|") and nxt and not nxt.startswith("|"):
            problems.append(f"line {i + 2} follows a table row: {nxt!r}")
        if line.startswith("|") and prev and not prev.startswith("|"):
            problems.append(f"line {i + 1} starts a table right after text: {prev!r}")
        if line.startswith("#") and (nxt or (prev and i)):
            problems.append(f"heading on line {i + 1} is not set apart by blank lines")
    return problems


@pytest.mark.parametrize("encoders", [False, True])
def test_report_markdown_blocks_are_set_apart(reported: tuple, encoders: bool) -> None:
    """Every table and heading of report.md stands alone (the Encoders table once swallowed
    the 'Distillation:' sentences as table rows)."""
    from mtkd.report.render import render_markdown

    _, report, markdown = reported
    if encoders:
        report = json.loads(json.dumps(report))
        for row in [*report["members"], report["student"], report["baseline"]]:
            row["encoder"], row["tokenization"] = "bundled:all-MiniLM-L6-v2", None
        markdown = render_markdown(report)
        assert "## Encoders" in markdown
    assert "Distillation: student" in markdown
    assert _blocks_are_separated(markdown) == []


def test_unmeasured_speed_is_said_not_left_as_an_empty_table(reported: tuple) -> None:
    # measure=False (mtkd report --no-speed): no header row without rows under it
    _, report, markdown = reported
    section = markdown.split("## Size and inference speed", 1)[1].split("\n## ", 1)[0]
    assert "| model | parameters | examples/s |" not in section
    assert "not measured" in section
    assert f"{report['student']['params']:,} parameters" in section
