"""Ray jobs end to end: a real `ray start --head` with token auth on free ports, the
pipeline submitted with `mtkd submit`, followed with `mtkd status` and `mtkd logs`.

Autoscaling is simulated with Ray's fake_multinode provider: a head without GPUs whose
autoscaler starts local "GPU nodes" when teacher members ask for GPUs, and removes them
when idle.

Every head is started with `--block` in its own session and stopped by killing the
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
from tiny import make_tiny_bert, write_task

from mtkd.cli import main
from mtkd.errors import MtkdError
from mtkd.jobs import client, entry

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


@contextlib.contextmanager
def start_head(num_cpus: int = 2, autoscaling: dict | None = None) -> Iterator[RayHead]:
    """`ray start --head --block` on free ports with token auth, in its own session.

    With ``autoscaling`` (a fake_multinode node-type dict) the head runs Ray's autoscaler
    with the fake provider, which starts worker "nodes" as local processes on demand.
    """
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
               f"--runtime-env-agent-port={runtime_env}", f"--num-cpus={num_cpus}",
               "--num-gpus=0", f"--temp-dir={temp_dir}", "--include-dashboard=true",
               "--disable-usage-stats"]
    if autoscaling is not None:
        config = {"cluster_name": "fake", "max_workers": 4, "upscaling_speed": 1.0,
                  "idle_timeout_minutes": 0.5,
                  # No SSH "updaters" for local fake nodes (otherwise every new node
                  # fails its setup and is replaced, forever).
                  "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs}",
                               "disable_node_updaters": True,
                               "disable_launch_config_check": True,
                               # Fake nodes share one IP: the autoscaler must tell them
                               # apart by node id, or it never sees them come up.
                               "use_node_id_as_ip": True},
                  # The fake provider tags its head node with this type name.
                  "head_node_type": "ray.head.default",
                  "available_node_types": {
                      "ray.head.default": {"resources": {"CPU": num_cpus}, "node_config": {},
                                           "max_workers": 0},
                      **autoscaling},
                  # Fields `ray up` would fill in; the monitor reads them.
                  "auth": {}, "file_mounts": {}, "cluster_synced_files": [],
                  "file_mounts_sync_continuously": False, "initialization_commands": [],
                  "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
                  "head_start_ray_commands": [], "worker_start_ray_commands": []}
        config_file = Path(temp_dir) / "autoscaling.json"
        config_file.write_text(json.dumps(config))
        command.append(f"--autoscaling-config={config_file}")
        head_env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
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
def ray_head() -> Iterator[RayHead]:
    with start_head() as head:
        yield head


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
        "student": {"num_layers": 2},  # the encoder has 2
    }
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def mtkd(head: RayHead, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtkd", *args, "--address", head.address],
                          capture_output=True, text=True, timeout=timeout, env=head.env,
                          cwd=REPO)


# ------------------------------------------------------------------ autoscaling, simulated
# (first: the module's plain head is started lazily, after it, so the two never overlap)


def alive_gpu_nodes(head: RayHead) -> int:
    import requests

    reply = requests.get(f"{head.address}/api/v0/nodes?limit=100", timeout=10,
                         headers=client.auth_headers())
    reply.raise_for_status()
    nodes = reply.json()["data"]["result"]["result"]
    return sum(1 for n in nodes
               if n["state"] == "ALIVE" and n.get("resources_total", {}).get("GPU", 0) > 0)


@pytest.mark.slow
def test_autoscaler_adds_gpu_nodes_for_members_and_removes_them(
        experiment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A head without GPUs; two members asking for a GPU each: the (fake) autoscaler adds
    GPU nodes, the members train there, and the idle nodes go away again."""
    from mtkd.config import config_from_dict
    from mtkd.pipeline import run_pipeline

    data = yaml.safe_load(experiment.read_text())
    data.update(name="scaled", storage_path=str(tmp_path / "runs"))
    data["teachers"].update(size=2, max_concurrent=2, resources_per_member={"cpu": 1, "gpu": 1},
                            variation={"strategy": "grid", "seed": [1, 2]})
    config_path = tmp_path / "exp.yaml"
    config_path.write_text(yaml.safe_dump(data))
    run_pipeline(config_from_dict(data), only="prepare")  # no Ray needed: not a job
    gpu_type = {"gpu": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {},
                        "min_workers": 0, "max_workers": 2}}
    with start_head(num_cpus=1, autoscaling=gpu_type) as head:
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", head.env["RAY_AUTH_TOKEN_PATH"])
        assert alive_gpu_nodes(head) == 0
        # No --working-dir on the fake cluster: every fake node extracts it into the same
        # folder and deletes the running members' cwd. Absolute paths work (one machine).
        sub = mtkd(head, "submit", str(config_path), "--only", "teachers", "--no-wait")
        assert sub.returncode == 0, sub.stderr[-3000:]
        job_id = sub.stdout.split("submitted job ", 1)[1].split()[0]
        most, info = 0, {"status": ""}
        deadline = time.time() + 300
        while time.time() < deadline and info["status"] not in client.TERMINAL:
            most = max(most, alive_gpu_nodes(head))
            info = client.job_info(job_id, address=head.address)
            time.sleep(1)
        assert info["status"] == "SUCCEEDED", client.job_logs(job_id, address=head.address)[-4000:]
        assert most >= 1  # the head has no GPU: the members ran on added nodes
        teachers = json.loads((tmp_path / "runs/scaled/manifests/teachers.json").read_text())
        assert teachers["status"] == "complete"
        deadline = time.time() + 150  # idle_timeout_minutes 0.5, then the node is removed
        while alive_gpu_nodes(head) and time.time() < deadline:
            time.sleep(2)
        assert alive_gpu_nodes(head) == 0


# ------------------------------------------------------------------ jobs on a plain head


@pytest.mark.slow
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
        if any(s in status for s in client.TERMINAL):
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


@pytest.mark.slow
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


# ------------------------------------------------------------------ no cluster needed


def test_entrypoints_with_and_without_working_dir(tmp_path: Path) -> None:
    quickstart = REPO / "jobs" / "configs" / "quickstart.yaml"
    assert client.build_entrypoint(quickstart, ["teachers.size=4"], working_dir=REPO,
                                 only="teachers") == (
        "python jobs/stage.py --config jobs/configs/quickstart.yaml --stage teachers "
        "teachers.size=4")
    assert client.build_entrypoint(quickstart, working_dir=REPO, from_stage="soft",
                                 force=True) == (
        "python jobs/pipeline.py --config jobs/configs/quickstart.yaml --from soft --force")
    assert client.build_entrypoint(quickstart, working_dir=REPO, to_stage="teachers") == (
        "python jobs/pipeline.py --config jobs/configs/quickstart.yaml --to teachers")
    # No working dir: absolute paths on a cluster that shares this filesystem.
    assert client.build_entrypoint(quickstart, ["name=a b"]) == (
        f"{sys.executable} {REPO}/jobs/pipeline.py --config {quickstart} 'name=a b'")
    # A working dir without jobs/: the installed mtkd's CLI.
    (tmp_path / "exp.yaml").write_text("name: x\n")
    assert client.build_entrypoint(tmp_path / "exp.yaml", working_dir=tmp_path,
                                 only="prepare", python="python3") == (
        "python3 -m mtkd run exp.yaml --only prepare")
    with pytest.raises(MtkdError, match="outside --working-dir"):
        client.build_entrypoint(quickstart, working_dir=tmp_path)


def test_runtime_env_keeps_secrets_out(tmp_path: Path) -> None:
    env = client.build_runtime_env({"HF_HUB_OFFLINE": "1", "AWS_SECRET_ACCESS_KEY": "s",
                                  "WANDB_API_KEY": "k"}, working_dir=tmp_path, pip=["rich"])
    assert env["env_vars"] == {"HF_HUB_OFFLINE": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
    assert env["working_dir"] == str(tmp_path)
    assert ".venv" in env["excludes"] and "runs" in env["excludes"]
    assert env["pip"] == ["rich"]
    assert set(client.build_runtime_env({})) == {"env_vars"}


def test_auth_headers_follow_rays_token_lookup(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert client.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert client.auth_headers() == {"Authorization": "Bearer home-token"}
    (tmp_path / "t").write_text("file-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert client.auth_headers() == {"Authorization": "Bearer file-token"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert client.auth_headers() == {"Authorization": "Bearer env-token"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert client.auth_headers() == {}


def test_job_config_drops_local_ray_settings_only_when_joining(
        monkeypatch: pytest.MonkeyPatch) -> None:
    quickstart = REPO / "jobs" / "configs" / "quickstart.yaml"
    overrides = ["ray.num_cpus=2", "ray.object_store_memory_gb=1"]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert entry.job_config(quickstart, overrides).ray.num_cpus == 2
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # what the job supervisor sets
    ray = entry.job_config(quickstart, overrides).ray
    assert (ray.num_cpus, ray.num_gpus, ray.object_store_memory_gb) == (None, None, None)


def test_submit_checks_the_config_before_contacting_the_cluster(
        capsys: pytest.CaptureFixture) -> None:
    quickstart = str(REPO / "jobs" / "configs" / "quickstart.yaml")
    [closed] = free_ports(1)
    address = f"http://127.0.0.1:{closed}"
    assert main(["submit", quickstart, "teachers.size=0", "--address", address]) == 2
    assert "teachers.size" in capsys.readouterr().err
    assert main(["submit", quickstart, "ray.address=ray://h:10001", "--address", address]) == 2
    assert "ray.address is 'ray://h:10001'" in capsys.readouterr().err
    assert main(["submit", quickstart, "--address", address]) == 2
    assert "cannot reach the Ray job server" in capsys.readouterr().err

