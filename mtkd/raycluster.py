"""Connect to Ray as the config says: a local Ray on a laptop, or an existing cluster.

Stages call :func:`ensure_ray` before using Ray Tune, Data or Train. Environment
variables from ``ray.env_vars`` reach every worker through the runtime environment;
credentials are never put there by mtkd (workers inherit them from the cluster).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mtkd.config import RayConfig, Resources
from mtkd.errors import MtkdError
from mtkd.precision import DeviceInfo
from mtkd.resources import ray_resources, task_options, work_device

log = logging.getLogger("mtkd")
# Keep Ray's own console output for what matters; its deprecation chatter goes to the log.
QUIET_ENV = {"RAY_DEDUP_LOGS": "1", "RAY_AIR_NEW_OUTPUT": "0",
             # mtkd's own lines (progress of each member, each worker) are never folded
             # into "[repeated Nx across cluster]": they differ in what they report.
             "RAY_DEDUP_LOGS_ALLOW_REGEX": r"\[mtkd ",
             "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
             # Ctrl-C must reach mtkd (which keeps finished work and exits 130), not be
             # swallowed by a handler Tune leaves installed after fit().
             "TUNE_DISABLE_SIGINT_HANDLER": "1",
             # Inside a submitted Ray job, mtkd's runtime env merges with the job's.
             "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}


def worker_env(config: RayConfig) -> dict[str, str]:
    """Environment for Ray workers: the config's env_vars plus mtkd's asset cache."""
    env = dict(config.env_vars)  # secrets never come from here: credentials are inherited
    if "MTKD_CACHE_DIR" in os.environ and "MTKD_CACHE_DIR" not in env:
        env["MTKD_CACHE_DIR"] = os.environ["MTKD_CACHE_DIR"]
    return env


REACH_TIMEOUT_S = 15.0
"""How long :func:`unreachable` keeps trying to open a TCP connection to a cluster's
address before mtkd says it cannot be reached (Ray itself retries for minutes)."""


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port that ``ray.init(address)`` will connect to ("auto": the address Ray
    recorded for the last ``ray start``), or None when Ray decides (an http(s) job
    address; "auto" with nothing recorded is left to Ray's own error)."""
    if address.startswith(("http://", "https://")):
        return None
    text = address[len("ray://"):].split("/", 1)[0] if address.startswith("ray://") else address
    if text == "auto":
        from ray._private.services import get_ray_address_from_environment

        try:
            text = get_ray_address_from_environment("auto", None) or ""
        except (ValueError, ConnectionError, OSError):
            return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def unreachable(address: str, timeout_s: float | None = None) -> str | None:
    """None when a TCP connection to the Ray cluster at ``address`` (host:port, "auto"
    resolved as Ray resolves it, or ray://host:port) opens within ``timeout_s`` seconds;
    otherwise what failed, e.g. "10.0.0.5:6379: Connection refused". Retries once a
    second, so a head that is still starting counts; Ctrl-C interrupts it at any moment."""
    target = _host_port(address)
    if target is None:
        return None
    timeout_s = REACH_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(target, timeout=min(2.0, timeout_s)):
                return None
        except OSError as err:
            reason = err.strerror or type(err).__name__
            if time.monotonic() + 1.0 >= deadline:
                return f"{target[0]}:{target[1]}: {reason}"
        time.sleep(1.0)


def joins_cluster(config: RayConfig) -> bool:
    """Whether mtkd joins an existing cluster (ray.address, or RAY_ADDRESS inside a Ray
    job) rather than starting a local Ray on this machine."""
    return config.address is not None or bool(os.environ.get("RAY_ADDRESS"))


def _probe(request: dict[str, float]) -> DeviceInfo:
    from mtkd.precision import probe_device

    return probe_device(work_device(request))


PROBE_TIMEOUT_S = 900.0
"""How long a stage waits for a node to take its device probe (an autoscaler may have to
start one first)."""


def probe_work_device(config: RayConfig, resources: Resources,
                      timeout_s: float = PROBE_TIMEOUT_S) -> DeviceInfo | None:
    """The device a unit of work that asks for ``resources`` will get.

    A local Ray runs the work on this machine: probed here. On a cluster a small Ray task
    with the same GPU request (and no CPU) probes a node of the kind the work lands on;
    None when no node took it within ``timeout_s`` (the workers then decide alone).
    """
    request = ray_resources(Resources(cpu=0.0, gpu=resources.gpu))
    if not joins_cluster(config):
        return _probe(request)
    import ray

    ensure_ray(config)
    ref = ray.remote(_probe).options(**task_options(request)).remote(request)
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        log.warning("no node took the device probe (gpu=%s) within %.0f s", resources.gpu,
                    timeout_s)
        return None
    return ray.get(ref)


def ensure_ray(config: RayConfig) -> None:
    """Start or join Ray once per process (a second call is a no-op)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner polls
    # every second: without it each poll fails with a warning in the log, and the cleaner
    # cannot release a dead run's resources. It is also where users watch a local run.
    kwargs: dict = {"runtime_env": {"env_vars": worker_env(config)},
                    "log_to_driver": True, "logging_level": logging.WARNING,
                    "include_dashboard": True}
    joining = joins_cluster(config)
    if not joining:
        # "local": always a new Ray on this machine. Without it ray.init() joins whatever
        # `ray start` left recorded in /tmp/ray (a stopped or killed head included: minutes
        # of connection retries, no message), which ray.address: null never means.
        kwargs.update(address="local", num_cpus=config.num_cpus, num_gpus=config.num_gpus)
        if config.object_store_memory_gb:
            kwargs["object_store_memory"] = int(config.object_store_memory_gb * 2**30)
    else:
        if config.address is not None:
            kwargs["address"] = config.address
        kwargs.pop("include_dashboard")
        address = config.address or os.environ.get("RAY_ADDRESS", "")
        problem = unreachable(address)
        if problem:
            source = ("ray.address" if config.address is not None
                      else "RAY_ADDRESS in the environment")
            raise MtkdError(f"cannot reach the Ray cluster at {source}={address!r} ({problem}, "
                            f"tried for {REACH_TIMEOUT_S:.0f} s) (fix: start the cluster, e.g. "
                            "`ray start --head`; check the address; or set ray.address: null "
                            "for a local Ray on this machine)")
    try:
        context = ray.init(**kwargs)
    except ConnectionError as err:
        raise MtkdError(f"cannot connect to the Ray cluster at ray.address={config.address!r}: "
                        f"{err} (fix: start it with `ray start --head`, check the address, or "
                        "set ray.address: null for a local Ray)") from None
    resources = ray.cluster_resources()
    where = config.address or os.environ.get("RAY_ADDRESS") or "local"
    dashboard = getattr(context, "dashboard_url", None)
    log.info("Ray %s: %s CPU, %s GPU%s", where, resources.get("CPU", 0), resources.get("GPU", 0),
             f"; dashboard http://{dashboard}" if dashboard and not joining else "")


def _where(device: str) -> dict[str, Any]:
    """Where this process runs: node (IP, or host name outside Ray), Ray node id, the
    resources Ray assigned to the running task ({} outside a task) and the device."""
    from mtkd.precision import probe_device

    where: dict[str, Any] = {"node": socket.gethostname(), "node_id": None, "resources": {}}
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            where["node_id"] = context.get_node_id()
            where["node"] = ray.util.get_node_ip_address()
            if context.get_task_id() is not None:
                where["resources"] = {k: float(v) for k, v in
                                      context.get_assigned_resources().items()}
    except Exception:  # outside Ray (or an old Ray): the host name is enough
        pass
    where["device"] = probe_device(device).describe()
    return where


def _placed(fn: Callable[..., Any], args: tuple, threads: int | None,
            request: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    """Run ``fn(*args, device=...)`` here, on the device ``request`` gets by the one device
    rule (:func:`mtkd.resources.work_device`), with ``threads`` torch threads on the CPU
    (None: leave torch's setting). Returns (fn's result, :func:`_where`)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = work_device(request).type
    return fn(*args, device=device), _where(device)


@dataclass(frozen=True)
class Placement:
    """Where one piece of model work (the student's export and scoring, the report's speed
    measurement) runs: as one Ray task asking for ``request`` (a :func:`ray_resources`
    request; Ray picks the node, and on a cluster the autoscaler starts one that fits), or
    in this process on its CPU when ``ray`` is None (``mtkd report`` on a laptop)."""

    request: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    """Ray's request, e.g. {"CPU": 4.0, "GPU": 1.0}; torch gets int(CPU) threads there."""
    ray: RayConfig | None = None
    """The Ray to run on (:func:`ensure_ray`); None: this process."""
    stage: str = "report"
    """The stage named in log lines."""

    @classmethod
    def student(cls, config: Any, stage: str) -> Placement:
        """A student worker's resources (student.resources_per_worker, with the GPU that
        student.use_gpu implies) on the experiment's Ray (``config``: ExperimentConfig)."""
        return cls(ray_resources(config.student.worker_resources), config.ray, stage)

    def probe(self) -> DeviceInfo | None:
        """The device the work will get (None: no node took the probe in time)."""
        if self.ray is None:
            return _probe({"CPU": 1.0})
        return probe_work_device(self.ray, Resources(cpu=0.0,
                                                     gpu=self.request.get("GPU", 0.0)))

    def run(self, what: str, fn: Callable[..., Any], *args: Any
            ) -> tuple[Any, dict[str, Any]]:
        """``fn(*args, device=...)`` where this placement says; returns (its result, where
        it ran: node, node_id, resources Ray assigned, device) and logs the latter. ``fn``
        and ``args`` must pickle (a module-level function, plain values)."""
        if self.ray is None:
            result, where = _placed(fn, args, None, {"CPU": 1.0})
        else:
            import ray

            ensure_ray(self.ray)
            threads = max(1, int(self.request["CPU"]))
            task = ray.remote(_placed).options(**task_options(self.request),
                                               name=f"mtkd-{self.stage}")
            result, where = ray.get(task.remote(fn, args, threads, self.request))
        log.info("[%s] %s ran on node %s%s, device %s%s", self.stage, what, where["node"],
                 f" ({where['node_id'][:8]})" if where.get("node_id") else "",
                 where["device"],
                 f", Ray resources {where['resources']}" if where["resources"] else
                 " (this process)")
        return result, where
