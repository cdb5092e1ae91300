"""The whole pipeline from the command line on the real bundled MiniLM and bundled data:
interrupted with Ctrl-C after the teachers stage and resumed without retraining them; then
the ensemble grows (issue 14): only the new member trains, the distilled student is
distilled again from the grown ensemble while the baseline is reused, a re-run with only
operational settings changed reuses everything, and a report is refused beside a student
distilled from another ensemble or after an edit an earlier stage reads."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mtkd.precision import probe_device, resolve_precision

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STAGES = ("teachers", "soft", "student", "report")
GROWN = ["teachers.size=3", "teachers.variation.seed=[1,2,3]"]
SHRUNK = ["teachers.size=2", "teachers.variation.seed=[1,2]"]


def _config(tmp_path: Path) -> dict:
    """Two tiny subsets of bundled tasks, 2 teacher members, a distilled student and a
    baseline, a few steps per stage; precision auto (bf16 only where the CPU has it
    natively) except the student's training, fp32 as asked."""
    training = {"epochs": 1, "max_steps": 2, "batch_size": 16, "learning_rate": 1e-4,
                "precision": "auto", "eval_every": 0}
    return {
        "name": "grow", "storage_path": str(tmp_path / "runs"), "seed": 0,
        "ray": {"num_cpus": 2},
        "encoder": {"path": "bundled:all-MiniLM-L6-v2"},
        "tasks": [
            {"name": "rotten_tomatoes", "max_length": 32, "max_train_examples": 32,
             "max_dev_examples": 16},
            {"name": "trec", "max_length": 24, "max_train_examples": 32,
             "max_dev_examples": 16},
        ],
        "teachers": {"shape": "multitask", "size": 2, "min_members": 1, "max_concurrent": 2,
                     "max_failures": 0, "resources_per_member": {"cpu": 1},
                     "variation": {"strategy": "grid", "seed": [1, 2]},
                     "training": training},
        "soft_targets": {"batch_size": 32, "precision": "auto",
                         "resources_per_actor": {"cpu": 0.5}},
        "student": {"num_layers": 2, "distill": True, "baseline": True, "num_workers": 1,
                    "use_gpu": False, "max_failures": 0,
                    "training": {**training, "learning_rate": 3e-4, "precision": "fp32"}},
        "report": {"plot": True, "speed_examples": 8, "precision": "auto"},
    }


def _mtkd(args: list[str], log: Path, timeout: int = 600) -> tuple[int, str]:
    """``python -m mtkd ARGS`` from the repository, output in a log file (not a pipe: Ray's
    chatter must never block the run); returns the exit status and the whole log."""
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "mtkd", *args], cwd=REPO, stdout=out,
                              stderr=subprocess.STDOUT, env=_env(), timeout=timeout)
    return done.returncode, log.read_text()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def _interrupt_after_teachers(args: list[str], root: Path, log: Path) -> tuple[int, str]:
    """``python -m mtkd ARGS``, sent Ctrl-C (SIGINT) once the teachers stage is done."""
    with log.open("w") as out:
        run = subprocess.Popen([sys.executable, "-m", "mtkd", *args], cwd=REPO, stdout=out,
                               stderr=subprocess.STDOUT, env=_env())
        deadline = time.time() + 400
        while not (root / "manifests" / "teachers.json").exists():
            assert run.poll() is None, log.read_text()[-4000:]
            assert time.time() < deadline, "the teachers stage did not finish"
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        run.wait(timeout=120)
    return run.returncode, log.read_text()


def _snapshot(root: Path, under: str = "") -> dict[str, tuple[int, bytes]]:
    """Every file below ``root/under``: relative path -> (mtime_ns, bytes)."""
    base = root / under if under else root
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(base.rglob("*")) if p.is_file()}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _trained(log: str) -> set[str]:
    """Members whose training progress reached this console."""
    return set(re.findall(r"\[mtkd (m\d{3})\] \[train\]", log))


def test_grow_the_ensemble_on_the_real_encoder(tmp_path: Path) -> None:
    config_file = tmp_path / "grow.yaml"
    config_file.write_text(yaml.safe_dump(_config(tmp_path)))
    root = tmp_path / "runs" / "grow"
    run = ["run", str(config_file)]

    # 1. Two members, soft targets, a distilled student and a baseline, a report; the
    # first attempt is interrupted with Ctrl-C once the teachers are done.
    rc, out = _interrupt_after_teachers(run, root, tmp_path / "1-interrupted.log")
    assert rc == 130, out[-4000:]
    assert "Re-run the same command to resume" in out, out[-4000:]
    assert not (root / "manifests" / "student.json").exists()
    first_members = sorted(p.parent.name for p in root.glob("teachers/*/member.json"))
    assert first_members == ["m000", "m001"]
    assert _trained(out) == set(first_members), out[-4000:]
    for name in first_members:  # each member's progress reached this console from Ray
        assert re.search(rf"\[mtkd {name}\] \[train\] (\d+)/\1 steps \(100%\)", out), name
    members = {m: root / "teachers" / m / "member.json" for m in first_members}
    trained_once = {m: p.stat().st_mtime_ns for m, p in members.items()}

    rc, out = _mtkd(run, tmp_path / "1-resumed.log")
    assert rc == 0, out[-4000:]
    assert "[teachers] done before" in out and not _trained(out), out[-4000:]
    assert {m: p.stat().st_mtime_ns for m, p in members.items()} == trained_once
    assert f"mtkd run grow: results in {root}" in out, out[-4000:]
    manifests = {p.stem: _json(p) for p in root.glob("manifests/*.json")}
    assert set(manifests) == {"prepare", *STAGES}, sorted(manifests)
    assert manifests["teachers"]["members"] == first_members
    seeds = [_json(p)["variant"]["seed"] for p in members.values()]
    assert seeds == _config(tmp_path)["teachers"]["variation"]["seed"]
    soft1 = manifests["soft"]
    assert soft1["members"] == first_members
    students = {p.parent.name: p for p in root.glob("student/*/student.json")}
    assert set(students) == {"student", "baseline"}, sorted(students)
    distilled1, baseline1 = (_json(students[n]) for n in ("student", "baseline"))
    assert distilled1["distill"] and not baseline1["distill"]
    assert distilled1["distilled_from"] == {"ensemble": soft1["output_fingerprint"],
                                            "members": first_members}
    assert baseline1["distilled_from"] is None
    for run_record in (distilled1, baseline1):
        assert run_record["precision"]["precision"] == "fp32", run_record["precision"]
    report1 = _json(root / "report" / "report.json")
    assert report1["ensemble"]["size"] == len(first_members)
    assert [m["name"] for m in report1["members"]] == first_members
    for name in ("student", "baseline"):
        assert set(report1[name]["metrics"]) == {"rotten_tomatoes", "trec"}, name
        assert report1[name]["params"] > 0, name
    assert report1["student"]["examples_per_s"] > 0  # the speed of the model to serve
    assert set(report1["stages"]) >= {"prepare", *STAGES[:-1]}
    assert (root / "report" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each stage's precision, resolved on this machine's CPU and recorded where it ran.
    cpu = probe_device("cpu")
    auto = resolve_precision("auto", cpu).precision
    hardware = {(h["stage"], h["what"]): (h["requested"], h["precision"], h["device"])
                for h in report1["hardware"]}
    assert {k: v[:2] for k, v in hardware.items()} == {
        ("teachers", "member m000"): ("auto", auto),
        ("teachers", "member m001"): ("auto", auto),
        ("soft", "soft-target inference"): ("auto", auto),
        ("student", "student training"): ("fp32", "fp32"),  # asked for explicitly
        ("student", "student dev scores"): ("auto", auto),
        ("student", "baseline training"): ("fp32", "fp32"),
        ("student", "baseline dev scores"): ("auto", auto),
        ("report", "inference speed"): ("auto", auto)}, hardware
    assert all(v[2] == cpu.to_json() for v in hardware.values())
    assert "## Hardware and precision" in (root / "report" / "report.md").read_text()
    shown = report1["lineage"]["ensemble"]
    assert {k: shown[k] for k in ("lineage", "members")} == {
        "lineage": soft1["output_fingerprint"], "members": first_members}
    assert shown["contents"] == soft1["contents"]  # each task's soft-target content
    members_before = {m: (p.stat().st_mtime_ns, p.read_bytes()) for m, p in members.items()}
    baseline_before = _snapshot(root, "student/baseline")
    assert "student/baseline/student.json" in baseline_before

    # 2. Grow to three members: only m002 trains; the soft targets and the distilled
    # student follow the new ensemble; the baseline (no ensemble in it) is reused.
    rc, out = _mtkd([*run, *GROWN], tmp_path / "2-grown.log")
    assert rc == 0, out[-4000:]
    assert {m: (p.stat().st_mtime_ns, p.read_bytes())
            for m, p in members.items()} == members_before
    teachers2 = _json(root / "manifests" / "teachers.json")
    grown_members = teachers2["members"]
    new = [m for m in grown_members if m not in first_members]
    assert grown_members[:len(first_members)] == first_members and new == ["m002"]
    assert (root / "teachers" / "m002" / "member.json").is_file()
    planned = re.search(r"\[teachers\] (\d+) member\(s\) planned \(multitask\): "
                        r"(\d+) finished before, (\d+) to train", out)
    assert planned, out[-4000:]
    assert [int(g) for g in planned.groups()] == [len(grown_members), len(first_members),
                                                  len(new)]
    assert _trained(out) == set(new), out[-4000:]  # m000 and m001 were not trained again
    assert _json(root / "teachers" / "m002" / "member.json")["variant"]["seed"] \
        == yaml.safe_load(GROWN[1].split("=", 1)[1])[len(first_members)]
    soft2 = _json(root / "manifests" / "soft.json")
    assert soft2["members"] == grown_members
    assert soft2["output_fingerprint"] != soft1["output_fingerprint"]
    for name in first_members:
        assert re.search(rf"\[soft\] \d+/\d+ {name}: predictions reused", out), out[-4000:]
    distilled2 = _json(students["student"])
    assert distilled2["lineage"] != distilled1["lineage"]
    assert distilled2["distilled_from"] == {"ensemble": soft2["output_fingerprint"],
                                            "members": grown_members}
    assert "[student] student finished before" not in out
    assert "[student] baseline finished before, reusing" in out, out[-4000:]
    assert _snapshot(root, "student/baseline") == baseline_before
    student2 = _json(root / "manifests" / "student.json")
    assert student2["lineages"]["baseline"] == baseline1["lineage"]
    report2 = _json(root / "report" / "report.json")
    assert report2["ensemble"]["size"] == len(grown_members)
    assert sorted(m["name"] for m in report2["members"]) == grown_members
    lineage = report2["lineage"]
    assert {k: lineage["ensemble"][k] for k in ("lineage", "members")} == {
        "lineage": soft2["output_fingerprint"], "members": grown_members}
    assert lineage["ensemble"]["contents"] == soft2["contents"]
    assert lineage["members"] == {name: {"lineage": teachers2["lineages"][name],
                                         "content": teachers2["contents"][name]}
                                  for name in grown_members}
    assert lineage["student_runs"]["student"] == {"lineage": distilled2["lineage"],
                                                  "content": distilled2["content"],
                                                  "distilled_from": distilled2["distilled_from"]}
    assert lineage["student_runs"]["baseline"] == {"lineage": baseline1["lineage"],
                                                   "content": baseline1["content"],
                                                   "distilled_from": None}
    assert (f"distilled from ensemble {soft2['output_fingerprint'][:8]}, "
            f"{len(grown_members)} members") in (root / "report" / "report.md").read_text()

    # 3. The same command with only operational settings changed: every stage is done
    # before, nothing is rewritten (prepare always re-reads its data; config.yaml is the
    # last run's config).
    before = _snapshot(root)
    operational = ["student.checkpoint_every=7", "student.keep_checkpoints=3",
                   "teachers.max_concurrent=1"]
    rc, out = _mtkd([*run, *GROWN, *operational], tmp_path / "3-again.log")
    assert rc == 0, out[-4000:]
    for stage in STAGES:
        assert f"[{stage}] done before" in out, (stage, out[-4000:])
        assert f"[{stage}] starting" not in out, (stage, out[-4000:])
    assert not _trained(out)
    after = _snapshot(root)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert changed <= {"manifests/prepare.json", "config.yaml"}, sorted(changed)
    saved = yaml.safe_load(after["config.yaml"][1])
    assert saved["student"]["checkpoint_every"] == 7 and saved["teachers"]["max_concurrent"] == 1

    # 4. A report beside a student distilled from another ensemble.
    # (a) Only the soft targets of a 2-member ensemble: the teachers stage (3 members on
    # record) is stale for that config, so the run is refused before anything is written.
    rc, out = _mtkd([*run, "--only", "soft", *SHRUNK], tmp_path / "4a-only-soft.log")
    assert rc == 2, out[-4000:]
    assert "stage 'teachers' is stale" in out and "--from teachers" in out, out[-4000:]
    assert _snapshot(root) == after
    # (b) Teachers and soft targets back to 2 members (reused, nothing trains): the soft
    # targets are those of step 1 again, and the distilled student is now stale.
    rc, out = _mtkd([*run, "--from", "teachers", "--to", "soft", *SHRUNK],
                    tmp_path / "4b-shrink.log")
    assert rc == 0, out[-4000:]
    assert not _trained(out)
    assert {m: (p.stat().st_mtime_ns, p.read_bytes())
            for m, p in members.items()} == members_before
    soft3 = _json(root / "manifests" / "soft.json")
    assert soft3["members"] == first_members
    assert soft3["output_fingerprint"] == soft1["output_fingerprint"]
    assert _json(students["student"]) == distilled2  # not re-distilled by --to soft
    assert "stale: student, report" in out, out[-4000:]
    report_files = _snapshot(root, "report")
    assert {"report/report.json", "report/report.md", "report/scores.png"} <= set(report_files)
    # (c) `--only report` for that config: the student stage is stale, refused up front.
    rc, out = _mtkd([*run, "--only", "report", *SHRUNK], tmp_path / "4c-only-report.log")
    assert rc == 2, out[-4000:]
    assert "stage 'student' is stale" in out and "--from student" in out, out[-4000:]
    assert _snapshot(root, "report") == report_files
    # (d) `mtkd report` re-renders from storage alone: it refuses to set the 3-member
    # student beside the 2-member ensemble, naming both, and report/ stays as it was.
    rc, out = _mtkd(["report", str(root), "--no-speed", "--precision", "fp32"],
                    tmp_path / "4d-report.log")
    assert rc == 2, out[-4000:]
    was, now = distilled2["distilled_from"], soft3
    expected = (f"student run student was distilled from ensemble {was['ensemble'][:8]} "
                f"({len(was['members'])} members), but this experiment's soft targets are "
                f"now from ensemble {now['output_fingerprint'][:8]} "
                f"({len(now['members'])} members)")
    assert expected in out, out[-4000:]
    assert "mtkd run CONFIG --from student" in out
    assert _snapshot(root, "report") == report_files
    # (e) `--only student` after an edit that prepare reads: refused, nothing written.
    before = _snapshot(root)
    rc, out = _mtkd([*run, *SHRUNK, "--only", "student", "tasks.0.max_train_examples=31"],
                    tmp_path / "4e-only-student.log")
    assert rc == 2, out[-4000:]
    assert "stage 'prepare' is stale" in out and "--from prepare" in out, out[-4000:]
    assert _snapshot(root) == before
