"""One translation from a Resources config to Ray's requests, and one device rule."""

from __future__ import annotations

import socket
import time

import pytest

from mtkd.config import Resources, config_from_dict
from mtkd.resources import on_gpu, ray_resources, task_options, tune_resources, work_device

# Resources -> what each consumer is given: Ray Train's resources_per_worker (Ray's names),
# Tune's with_resources, Ray Data's map_batches / a Ray task's options, and the device.
TABLE = [
    (Resources(), {"CPU": 1.0}, {"cpu": 1.0}, {"num_cpus": 1.0}, "cpu"),
    (Resources(cpu=0.5), {"CPU": 0.5}, {"cpu": 0.5}, {"num_cpus": 0.5}, "cpu"),
    (Resources(cpu=4, gpu=1), {"CPU": 4.0, "GPU": 1.0}, {"cpu": 4.0, "gpu": 1.0},
     {"num_cpus": 4.0, "num_gpus": 1.0}, "cuda"),
    (Resources(cpu=2, gpu=0.5, memory_gb=1.5),
     {"CPU": 2.0, "GPU": 0.5, "memory": 1610612736.0},
     {"cpu": 2.0, "gpu": 0.5, "memory": 1610612736.0},
     {"num_cpus": 2.0, "num_gpus": 0.5, "memory": 1610612736.0}, "cuda"),
    (Resources(cpu=1, memory_gb=8), {"CPU": 1.0, "memory": 8589934592.0},
     {"cpu": 1.0, "memory": 8589934592.0}, {"num_cpus": 1.0, "memory": 8589934592.0}, "cpu"),
    (Resources(cpu=0.0, gpu=2), {"CPU": 0.0, "GPU": 2.0}, {"cpu": 0.0, "gpu": 2.0},
     {"num_cpus": 0.0, "num_gpus": 2.0}, "cuda"),
]


@pytest.mark.parametrize(("resources", "train", "tune", "task", "device"), TABLE)
def test_one_translation_for_every_consumer(resources: Resources, train: dict, tune: dict,
                                            task: dict, device: str) -> None:
    request = ray_resources(resources)
    assert request == train
    assert tune_resources(request) == tune
    assert task_options(request) == task
    assert on_gpu(request) == (device == "cuda")
    # the device rule: CUDA iff the request holds GPUs (and torch sees one to use)
    import torch

    expected = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    assert work_device(request).type == expected


@pytest.mark.parametrize(("student", "request_"), [
    ({}, {"CPU": 1.0}),
    ({"use_gpu": True}, {"CPU": 1.0, "GPU": 1.0}),
    ({"use_gpu": True, "resources_per_worker": {"cpu": 4, "gpu": 2}}, {"CPU": 4.0, "GPU": 2.0}),
    # a GPU request alone puts the workers on GPUs, as for members and actors
    ({"resources_per_worker": {"cpu": 4, "gpu": 0.5}}, {"CPU": 4.0, "GPU": 0.5}),
    # memory_gb reaches Ray Train as for every other unit of work
    ({"use_gpu": True, "resources_per_worker": {"memory_gb": 2}},
     {"CPU": 1.0, "GPU": 1.0, "memory": 2147483648.0}),
])
def test_student_worker_request(student: dict, request_: dict) -> None:
    config = config_from_dict({"name": "x", "tasks": [{"name": "rotten_tomatoes"}],
                               "student": student})
    assert ray_resources(config.student.worker_resources) == request_


@pytest.mark.parametrize("section", ["teachers.resources_per_member",
                                     "soft_targets.resources_per_actor",
                                     "student.resources_per_worker"])
def test_every_resources_key_is_read(section: str) -> None:
    """cpu, gpu and memory_gb of every Resources section reach the request."""
    stage, key = section.split(".")
    config = config_from_dict({"name": "x", "tasks": [{"name": "rotten_tomatoes"}],
                               stage: {key: {"cpu": 3, "gpu": 1, "memory_gb": 0.5}}})
    resources = (config.student.worker_resources if stage == "student"
                 else getattr(getattr(config, stage), key))
    assert ray_resources(resources) == {"CPU": 3.0, "GPU": 1.0, "memory": 536870912.0}


@pytest.mark.parametrize(("address", "env", "expected"), [
    (None, None, "local"),           # ray.address: null starts a local Ray, never joins
    ("ray://head:10001", None, "ray://head:10001"),
    (None, "http://job-head:8265", None),  # inside a Ray job: Ray reads RAY_ADDRESS itself
])
def test_local_ray_never_joins_a_recorded_cluster(monkeypatch: pytest.MonkeyPatch,
                                                   address: str | None, env: str | None,
                                                   expected: str | None) -> None:
    import ray

    from mtkd import raycluster
    from mtkd.config import RayConfig
    from mtkd.raycluster import ensure_ray

    seen: dict = {}
    monkeypatch.setattr(raycluster, "unreachable", lambda address: None)  # no real head
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ensure_ray(RayConfig(address=address))
    assert seen.get("address") == expected


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(("address", "env", "named"), [
    ("127.0.0.1:{port}", None, "ray.address='127.0.0.1:{port}'"),
    ("ray://127.0.0.1:{port}", None, "ray.address='ray://127.0.0.1:{port}'"),
    ("auto", "127.0.0.1:{port}", "ray.address='auto'"),  # auto: the address Ray records
    (None, "127.0.0.1:{port}", "RAY_ADDRESS in the environment='127.0.0.1:{port}'"),
])
def test_an_unreachable_cluster_fails_fast_naming_address_and_fix(
        monkeypatch: pytest.MonkeyPatch, address: str | None, env: str | None,
        named: str) -> None:
    """A dead head (killed, not stopped) at an explicit or recorded address: a clear
    MtkdError within REACH_TIMEOUT_S (here 2 s), and ray.init is never called (it would
    retry for minutes with Ray's low-level warnings)."""
    import ray

    from mtkd import raycluster
    from mtkd.config import RayConfig
    from mtkd.errors import MtkdError

    port = _closed_port()
    monkeypatch.setattr(raycluster, "REACH_TIMEOUT_S", 2.0)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("ray.init was called"))
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env.format(port=port))
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = time.monotonic()
    with pytest.raises(MtkdError) as info:
        raycluster.ensure_ray(RayConfig(address=address.format(port=port) if address else None))
    assert time.monotonic() - started < 6.0
    text = str(info.value)
    assert named.format(port=port) in text, text
    assert f"127.0.0.1:{port}: Connection refused" in text and "ray start --head" in text


def test_a_listening_address_is_reachable() -> None:
    from mtkd.raycluster import unreachable

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert unreachable(f"127.0.0.1:{port}", timeout_s=2.0) is None
        assert unreachable(f"ray://127.0.0.1:{port}", timeout_s=2.0) is None
    assert unreachable("http://127.0.0.1:8265") is None  # a job address: Ray's business
