"""The multi-task training loop: one core for teachers, the student and the baseline.

Each micro-batch comes from one task (MT-DNN); the loss is the task's hard loss, or, for
a task with teacher targets, the weighted mean of hard and soft losses, plus the model's
own term when its forward returns :class:`~mtkd.losses.WithAuxLoss` (representation
distillation; a batch of unlabelled transfer text has no outputs and trains on that term
alone). With a :class:`~mtkd.training.stages.StagePlan` (staged training) the loss
weights and the trainable layers follow the stage of every step. The loop owns
progress (steps, epochs, position in the epoch, RNG), dev evaluation, keep-best and early
stopping; a :class:`~mtkd.training.backend.Backend` owns the optimizer step. Everything
needed to resume (the JSON-able :class:`LoopState` plus :func:`capture_rng`) is handed to
the ``on_checkpoint`` hook, so a resumed run continues at the same batch of the same epoch.
Checkpoints come every ``checkpoint_every`` optimizer steps, every ``checkpoint_minutes`` of
wall time (at the next step boundary, so that a lost worker costs minutes, not an epoch),
and at the end; both triggers call the same hook.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from mtkd.config import KDConfig, TrainingConfig
from mtkd.data.sampler import MultiTaskBatchSampler
from mtkd.losses import TeacherTargets, WithAuxLoss, task_loss
from mtkd.model.infer import model_inputs
from mtkd.progress import Progress
from mtkd.tasks.spec import TaskSpec
from mtkd.training.backend import Backend
from mtkd.training.data import CollateFn, MultiTaskRows, TeacherArrays, epoch_loader
from mtkd.training.evaluate import evaluate
from mtkd.training.stages import Freezer, Phase, StagePlan

log = logging.getLogger("mtkd")


@dataclass
class LoopState:
    """Progress of a run; plain data, saved in every checkpoint."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    position: int = 0
    """Micro-batches of ``epoch`` already consumed."""
    examples: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    best_score: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, Any] | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    """One record per evaluation: step, epoch, loss, metrics, average."""
    step_log: list[list[float]] = field(default_factory=list)
    """[step, epoch, position, loss] after every optimizer step (when the loop records
    steps): the lineage a resumed run continues, so gaps or repeats are visible."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoopState:
        return cls(**data)


@dataclass
class LoopHooks:
    """Callbacks: Ray Tune/Train reporting, checkpointing and tracking plug in here.

    Several sets compose with :func:`chain_hooks` (the first one's schedule counts)."""

    on_eval: Callable[[LoopState, dict[str, Any]], None] | None = None
    """After every evaluation, with its record."""
    on_best: Callable[[LoopState, dict[str, Any]], None] | None = None
    """When an evaluation beats the best score so far."""
    on_checkpoint: Callable[[LoopState], None] | None = None
    """Every ``checkpoint_every`` optimizer steps, when ``checkpoint_minutes`` have passed
    since the last checkpoint, and at the end (a hook skips a step it already saved)."""
    on_step: Callable[[LoopState, dict[str, float]], None] | None = None
    """After every optimizer step, with ``train/loss`` (the step's last micro-batch, as in
    ``LoopState.step_log``) and ``train/lr``; at the steps where a progress line is logged
    also ``train/examples_per_s`` and ``train/tokens_per_s`` (over the steps since the
    last line, this process's)."""
    checkpoint_every: int = 0
    """Optimizer steps between checkpoints (0: no step trigger)."""
    checkpoint_minutes: float = 0.0
    """Wall-clock minutes between checkpoints (0: no time trigger), checked at every step
    boundary; any checkpoint (step, time, or an evaluation with ``eval_checkpoints``)
    restarts the count."""
    eval_checkpoints: bool = False
    """``on_eval`` saves a checkpoint (teacher members): an evaluation restarts the
    ``checkpoint_minutes`` count."""
    clock: Callable[[], float] = time.monotonic
    """Seconds, for ``checkpoint_minutes`` (tests inject a fake one)."""


def chain_hooks(first: LoopHooks, *more: LoopHooks | None) -> LoopHooks:
    """One :class:`LoopHooks` calling every set's callbacks in order; the schedule
    (``checkpoint_every``, ``checkpoint_minutes``, ``eval_checkpoints``, ``clock``) is
    ``first``'s. Composition, so that checkpointing and tracking stay separate pieces."""
    sets = [first, *(h for h in more if h is not None)]

    def chained(name: str) -> Callable[..., None] | None:
        found = [getattr(h, name) for h in sets if getattr(h, name) is not None]
        if not found:
            return None
        if len(found) == 1:
            return found[0]

        def call(*args: Any) -> None:
            for callback in found:
                callback(*args)
        return call

    return LoopHooks(on_eval=chained("on_eval"), on_best=chained("on_best"),
                     on_checkpoint=chained("on_checkpoint"), on_step=chained("on_step"),
                     checkpoint_every=first.checkpoint_every,
                     checkpoint_minutes=first.checkpoint_minutes,
                     eval_checkpoints=first.eval_checkpoints, clock=first.clock)


@dataclass
class LoopData:
    """What one run trains and evaluates on."""

    specs: Mapping[str, TaskSpec]
    train: Mapping[str, datasets.Dataset]
    """Tokenized train split per task."""
    dev: Mapping[str, datasets.Dataset]
    """Tokenized dev split per task (evaluated; may be empty for no evaluation)."""
    teachers: Mapping[str, TeacherArrays] = field(default_factory=dict)
    """Soft targets aligned with ``train`` rows, for tasks that have a teacher."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/lists (torch.load weights_only-safe)."""
    np_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": np_state[2],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         int(state["numpy_pos"]), 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def total_optimizer_steps(config: TrainingConfig, batches_per_epoch: int,
                          stages: StagePlan | None = None) -> int:
    """Optimizer steps of the whole run: epochs × batches / accumulation, capped by max_steps;
    with staged training the stages' sum (:attr:`StagePlan.total_steps`, capped the same)."""
    if stages is not None:
        return stages.total_steps
    steps = math.ceil(config.epochs * batches_per_epoch / config.grad_accum)
    return max(1, min(steps, config.max_steps) if config.max_steps else steps)


def _teacher_targets(arrays: TeacherArrays | None, rows: list[int],
                     device: torch.device) -> TeacherTargets | None:
    if arrays is None:
        return None
    gathered = {k: v.to(device, non_blocking=True) for k, v in arrays.gather(rows).items()}
    return TeacherTargets(**gathered, temperature=arrays.temperature)


class TrainingLoop:
    """Runs ``config`` on ``data`` through ``backend``; resumable via ``state``/``rng``."""

    def __init__(self, backend: Backend, data: LoopData, config: TrainingConfig, *,
                 sampler: MultiTaskBatchSampler, kd: KDConfig | None = None,
                 hooks: LoopHooks | None = None, name: str = "train", log_every: int = 50,
                 eval_batch_size: int = 64, score: Callable[[dict[str, Any]], float] | None = None,
                 keep_best_in_memory: bool = True, pad_id: int = 0,
                 record_steps: bool = False,
                 decide: Callable[[bool], bool] | None = None,
                 stages: StagePlan | None = None) -> None:
        """``stages``: staged training (its length replaces ``config``'s epochs; the
        backend's optimizer must group parameters by freezing unit,
        ``build_adamw(..., unit=parameter_unit)``)."""
        self.backend, self.data, self.config = backend, data, config
        self.sampler, self.kd = sampler, kd or KDConfig()
        self.hooks = hooks or LoopHooks()
        self.name, self.log_every, self.eval_batch_size = name, log_every, eval_batch_size
        self.score = score or (lambda result: float(result["average"]))
        self.keep_best_in_memory = keep_best_in_memory
        self.record_steps = record_steps
        # Data-parallel: rank 0's answer to "is a time checkpoint due?" on every rank (the
        # ranks' clocks differ, and a checkpoint is a collective).
        self.decide = decide
        self.rows = MultiTaskRows(data.train)
        self.collate = CollateFn(data.specs, pad_id)
        self.stages = stages
        self.total_steps = total_optimizer_steps(config, len(sampler), stages)
        self.freezer = (Freezer(backend.model, backend.optimizer) if stages is not None
                        else None)
        self.phase: Phase | None = None
        """The stage of the step being trained (staged training)."""
        self._best_weights: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        return evaluate(self.backend.model, self.data.specs, self.data.dev,
                        batch_size=self.eval_batch_size, device=self.backend.device,
                        precision=self.backend.precision, progress="dev")

    def _weights_on_cpu(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True)
                for k, v in self.backend.model.state_dict().items()}

    @property
    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """CPU copy of the model weights at the best evaluation (keep_best_in_memory)."""
        return self._best_weights

    def restore_best_weights(self, state: LoopState,
                             saved: dict[str, torch.Tensor] | None) -> None:
        """After resuming from a checkpoint: the best weights are ``saved`` (an earlier
        evaluation's), or the model's current ones when the checkpoint was taken at the
        best evaluation itself."""
        if not self.keep_best_in_memory or state.best_step is None:
            return
        if saved is not None:
            self._best_weights = saved
        elif state.best_step == state.step:
            self._best_weights = self._weights_on_cpu()

    def _after_eval(self, state: LoopState, loss: float) -> bool:
        """Evaluate, record, keep the best; returns True when early stopping triggers."""
        result = self.evaluate()
        score = self.score(result)
        record = {"step": state.step, "epoch": state.epoch, "loss": loss, "score": score,
                  "metrics": result["tasks"], "average": result["average"]}
        state.history.append(record)
        improved = state.best_score is None or score > state.best_score
        if improved:
            state.best_score, state.best_step = score, state.step
            state.best_metrics = result["tasks"]
            state.evals_since_best = 0
            if self.keep_best_in_memory:
                self._best_weights = self._weights_on_cpu()
            if self.hooks.on_best:
                self.hooks.on_best(state, record)
        else:
            state.evals_since_best += 1
        log.info("[%s] eval step %d: score %.2f%s  %s", self.name, state.step, score,
                 " (best)" if improved else f" (best {state.best_score:.2f} at step "
                 f"{state.best_step})", _format_metrics(result["tasks"]))
        if self.hooks.on_eval:
            self.hooks.on_eval(state, record)
        patience = self.config.early_stop_patience
        return bool(patience and state.evals_since_best >= patience)

    # ------------------------------------------------------------------ stages
    def _enter_phase(self, step: int) -> None:
        """Staged training: apply the phase of the step after ``step`` when its stage or
        trainable layers differ from the current one's, and log it."""
        if self.stages is None or self.freezer is None:
            return
        phase, before = self.stages.at(step), self.phase
        if before is not None and (before.index, before.trainable) == (phase.index,
                                                                        phase.trainable):
            return
        self.phase = phase
        self.freezer.apply(phase)
        set_weight = getattr(self.backend.model, "set_aux_weight", None)
        if set_weight is not None:  # the model's own (representation) term
            set_weight(phase.stage.loss.hidden)
        if before is None or before.index != phase.index:
            log.info("[%s] %s", self.name, phase.describe())
        else:
            log.info("[%s] %s: from step %d, %s", self.name, phase.label, step + 1,
                     phase.trainable_text())

    # ------------------------------------------------------------------ training
    def run(self, state: LoopState | None = None, rng: Mapping[str, Any] | None = None,
            seed: int = 0) -> LoopState:
        """Train to ``total_steps`` (or early stop) from ``state``; returns the final state.

        A fresh run seeds every RNG with ``seed``; a resumed one restores ``rng``.
        """
        state = state or LoopState()
        if rng is not None:
            restore_rng(rng)
        elif state.step == 0 and state.position == 0:
            seed_everything(seed)
        backend, device = self.backend, self.backend.device
        backend.model.train()
        eval_every = self.config.eval_every
        running, window_start, window = 0.0, time.time(), {"ex": 0, "tok": 0, "n": 0}
        last_eval_step = state.history[-1]["step"] if state.history else -1
        last_loss = float("nan")
        # Worker log lines already carry the run's name: "[mtkd m000] [train] 15/114 steps".
        progress = Progress("train", self.total_steps, "step", start_done=state.step)

        hooks = self.hooks
        last_checkpoint = hooks.clock()
        self.phase = None
        if state.step < self.total_steps:
            self._enter_phase(state.step)

        def timed_eval(loss: float) -> bool:
            # Evaluation time is not training time: shift the throughput window past it.
            nonlocal window_start, last_checkpoint
            started = time.time()
            stop = self._after_eval(state, loss)
            window_start += time.time() - started
            progress.pause(time.time() - started)
            if hooks.eval_checkpoints:
                last_checkpoint = hooks.clock()
            return stop

        def checkpoint_due() -> bool:
            every = hooks.checkpoint_every
            if every and state.step % every == 0:
                return True
            if hooks.checkpoint_minutes <= 0:
                return False
            due = hooks.clock() - last_checkpoint >= hooks.checkpoint_minutes * 60.0
            return self.decide(due) if self.decide else due

        while state.step < self.total_steps and not state.stopped_early:
            loader = epoch_loader(self.rows, self.sampler, self.collate, state.epoch,
                                  state.position, pin_memory=device.type == "cuda")
            for batch in loader:
                task, spec = batch["task"], self.data.specs[batch["task"]]
                outputs = backend.forward(task, model_inputs(batch, device))
                aux = None
                if isinstance(outputs, WithAuxLoss):  # a training wrapper's own loss term
                    outputs, aux = outputs
                if outputs is None:  # unlabelled transfer text: the wrapper's term alone
                    loss = aux
                else:
                    labels = batch["labels"].to(device, non_blocking=True)
                    teacher = _teacher_targets(self.data.teachers.get(task),
                                               batch["indices"], device)
                    loss = task_loss(spec, outputs, labels, teacher, self.kd,
                                     self.phase.stage.loss if self.phase else None).total
                    if aux is not None:
                        loss = loss + aux
                # Data-parallel: a short batch's weight < 1 (see the sampler), so the
                # shards' averaged gradient is the mean over the global batch's examples.
                weight = batch.get("weight", 1.0)
                backend.backward(loss * weight if weight != 1.0 else loss)
                state.position += 1
                last_loss = float(loss.detach())
                running += last_loss
                window["n"] += 1
                window["ex"] += len(batch["uids"])
                window["tok"] += int(batch["attention_mask"].sum())
                if not backend.step():
                    continue
                state.step += 1
                if self.record_steps:
                    state.step_log.append([state.step, state.epoch, state.position,
                                           last_loss])
                scalars = ({"train/loss": last_loss, "train/lr": backend.learning_rate()}
                           if hooks.on_step else {})
                if self.phase is not None and hooks.on_step:
                    scalars["train/stage"] = float(self.phase.index + 1)
                # Every log_every steps (unless a line went out just now), at least every
                # 30 s, and at the end.
                if ((state.step % self.log_every == 0 and not progress.recent(10.0))
                        or state.step == self.total_steps or progress.due()):
                    progress.done = state.step
                    rates = self._account(state, window, window_start)
                    scalars.update(rates)
                    progress.emit(self._progress_fields(state.epoch, running / window["n"],
                                                        rates))
                    running, window_start = 0.0, time.time()
                    window = {"ex": 0, "tok": 0, "n": 0}
                if hooks.on_step:
                    hooks.on_step(state, scalars)
                if eval_every and state.step % eval_every == 0 and self.data.dev:
                    last_eval_step = state.step
                    state.stopped_early = timed_eval(last_loss)
                if hooks.on_checkpoint and checkpoint_due():
                    hooks.on_checkpoint(state)
                    last_checkpoint = hooks.clock()
                if state.step >= self.total_steps or state.stopped_early:
                    break
                self._enter_phase(state.step)
            else:  # the epoch ran out: next epoch from its first batch
                state.epoch, state.position = state.epoch + 1, 0
                if not eval_every and self.data.dev and state.step != last_eval_step:
                    last_eval_step = state.step
                    state.stopped_early = timed_eval(last_loss)
        self._account(state, window, window_start)
        if self.data.dev and state.step != last_eval_step:
            self._after_eval(state, last_loss)
        if hooks.on_checkpoint:
            hooks.on_checkpoint(state)
        if self.keep_best_in_memory and self._best_weights is not None:
            backend.model.load_state_dict(self._best_weights)
        return state

    def _account(self, state: LoopState, window: dict[str, int], started: float
                 ) -> dict[str, float]:
        """Adds the window to ``state``; its throughput."""
        seconds = time.time() - started
        state.examples += window["ex"]
        state.tokens += window["tok"]
        state.train_seconds += seconds
        seconds = max(seconds, 1e-9)
        return {"train/examples_per_s": window["ex"] / seconds,
                "train/tokens_per_s": window["tok"] / seconds}

    def _progress_fields(self, epoch: int, loss: float, rates: dict[str, float]) -> str:
        """The loop's fields of a progress line (staged training: the stage first)."""
        stage = f"{self.phase.label} " if self.phase is not None else ""
        return (f"{stage}epoch {epoch} loss {loss:.4f} lr {self.backend.learning_rate():.2e} | "
                f"{rates['train/examples_per_s']:.1f} ex/s "
                f"{rates['train/tokens_per_s']:.0f} tok/s")


def _format_metrics(per_task: Mapping[str, Mapping[str, float]]) -> str:
    return " ".join(f"{task}[" + ",".join(f"{m}={v:.1f}" for m, v in metrics.items()) + "]"
                    for task, metrics in per_task.items())
