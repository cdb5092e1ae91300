"""Staged training with gradual unfreezing (issue 18, item 3): which stage, loss weights and
trainable parameters apply at every optimizer step.

XtremeDistilTransformers (Mukherjee, Awadallah, Gao 2021, section 3, after XtremeDistil,
Mukherjee & Awadallah 2020, section 4) trains the student in stages (internal
representations, then soft targets, then hard labels) and within a stage unfreezes the
encoder gradually from the top layer down (ULMFiT, Howard & Ruder 2018, section 3.3). Here:

* :class:`StagePlan` turns ``student.stages`` into optimizer-step ranges: a stage of e
  epochs lasts ceil(e x batches per epoch / grad_accum) steps (as a whole run does), one of
  s steps s; ``unfreeze.every_epochs`` converts the same way (at least 1 step). The run's
  length is the sum, capped by ``training.max_steps``; one learning-rate schedule (warm-up,
  linear decay) spans all stages. :meth:`StagePlan.at` is a pure function of the step, so
  the stage and the trainable layers need no state of their own: a checkpoint taken in a
  stage, or exactly at a boundary, resumes exactly.
* Freezing **units** (:func:`parameter_unit`): ``layer.<i>`` (encoder layer i, 1 = the
  lowest), ``embeddings`` (the embeddings and any other encoder parameter outside the
  layers, e.g. DeBERTa's relative embeddings: they unfreeze last), ``heads`` (every task
  head: frozen in a stage whose soft and hard weights are 0) and ``projection`` (the
  hidden-state projection of :mod:`mtkd.student.hidden`: frozen where hidden is 0).
  ``n`` trainable units counted from the top are layers L .. L-n+1; n = L+1 adds the
  embeddings.
* :class:`Freezer` applies a phase. Frozen parameters keep ``requires_grad`` (DeepSpeed
  fixes its gradient bookkeeping at ``deepspeed.initialize``; toggling it later leaves
  parameters untrained or breaks ZeRO, deepspeedai/DeepSpeed issues 5639, 4055, 1767):
  a gradient hook on each parameter zeroes a frozen one's gradient before it is
  accumulated (so gradient clipping sees only trainable ones, at every ZeRO stage), and
  the optimizer skips the frozen units' parameter groups
  (:meth:`~mtkd.training.optim.TaskAwareAdamW.set_frozen`: no AdamW update, no weight
  decay, moments and step counts kept until the unit thaws). Frozen parameters' gradients
  are still computed (no speed-up).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mtkd.config.schema import StageConfig, StageLoss

_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.")
PROJECTION_PREFIX = "hidden_projection."  # mtkd.student.hidden.PROJECTION


def parameter_unit(name: str) -> str:
    """The freezing unit of a model parameter by its name (module docstring):
    ``encoder.encoder.layer.2.output.dense.weight`` -> ``"layer.3"``; other ``encoder.*``
    -> ``"embeddings"``; ``heads.*`` -> ``"heads"``; ``hidden_projection.*`` ->
    ``"projection"``. Raises ValueError for a name outside these."""
    if name.startswith("heads."):
        return "heads"
    if name.startswith(PROJECTION_PREFIX):
        return "projection"
    if name.startswith("encoder."):
        found = _LAYER.search(name)
        return f"layer.{int(found.group(1)) + 1}" if found else "embeddings"
    raise ValueError(f"parameter {name!r} belongs to no freezing unit (encoder.*, heads.*, "
                     f"{PROJECTION_PREFIX}*)")


def frozen_units(trainable: int, layers: int, loss: StageLoss) -> frozenset[str]:
    """Units frozen with ``trainable`` units from the top of a ``layers``-layer encoder
    (n > layers: the embeddings too) under the stage's ``loss`` weights."""
    frozen = {f"layer.{i}" for i in range(1, layers - min(trainable, layers) + 1)}
    if trainable <= layers:
        frozen.add("embeddings")
    if loss.soft <= 0 and loss.hard <= 0:
        frozen.add("heads")
    if loss.hidden <= 0:
        frozen.add("projection")
    return frozenset(frozen)


@dataclass(frozen=True)
class Phase:
    """What applies at one optimizer step: stage ``index`` (0-based) of ``count``, which
    runs over steps [start, end), with ``trainable`` units from the top of ``layers``."""

    index: int
    count: int
    stage: StageConfig
    start: int
    end: int
    trainable: int
    layers: int

    @property
    def frozen(self) -> frozenset[str]:
        return frozen_units(self.trainable, self.layers, self.stage.loss)

    @property
    def label(self) -> str:
        """``stage 2/3 soft`` (progress lines)."""
        return f"stage {self.index + 1}/{self.count} {self.stage.name}"

    def trainable_text(self) -> str:
        """``trainable layers 6-4``; ``trainable layers 6-1 and embeddings`` (all)."""
        low = max(self.layers - self.trainable + 1, 1)
        text = f"trainable layers {self.layers}-{low}" if low < self.layers else (
            f"trainable layer {self.layers}")
        return text + (" and embeddings" if self.trainable > self.layers else "")

    def describe(self) -> str:
        """``stage 2/3 soft: epochs 1 (steps 40-79), loss hidden 0 soft 1 hard 0,
        trainable layers 6-4`` (the line logged at a stage's start)."""
        length = (f"epochs {self.stage.epochs:g}" if self.stage.epochs is not None
                  else f"steps {self.stage.steps}")
        loss = self.stage.loss
        return (f"{self.label}: {length} (steps {self.start + 1}-{self.end}), loss hidden "
                f"{loss.hidden:g} soft {loss.soft:g} hard {loss.hard:g}, "
                f"{self.trainable_text()}")


class StagePlan:
    """``student.stages`` in optimizer steps (module docstring).

    ``batches_per_epoch``: this rank's micro-batches per epoch (``len(sampler)``);
    ``layers``: the student encoder's layer count; ``max_steps``: training.max_steps.
    """

    def __init__(self, stages: Sequence[StageConfig], batches_per_epoch: int, grad_accum: int,
                 layers: int, max_steps: int | None = None) -> None:
        if not stages:
            raise ValueError("a StagePlan needs at least one stage")
        self.stages, self.layers = list(stages), int(layers)

        def steps(epochs: float) -> int:
            return max(1, math.ceil(epochs * batches_per_epoch / grad_accum))

        self.bounds: list[tuple[int, int]] = []
        self.every: list[int | None] = []
        start = 0
        for stage in self.stages:
            length = stage.steps if stage.steps is not None else steps(float(stage.epochs))
            self.bounds.append((start, start + length))
            start += length
            unfreeze = stage.unfreeze
            self.every.append(None if unfreeze is None else (
                unfreeze.every_steps if unfreeze.every_steps is not None else
                steps(unfreeze.every_epochs) if unfreeze.every_epochs is not None else None))
        self.total_steps = min(start, max_steps) if max_steps else start

    def at(self, step: int) -> Phase:
        """The phase of the optimizer step that follows ``step`` completed steps (at a
        boundary, the next stage's; past the end, the last stage's)."""
        index = next((i for i, (_, end) in enumerate(self.bounds) if step < end),
                     len(self.bounds) - 1)
        start, end = self.bounds[index]
        stage = self.stages[index]
        if stage.unfreeze is None:
            trainable = self.layers + 1
        else:
            every = self.every[index]
            grown = (step - start) // every if every else 0
            trainable = min(stage.unfreeze.start_layers + grown, self.layers + 1)
        return Phase(index, len(self.stages), stage, start, end, trainable, self.layers)


class Freezer:
    """Applies a :class:`Phase`'s frozen units to ``model`` (gradient hooks) and its
    ``optimizer`` (a :class:`~mtkd.training.optim.TaskAwareAdamW` whose groups carry
    ``"unit"``: ``build_adamw(..., unit=parameter_unit)``). ``model``'s parameters must be
    the ones the optimizer (or the DeepSpeed engine) trains."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not hasattr(optimizer, "set_frozen"):
            raise TypeError(f"{type(optimizer).__name__} cannot leave frozen units alone "
                            "(build it with mtkd.training.optim.build_adamw)")
        self.optimizer = optimizer
        self.frozen: frozenset[str] = frozenset()
        self.units = {name: parameter_unit(name) for name, _ in model.named_parameters()}
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.register_hook(self._gate(self.units[name]))

    def _gate(self, unit: str):
        def hook(grad: torch.Tensor) -> torch.Tensor | None:
            return torch.zeros_like(grad) if unit in self.frozen else None
        return hook

    def apply(self, phase: Phase) -> None:
        self.frozen = phase.frozen
        self.optimizer.set_frozen(self.frozen)

    def trainable(self) -> list[str]:
        """Names of the parameters trainable now."""
        return [name for name, unit in self.units.items() if unit not in self.frozen]
