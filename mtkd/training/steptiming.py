"""Per-step timing of a training run, for benchmarks: when every optimizer step ended, its
examples and tokens, and the seconds of its forward (with the loss), backward and optimizer
step; how long checkpoint hooks, backend saves and Ray reports took.

Operational only: :class:`TimedBackend` wraps a :class:`~mtkd.training.backend.Backend`
(composition, as ``DataParallelBackend`` wraps ``TorchBackend``) and passes every call on
unchanged, so a timed run computes exactly what an untimed one does. The student records
it with ``student.step_timing`` (``student/<run>/step_timing/rank<r>.json``); benchmarks
wrap a backend of their own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass
class StepTimes:
    """One run's record (plain data; ``to_json`` for storage). Per optimizer step i:"""

    t: list[float] = field(default_factory=list)
    """``time.perf_counter()`` seconds when step i ended."""
    cpu: list[float] = field(default_factory=list)
    """``time.process_time()`` seconds (this process, all threads) when step i ended."""
    ex: list[int] = field(default_factory=list)
    """Examples of step i's micro-batches."""
    tok: list[int] = field(default_factory=list)
    """Real tokens (attention mask ones) of step i's micro-batches."""
    fwd: list[float] = field(default_factory=list)
    """Seconds in ``forward`` (the loss is computed by the caller and not included)."""
    bwd: list[float] = field(default_factory=list)
    """Seconds in ``backward``."""
    opt: list[float] = field(default_factory=list)
    """Seconds in the ``step`` call that stepped (clipping, optimizer, schedule)."""
    checkpoints: list[dict[str, float]] = field(default_factory=list)
    """Per ``on_checkpoint`` call: ``step``, ``seconds``, ``at`` (perf_counter at its end)."""
    saves: list[dict[str, float]] = field(default_factory=list)
    """Per backend save: ``step``, ``seconds``, ``bytes`` of the folder written."""
    reports: list[dict[str, Any]] = field(default_factory=list)
    """Per ``ray.train.report``: ``seconds``, ``checkpoint`` (whether one was reported)."""
    info: dict[str, Any] = field(default_factory=dict)
    """The backend class, optimizer, parameter dtype and count, torch threads."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def timed(self, into: str, fn: Callable[[], T], **fields: Any) -> T:
        """``fn()``, its wall seconds appended to the list ``into`` with ``fields``."""
        start = time.perf_counter()
        result = fn()
        end = time.perf_counter()
        getattr(self, into).append({**fields, "seconds": end - start, "at": end})
        return result

    def timed_save(self, save: Callable[[], None], folder: str | Path, step: int) -> None:
        """A backend save into ``folder``: seconds and the bytes it wrote."""
        self.timed("saves", save, step=step)
        self.saves[-1]["bytes"] = sum(p.stat().st_size for p in Path(folder).rglob("*")
                                      if p.is_file())

    def timed_hook(self, hook: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
        """An ``on_checkpoint`` hook that also records its seconds and step."""
        if hook is None:
            return None

        def timed_checkpoint(state: Any) -> None:
            self.timed("checkpoints", lambda: hook(state), step=state.step)

        return timed_checkpoint


class TimedBackend:
    """``inner`` with its ``forward``, ``backward`` and ``step`` timed into ``times``; any
    other attribute is ``inner``'s."""

    def __init__(self, inner: Any, times: StepTimes) -> None:
        self.inner, self.times = inner, times
        self._pending = {"ex": 0, "tok": 0, "fwd": 0.0, "bwd": 0.0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _describe(self) -> dict[str, Any]:
        params = list(self.inner.model.parameters())
        engine = getattr(self.inner, "engine", None)
        optimizer = engine.optimizer if engine is not None else self.inner.optimizer
        return {"backend": type(self.inner).__name__, "optimizer": type(optimizer).__name__,
                "param_dtype": str(params[0].dtype), "params": sum(p.numel() for p in params),
                "torch_threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}

    def forward(self, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``inner.forward``; inputs [B, T] (or [B, K, T]) tensors as the loop gives them."""
        if not self.times.info:
            self.times.info = self._describe()
        start = time.perf_counter()
        out = self.inner.forward(task, inputs)
        self._pending["fwd"] += time.perf_counter() - start
        self._pending["ex"] += int(inputs["input_ids"].shape[0])
        self._pending["tok"] += int(inputs["attention_mask"].sum())
        return out

    def backward(self, loss: torch.Tensor) -> None:
        start = time.perf_counter()
        self.inner.backward(loss)
        self._pending["bwd"] += time.perf_counter() - start

    def step(self) -> bool:
        start = time.perf_counter()
        stepped = self.inner.step()
        end = time.perf_counter()
        if stepped:
            times = self.times
            times.t.append(end)
            times.cpu.append(time.process_time())
            times.opt.append(end - start)
            for key in ("ex", "tok", "fwd", "bwd"):
                getattr(times, key).append(self._pending[key])
            self._pending = {"ex": 0, "tok": 0, "fwd": 0.0, "bwd": 0.0}
        return stepped
