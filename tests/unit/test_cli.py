"""The mtkd command line as a user runs it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "jobs" / "configs" / "quickstart.yaml"


def mtkd(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtkd", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=120)


def test_validate_quickstart_exits_0() -> None:
    result = mtkd("validate", str(QUICKSTART))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_validate_print_shows_resolved_config() -> None:
    result = mtkd("validate", str(QUICKSTART), "--print", "teachers.size=7")
    assert result.returncode == 0, result.stderr
    assert "size: 7" in result.stdout


@pytest.mark.parametrize(("overrides", "expected"), [
    # quickstart: 3 tasks with a teacher
    (["teachers.size=7"], "7 teacher member(s)"),
    (["teachers.shape=per_task", "teachers.size=2"],
     "6 teacher member(s): 2 per task x 3 task(s)"),
    (["teachers.shape=per_task", "teachers.size=2", "tasks.1.teacher=false"],
     "4 teacher member(s): 2 per task x 2 task(s)"),
    (["teachers.shape=per_task", "teachers.size=3", "teachers.init_from_multitask=true"],
     "9 teacher member(s): 3 per task x 3 task(s) + the shared multi-task model"),
])
def test_validate_counts_the_members_the_stage_trains(
        overrides: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    # per_task trains size members for each task with a teacher (the old line said size);
    # in process: validate starts no Ray, and a subprocess costs seconds per case
    from mtkd.cli import main

    assert main(["validate", str(QUICKSTART), *overrides]) == 0
    assert expected in capsys.readouterr().out


def test_bad_config_names_all_three_key_paths_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\ntasks:\n  - name: trec\nteachers:\n  sise: 3\n"
                   "  training:\n    batch_size: large\nstudent:\n  kd:\n    soft_weight: 1.5\n")
    result = mtkd("validate", str(bad))
    assert result.returncode == 2
    for key in ("teachers.sise", "teachers.training.batch_size", "student.kd.soft_weight"):
        assert key in result.stderr
    assert "did you mean 'size'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("args", [
    ("validate", "does/not/exist.yaml"),
    ("validate", str(QUICKSTART), "teachers.size=-1"),
    ("validate", str(QUICKSTART), "not-an-override"),
    ("run", str(QUICKSTART), "--only", "nonexistent"),
])
def test_user_mistakes_exit_2_without_traceback(args: tuple[str, ...]) -> None:
    result = mtkd(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("mtkd: error:")
    assert "Traceback" not in result.stderr


def test_unreachable_s3_storage_is_a_clear_error(tmp_path: Path) -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env_cmd = [sys.executable, "-m", "mtkd", "run", str(QUICKSTART),
               "storage_path=s3://bucket/prefix"]
    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "topsecretvalue",
           "AWS_REGION": "us-east-1", "HOME": str(tmp_path)}
    result = subprocess.run(env_cmd, cwd=REPO, text=True, capture_output=True, timeout=120,
                            env=env)
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "topsecretvalue" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["", "validate", "run"])
def test_help_for_every_subcommand(command: str) -> None:
    result = mtkd(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "usage: mtkd" in result.stdout
    if command:
        assert "key.path=value" in result.stdout


def test_run_saves_resolved_config_and_summary(tmp_path: Path) -> None:
    result = mtkd("run", str(QUICKSTART), f"storage_path={tmp_path}", "ray.env_vars.MY_TOKEN=abc",
                  "--only", "prepare")
    assert result.returncode == 0, result.stderr
    saved = (tmp_path / "quickstart" / "config.yaml").read_text()
    assert "MY_TOKEN: '***redacted***'" in saved and "abc" not in saved
    assert f"results in {tmp_path / 'quickstart'}" in result.stdout
