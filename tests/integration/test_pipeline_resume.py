"""The whole pipeline from the command line: interrupted after the teachers stage with
Ctrl-C, resumed without retraining them, finished with a report."""

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
from tiny import toy_experiment

from mtkd.precision import probe_device, resolve_precision

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_interrupt_after_teachers_then_resume_to_the_report(tmp_path: Path) -> None:
    student_experiment = toy_experiment(tmp_path / "toy", "pipe")
    data = {**student_experiment, "name": "pipe", "storage_path": str(tmp_path / "runs"),
            "student": {**student_experiment["student"], "num_workers": 1, "baseline": False,
                        "training": {**student_experiment["student"]["training"],
                                     "epochs": 1, "eval_every": 0}}}
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(yaml.safe_dump(data))
    root = tmp_path / "runs" / "pipe"
    command = [sys.executable, "-m", "mtkd", "run", str(config_file)]
    log = tmp_path / "first.log"
    with log.open("w") as out:  # a file, not a pipe: Ray's chatter must never block the run
        first = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not (root / "manifests" / "teachers.json").exists():
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "teachers stage did not finish"
            time.sleep(0.2)
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    err = log.read_text()
    assert first.returncode == 130, err[-3000:]
    assert "Re-run the same command to resume" in err
    assert not (root / "manifests" / "student.json").exists()
    members = {p: p.stat().st_mtime_ns for p in root.glob("teachers/m*/member.json")}
    assert len(members) == 2
    # Progress of each member reached this console, from the Ray trial processes.
    for name in ("m000", "m001"):
        assert re.search(rf"\[mtkd {name}\] \[train\] (\d+)/\1 steps \(100%\)", err), err[-3000:]

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=os.environ.copy())
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[teachers] done before" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in members} == members  # not retrained
    report = json.loads((root / "report" / "report.json").read_text())
    for key in ("tasks", "members", "ensemble", "student", "baseline", "stages"):
        assert key in report
    assert report["baseline"] is None  # not asked for in this config
    assert [m["name"] for m in report["members"]] == ["m000", "m001"]
    assert set(report["student"]["metrics"]) == {"toy", "score"}
    assert report["student"]["params"] > 0 and report["student"]["examples_per_s"] > 0
    assert set(report["stages"]) >= {"prepare", "teachers", "soft", "student"}
    assert (root / "report" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results in" in second.stdout and "report" in second.stdout

    # Each stage's precision, resolved on this machine's CPU and recorded where it ran.
    cpu = probe_device("cpu")
    auto = resolve_precision("auto", cpu).precision
    hardware = {(h["stage"], h["what"]): (h["requested"], h["precision"], h["device"])
                for h in report["hardware"]}
    expected = {("teachers", "member m000"): ("auto", auto),
                ("teachers", "member m001"): ("auto", auto),
                ("soft", "soft-target inference"): ("auto", auto),
                ("student", "student training"): ("bf16", "bf16"),  # asked for explicitly
                ("student", "student dev scores"): ("auto", auto),
                ("report", "inference speed"): ("auto", auto)}
    assert {k: v[:2] for k, v in hardware.items()} == expected
    assert all(v[2] == cpu.to_json() for v in hardware.values())
    member = json.loads((root / "teachers" / "m000" / "member.json").read_text())
    assert member["precision"]["precision"] == auto and member["loss_scale"] is None
    assert "## Hardware and precision" in (root / "report" / "report.md").read_text()
    # bf16 where the CPU only emulates it: one warning for the stage, naming key and fix.
    warned = [line for line in second.stderr.splitlines()
              if "student.training.precision: bf16 on cpu" in line]
    assert len(warned) == (0 if cpu.native_bf16 else 1), second.stderr[-3000:]
    assert all("fix: set it to auto or fp32" in line for line in warned)

    # (Growing the ensemble, the lineage issue's scenario, runs end to end on the real
    # encoder in test_ensemble_growth_real.py.)

    # Operational settings resume: nothing re-runs.
    fourth = subprocess.run([*command, "student.checkpoint_every=7",
                             "student.keep_checkpoints=3", "teachers.max_concurrent=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    for stage in ("teachers", "soft", "student", "report"):
        assert f"[{stage}] done before" in fourth.stderr, fourth.stderr[-3000:]

    # `--only student` after an edit that an earlier stage reads: exit 2, nothing reused.
    labels = '["pos","neg"]'
    stale = subprocess.run([*command, "--only", "student", f"tasks.0.labels={labels}"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert stale.returncode == 2, stale.stderr[-3000:]
    assert "stage 'prepare' is stale" in stale.stderr and "--from prepare" in stale.stderr
