"""How a training step is executed: plain PyTorch here (one process, or data-parallel over
ranks with DDP), DeepSpeed in the student worker.

The loop (:mod:`mtkd.training.loop`) only calls ``forward``, ``backward`` and ``step``;
a backend owns the model on its device, the optimizer, the schedule, mixed precision,
gradient accumulation and clipping, and saves and loads that state for the one
resumable-checkpoint format (:mod:`mtkd.training.checkpoint`: ``save_state`` /
``load_state``). The DeepSpeed adapter implements the same methods around
``deepspeed.initialize``'s engine, so no loop or checkpoint code is copied.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Protocol

import torch

from mtkd.config import TrainingConfig
from mtkd.precision import Resolved, autocast, resolve_here
from mtkd.training.optim import build_adamw, build_scheduler
from mtkd.training.stages import parameter_unit


class Backend(Protocol):
    """What the training loop needs from an execution backend."""

    model: torch.nn.Module
    """The bare model (for evaluation and saving), already on ``device``."""
    device: torch.device
    precision: str
    """The resolved precision the step runs in: fp32, bf16 or fp16."""
    resolved: Resolved
    """How it was chosen (requested value, device), for the artifacts."""

    def forward(self, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate one micro-batch's loss (scaled for accumulation by the backend)."""

    def step(self) -> bool:
        """Optimizer step at an accumulation boundary; returns whether it stepped."""

    def learning_rate(self) -> float: ...

    def loss_scale(self) -> float | None:
        """The fp16 dynamic loss scale now (None when the precision needs none)."""

    def save_state(self, folder: Path, rank: int) -> None:
        """Write this rank's part of the resumable state (weights, optimizer, schedule,
        loss scaler) into the local checkpoint ``folder`` (every rank calls it)."""

    def load_state(self, folder: Path, rank: int) -> None:
        """Restore that state from a checkpoint ``folder`` (the ranks' files merged)."""


TORCH_STATE_FILE = "torch_state.pt"
"""TorchBackend's state in a checkpoint folder (rank 0's; the ranks' states are equal)."""


def warmup_steps(config: TrainingConfig, total_steps: int) -> int:
    return round(config.warmup_ratio * total_steps)


class TorchBackend:
    """Single-process PyTorch: AdamW, linear schedule, autocast, accumulation, clipping.

    ``config.precision`` is resolved on ``device`` by the precision rule
    (:mod:`mtkd.precision`; ``precision_key`` names the setting in its errors) unless
    ``resolved`` is given. fp16 trains with dynamic loss scaling (torch's GradScaler:
    the loss is multiplied by the scale before backward, gradients are unscaled before
    clipping, a step whose gradients hold inf/NaN is skipped and the scale halved, and
    the scale doubles after 2000 clean steps).
    """

    def __init__(self, model: torch.nn.Module, config: TrainingConfig, total_steps: int,
                 device: torch.device | str = "cpu", *, resolved: Resolved | None = None,
                 precision_key: str = "training.precision", freezable: bool = False) -> None:
        """``freezable``: group the optimizer's parameters by freezing unit, for staged
        training (:mod:`mtkd.training.stages`)."""
        self.device = torch.device(device)
        self.resolved = resolved or resolve_here(config.precision, self.device, precision_key)
        self.precision = self.resolved.precision
        self.model = model.to(self.device)
        self.grad_accum = config.grad_accum
        self.grad_clip = config.grad_clip
        self.optimizer = build_adamw(self.model, config.learning_rate, config.weight_decay,
                                     parameter_unit if freezable else None)
        self.scheduler = build_scheduler(self.optimizer, warmup_steps(config, total_steps),
                                         total_steps)
        # fp16 needs loss scaling; bf16 has fp32's range and does not.
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.resolved.loss_scaling else None)
        self.micro_steps = 0
        self.skipped_steps = 0
        """Optimizer steps the loss scaler skipped (inf/NaN gradients)."""

    def forward(self, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.model(task, **inputs)

    def backward(self, loss: torch.Tensor) -> None:
        scaled = loss / self.grad_accum
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        self.micro_steps += 1

    def step(self) -> bool:
        if self.micro_steps % self.grad_accum:
            return False
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped when the gradients hold inf/NaN
            self.scaler.update()
            if self.scaler.get_scale() < scale:
                self.skipped_steps += 1
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def loss_scale(self) -> float | None:
        """The current fp16 loss scale (None without loss scaling)."""
        return float(self.scaler.get_scale()) if self.scaler else None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (load with torch.load(weights_only=True))."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "micro_steps": self.micro_steps,
                "skipped_steps": self.skipped_steps,
                "scaler": self.scaler.state_dict() if self.scaler else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps = int(state["micro_steps"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save_state(self, folder: Path, rank: int = 0) -> None:
        """Rank 0 writes :meth:`state_dict` to ``TORCH_STATE_FILE`` (data-parallel ranks
        hold the same state; the others write nothing)."""
        if rank == 0:
            torch.save(self.state_dict(), Path(folder) / TORCH_STATE_FILE)

    def load_state(self, folder: Path, rank: int = 0) -> None:
        """Every rank loads rank 0's ``TORCH_STATE_FILE`` (weights_only)."""
        self.load_state_dict(torch.load(Path(folder) / TORCH_STATE_FILE, weights_only=True,
                                        map_location="cpu"))


class DataParallelBackend:
    """:class:`TorchBackend` over a ``torch.distributed`` process group (PyTorch DDP).

    Each rank trains on its own shard of the batches (the sampler's ``num_shards``); DDP
    averages the gradients over the ranks at every accumulation boundary, so the ranks'
    weights stay identical. Ray Train sets up the process group (gloo on CPU, NCCL on GPU).
    Optimizer, schedule, precision, accumulation and clipping are the wrapped backend's.
    """

    def __init__(self, inner: TorchBackend, several_tasks: bool = True) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.inner = inner
        self.model, self.device, self.precision = inner.model, inner.device, inner.precision
        self.resolved = inner.resolved
        # At every step all ranks train one task (see the sampler); with several tasks the
        # others' heads get no gradient, and DDP must look for such parameters (globally
        # unused ones keep no gradient, so AdamW skips them as in one process). One task
        # uses every parameter (the encoder has no pooler), and the search is skipped.
        # Buffers (BERT's position ids) are constant: sync them once at start, not per step.
        once = ({"forward_sync_buffers": False} if "forward_sync_buffers"
                in inspect.signature(DistributedDataParallel).parameters
                else {"broadcast_buffers": False})  # the name before torch 2.13
        self.ddp = DistributedDataParallel(
            inner.model, device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=several_tasks, **once)

    def forward(self, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # Reduce gradients only in the backward of the micro-batch that ends an accumulation
        # (what DDP's no_sync() does; DDP reads the flag in forward).
        self.ddp.require_backward_grad_sync = (
            (self.inner.micro_steps + 1) % self.inner.grad_accum == 0)
        with autocast(self.device, self.precision):
            return self.ddp(task, **inputs)

    def backward(self, loss: torch.Tensor) -> None:
        self.inner.backward(loss)

    def step(self) -> bool:
        return self.inner.step()

    def learning_rate(self) -> float:
        return self.inner.learning_rate()

    def loss_scale(self) -> float | None:
        return self.inner.loss_scale()

    def state_dict(self) -> dict[str, Any]:
        """The same as a single-process backend's (the ranks hold identical states)."""
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def save_state(self, folder: Path, rank: int) -> None:
        self.inner.save_state(folder, rank)

    def load_state(self, folder: Path, rank: int) -> None:
        self.inner.load_state(folder, rank)


def from_rank0(value: float, device: torch.device) -> float:
    """``value`` as rank 0 has it, on every rank (a collective: all ranks must call it).

    Dev scores decide keep-best and early stopping; taking rank 0's keeps every rank's
    decisions the same even if its evaluation differed in the last bit.
    """
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (a collective)."""
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
