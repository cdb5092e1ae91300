"""Which ensemble members to train: names, variants and tasks, from the config alone.

Member i's variant depends only on i (and the variation settings), never on the
ensemble size, so raising ``teachers.size`` from 3 to 50 keeps members 0-2 identical and
only adds new ones.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtkd.config import ExperimentConfig, TrainingConfig
from mtkd.experiment import lineage

GRID_FIELDS = ("dropout", "learning_rate", "encoder", "epochs")
SEED_STRIDE = 1000
"""When a grid is shorter than the ensemble it repeats, with seeds shifted by this."""


@dataclass(frozen=True)
class Member:
    """One ensemble member: what varies, and which tasks it learns."""

    name: str
    index: int
    tasks: tuple[str, ...]
    seed: int
    dropout: float
    learning_rate: float
    encoder: str
    epochs: float
    init_model: str | None = None
    """Storage path (under the experiment) of an MT-DNN to start from instead of the
    pretrained encoder: the shared multi-task model of ``per_task`` +
    ``init_from_multitask``."""

    def variant(self) -> dict[str, Any]:
        return {"seed": self.seed, "dropout": self.dropout,
                "learning_rate": self.learning_rate, "encoder": self.encoder,
                "epochs": self.epochs}

    def training(self, base: TrainingConfig) -> TrainingConfig:
        """The member's training hyper-parameters: the shared ones with its variant."""
        return dataclasses.replace(base, dropout=self.dropout,
                                   learning_rate=self.learning_rate, epochs=self.epochs)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tasks"] = list(self.tasks)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        return cls(**{**data, "tasks": tuple(data["tasks"])})


def _variants(config: ExperimentConfig) -> list[dict[str, Any]]:
    """One variant per member index 0..size-1 (seed, dropout, lr, encoder, epochs)."""
    teachers, vary = config.teachers, config.teachers.variation
    base = {"dropout": teachers.training.dropout,
            "learning_rate": teachers.training.learning_rate,
            "encoder": config.encoder.path, "epochs": teachers.training.epochs}
    choices = {name: list(getattr(vary, name)) or [base[name]] for name in GRID_FIELDS}
    variants = []
    if vary.strategy == "list":
        for i, listed in enumerate(vary.members[: teachers.size]):
            given = {k: v for k, v in dataclasses.asdict(listed).items() if v is not None}
            variants.append({**base, "seed": config.seed + i, **given})
        return variants
    if vary.strategy == "grid":
        seeds = list(vary.seed) or [None]
        grid = list(itertools.product(seeds, *(choices[n] for n in GRID_FIELDS)))
        for i in range(teachers.size):
            seed, *values = grid[i % len(grid)]
            repeat = i // len(grid)
            seed = config.seed + i if seed is None else seed + repeat * SEED_STRIDE
            variants.append({"seed": seed, **dict(zip(GRID_FIELDS, values, strict=True))})
        return variants
    for i in range(teachers.size):  # random: member i draws from its own generator
        rng = np.random.default_rng([vary.sample_seed, i])
        drawn = {n: choices[n][int(rng.integers(len(choices[n])))] for n in GRID_FIELDS}
        seed = int(vary.seed[int(rng.integers(len(vary.seed)))]) if vary.seed else None
        variants.append({"seed": config.seed + i if seed is None else seed, **drawn})
    return variants


INIT_MEMBER = "init"


def init_member(config: ExperimentConfig) -> Member | None:
    """The shared multi-task MT-DNN that per_task members start from, if configured."""
    teachers = config.teachers
    if teachers.shape != "per_task" or not teachers.init_from_multitask:
        return None
    tasks = tuple(t.name for t in config.tasks if t.teacher)
    return Member(INIT_MEMBER, 0, tasks, seed=config.seed, dropout=teachers.training.dropout,
                  learning_rate=teachers.training.learning_rate, encoder=config.encoder.path,
                  epochs=teachers.training.epochs)


def plan_members(config: ExperimentConfig) -> list[Member]:
    """Every member of the ensemble, in a stable order.

    multitask: ``size`` members, each over all tasks that have a teacher;
    per_task: ``size`` members per such task, named ``<task>.m<i>``, starting from the
    shared multi-task model when ``init_from_multitask`` is set.
    """
    tasks = tuple(t.name for t in config.tasks if t.teacher)
    variants = _variants(config)
    if config.teachers.shape == "multitask":
        return [Member(f"m{i:03d}", i, tasks, **v) for i, v in enumerate(variants)]
    init = f"teachers/{INIT_MEMBER}/model" if init_member(config) else None
    return [Member(f"{task}.m{i:03d}", i, (task,), **v, init_model=init)
            for task in tasks for i, v in enumerate(variants)]


def member_config(member: Member, config: ExperimentConfig) -> ExperimentConfig:
    """The effective config a member is built from: its own training values and encoder."""
    return dataclasses.replace(
        config, encoder=dataclasses.replace(config.encoder, path=member.encoder),
        teachers=dataclasses.replace(config.teachers,
                                     training=member.training(config.teachers.training)))


def member_lineage(member: Member, config: ExperimentConfig,
                   data_lineages: dict[str, str]) -> str:
    """The member's lineage (see :mod:`mtkd.experiment`): the declared config values as
    this member sees them, the lineages of its tasks' tokenized data (and of the shared
    model it starts from), and its own variant."""
    inputs = {"data": {t: data_lineages.get(t) for t in member.tasks},
              "init": data_lineages.get(INIT_MEMBER) if member.init_model else None}
    return lineage("member", member_config(member, config), inputs=inputs,
                   instance=member.to_json())
