"""One run summary: `mtkd run` and the Ray job entry point print the same lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tiny import toy_files_task

from mtkd.cli import main
from mtkd.jobs.entry import job_main


def _summary(out: str) -> list[str]:
    """The summary's lines from a command's stdout, with each stage's wall time blanked."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "results in" in line)
    return [re.sub(r" +[\d.]+ s +", " <t> s ", line) for line in lines[start:]]


def test_cli_and_job_entry_print_the_same_summary(tiny_encoder_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """student.distill: false disables teachers and soft: neither path lists them as
    "not run yet"; only the title differs."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    task = toy_files_task(tmp_path)
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(yaml.safe_dump({
        "name": "kd-off", "storage_path": str(tmp_path / "runs"),
        "encoder": {"path": str(tiny_encoder_dir)}, "tasks": [task],
        "student": {"num_layers": 2, "distill": False}}))
    root = tmp_path / "runs" / "kd-off"

    assert main(["run", str(config_file), "--only", "prepare"]) == 0
    from_cli = _summary(capsys.readouterr().out)
    assert job_main(["--config", str(config_file), "--stage", "prepare"],
                    stage_required=True) == 0
    from_job = _summary(capsys.readouterr().out)

    assert from_cli == [
        f"mtkd run kd-off: results in {root}",
        f"  config   {root / 'config.yaml'}",
        f"  prepare   ran <t> s manifest {root / 'manifests' / 'prepare.json'}",
        "  not run yet: student, report",
    ]
    assert from_job == [from_cli[0].replace("mtkd run", "mtkd job"), *from_cli[1:]]
