"""What a unit of work asks Ray for, and which device it then runs on.

One translation, :func:`ray_resources`, turns a ``Resources`` config (a teacher member's
``teachers.resources_per_member``, a soft-target actor's
``soft_targets.resources_per_actor``, a student worker's ``student.worker_resources``) into
Ray's request, in Ray's own resource names. Each Ray API then spells that same request
its own way:

* Ray Train: ``ScalingConfig(resources_per_worker=request, use_gpu=on_gpu(request))``;
* Ray Tune: ``tune.with_resources(trainable, tune_resources(request))``;
* Ray Data actors and Ray tasks: ``map_batches(..., **task_options(request))``,
  ``ray.remote(fn).options(**task_options(request))``.

One device rule, :func:`on_gpu` / :func:`work_device`: work whose request holds GPUs runs
on CUDA, any other work on the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtkd.config import Resources

if TYPE_CHECKING:
    import torch

GIB = 2**30


def ray_resources(resources: Resources) -> dict[str, float]:
    """Ray's request for one unit of work: ``CPU``, ``GPU`` (when > 0) and ``memory``
    (bytes, when ``memory_gb`` is set)."""
    request = {"CPU": float(resources.cpu)}
    if resources.gpu > 0:
        request["GPU"] = float(resources.gpu)
    if resources.memory_gb:
        request["memory"] = float(int(resources.memory_gb * GIB))
    return request


def tune_resources(request: dict[str, float]) -> dict[str, float]:
    """``request`` as ``tune.with_resources`` spells it (cpu, gpu, memory)."""
    return {key.lower(): value for key, value in request.items()}


def task_options(request: dict[str, float]) -> dict[str, float]:
    """``request`` as Ray tasks, actors and ``Dataset.map_batches`` spell it (num_cpus,
    num_gpus, memory); a resource not requested is left out (Ray's default: none)."""
    names = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
    return {names[key]: value for key, value in request.items()}


def on_gpu(request: dict[str, float]) -> bool:
    """The one device rule: work whose request holds GPUs runs on CUDA."""
    return request.get("GPU", 0.0) > 0


def work_device(request: dict[str, float], train_worker: bool = False) -> torch.device:
    """The device work with this ``request`` runs on, by :func:`on_gpu`: the CPU, or on a
    GPU request the GPU Ray Train gave this worker (``train_worker``) or CUDA (elsewhere:
    a Tune trial, an actor, a task; the CPU when torch sees no GPU)."""
    import torch

    if not on_gpu(request):
        return torch.device("cpu")
    if train_worker:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
