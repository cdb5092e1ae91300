"""Ray jobs end to end: a real `ray start --head` with token auth on free ports, the
pipeline submitted with `mtkd submit`, followed with `mtkd status` and `mtkd logs`.

The head is started with `--block` in its own session and stopped by killing the
processes it started (never `ray stop`, which would kill every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_teachers import write_task
from tiny import make_tiny_bert

from mtkd import jobs
from mtkd.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@dataclass
class RayHead:
    address: str  # job server (dashboard) URL
    env: dict[str, str]  # a client environment: token file known, RAY_AUTH_MODE unset


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def stop_processes(pid: int, temp_dir: str) -> None:
    """Terminate the `ray start` process, everything it started, and anything else that
    belongs to this head's temp dir (job drivers run in their own sessions)."""
    import psutil

    procs: list[psutil.Process] = []
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    for proc in psutil.process_iter(["cmdline"]):
        if proc not in procs and any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
            procs.append(proc)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    temp_dir = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # short: Ray's socket paths
    token_file = Path(temp_dir) / "token"
    token_file.write_text(uuid.uuid4().hex)
    gcs, dashboard, client, agent, agent_grpc, runtime_env = free_ports(6)
    head_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               f"--port={gcs}", f"--dashboard-port={dashboard}",
               f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
               f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={runtime_env}", "--num-cpus=2", "--num-gpus=0",
               f"--temp-dir={temp_dir}", "--include-dashboard=true", "--disable-usage-stats"]
    log = Path(temp_dir) / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=head_env,
                                cwd=temp_dir, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    client_env = {k: v for k, v in os.environ.items()
                  if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS",
                               "RAY_API_SERVER_ADDRESS")}
    client_env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    try:
        import requests

        deadline = time.time() + 120
        while True:
            assert head.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "Ray head did not start:\n" + log.read_text()[-3000:]
            try:
                if requests.get(f"{address}/api/version", timeout=2).status_code in (200, 401):
                    break
            except requests.exceptions.RequestException:
                pass
            time.sleep(1)
        yield RayHead(address, client_env)
    finally:
        stop_processes(head.pid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny config: a random 2-layer encoder, one 200-example task, one teacher."""
    root = tmp_path_factory.mktemp("jobs")
    encoder = make_tiny_bert(root / "encoder")
    data = {
        "name": "jobexp", "storage_path": str(root / "runs"),
        # A local-Ray setting that ray.init refuses when joining a cluster: the job must
        # drop it rather than fail.
        "ray": {"num_cpus": 2, "env_vars": {"MTKD_JOB_MARK": "from-config",
                                            "SOME_SECRET_TOKEN": "hidden"}},
        "encoder": {"path": str(encoder)},
        "tasks": [{"name": "toy", "source": "files", "type": "classification",
                   "labels": ["neg", "pos"], "max_length": 32,
                   "files": {"train": str(write_task(root / "train.csv", 200, 0)),
                             "dev": str(write_task(root / "dev.csv", 40, 1))}}],
        "teachers": {"size": 1, "max_concurrent": 1, "resources_per_member": {"cpu": 1},
                     "variation": {"strategy": "grid", "seed": [1]},
                     "training": {"epochs": 1, "batch_size": 32, "dropout": 0.0}},
    }
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def mtkd(head: RayHead, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtkd", *args, "--address", head.address],
                          capture_output=True, text=True, timeout=timeout, env=head.env,
                          cwd=REPO)


def test_submit_status_logs_with_token_auth(ray_head: RayHead, experiment: Path) -> None:
    runs = experiment.parent / "runs" / "jobexp"

    # 1. Follow a job to the end: prepare only.
    first = mtkd(ray_head, "submit", str(experiment), "--only", "prepare")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "submitted job" in first.stdout
    assert "mtkd job jobexp: results in" in first.stdout  # the job's summary, streamed
    assert first.stdout.rstrip().endswith("SUCCEEDED")
    assert json.loads((runs / "manifests" / "prepare.json").read_text())["status"] == "complete"
    assert "SOME_SECRET_TOKEN" in first.stderr  # named as held back from the runtime env

    # 2. Submit and return: the teachers stage (Ray Tune inside the job, joining its cluster).
    second = mtkd(ray_head, "submit", str(experiment), "teachers.training.epochs=1",
                  "--only", "teachers", "--no-wait")
    assert second.returncode == 0, second.stderr[-3000:]
    job_id = second.stdout.split("submitted job ", 1)[1].split()[0]
    deadline = time.time() + 240
    status = ""
    while time.time() < deadline:
        status = mtkd(ray_head, "status", job_id).stdout
        if any(s in status for s in jobs.TERMINAL):
            break
        time.sleep(3)
    logs = mtkd(ray_head, "logs", job_id)
    assert f"{job_id}: SUCCEEDED" in status, status + logs.stdout[-4000:]
    assert logs.returncode == 0
    assert "mtkd job jobexp: results in" in logs.stdout
    assert "teachers  ran" in logs.stdout
    assert "ignoring local-Ray settings ray.num_cpus=2" in logs.stdout
    assert (runs / "manifests" / "teachers.json").exists()

    followed = mtkd(ray_head, "logs", job_id, "--follow")  # a finished job: returns at once
    assert "mtkd job jobexp: results in" in followed.stdout


def test_errors_are_one_line_user_errors(ray_head: RayHead, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Token auth is really on: without the token the request is refused, clearly.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert main(["status", "raysubmit_nope", "--address", ray_head.address]) == 2
    err = capsys.readouterr().err
    assert "rejected the request" in err and "RAY_AUTH_TOKEN" in err
    # With the token: an unknown job id.
    for key, value in ray_head.env.items():
        if key.startswith("RAY_AUTH"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert main(["status", "raysubmit_nope", "--address", ray_head.address]) == 2
    assert "no job 'raysubmit_nope'" in capsys.readouterr().err
    # Nothing listening.
    [closed] = free_ports(1)
    assert main(["status", "x", "--address", f"http://127.0.0.1:{closed}"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray job server" in err and "ray start --head" in err
