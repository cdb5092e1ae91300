"""One translation from a Resources config to Ray's requests, and one device rule."""

from __future__ import annotations

import socket
import time

import pytest

from mtkd.config import Resources, config_from_dict
from mtkd.raycluster import on_gpu, ray_resources, tune_resources

GIB = 2**30


@pytest.mark.parametrize(("resources", "gpu", "request_"), [
    (Resources(), None, {"CPU": 1.0}),
    (Resources(cpu=0.5), None, {"CPU": 0.5}),
    (Resources(cpu=4, gpu=1), None, {"CPU": 4.0, "GPU": 1.0}),
    (Resources(cpu=2, gpu=0.5, memory_gb=1.5), None,
     {"CPU": 2.0, "GPU": 0.5, "memory": float(int(1.5 * GIB))}),
    (Resources(cpu=1, memory_gb=8), None, {"CPU": 1.0, "memory": float(8 * GIB)}),
    # the student's use_gpu supplies the GPU count
    (Resources(cpu=2), 1.0, {"CPU": 2.0, "GPU": 1.0}),
    (Resources(cpu=2, gpu=2), 0.0, {"CPU": 2.0}),
])
def test_ray_resources(resources: Resources, gpu: float | None, request_: dict) -> None:
    got = ray_resources(resources, gpu)
    assert got == request_
    assert on_gpu(got) == ("GPU" in request_)
    assert tune_resources(got) == {k.lower(): v for k, v in request_.items()}


@pytest.mark.parametrize(("student", "gpus"), [
    ({}, 0.0),
    ({"use_gpu": True}, 1.0),
    ({"use_gpu": True, "resources_per_worker": {"cpu": 4, "gpu": 2}}, 2.0),
    # a GPU request alone puts the workers on GPUs, as for members and actors
    ({"resources_per_worker": {"cpu": 4, "gpu": 0.5}}, 0.5),
])
def test_student_gpu_per_worker(student: dict, gpus: float) -> None:
    config = config_from_dict({"name": "x", "tasks": [{"name": "rotten_tomatoes"}],
                               "student": student})
    assert config.student.gpu_per_worker == gpus


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
