"""One MT-DNN training run on prepared data: the recipe teachers, student and baseline share.

Reads the tokenized splits the prepare stage wrote, builds the model (encoder, first k
layers, heads), the sampler and a backend, and runs :class:`TrainingLoop`. Teacher
trials use :func:`build_training_loop` and :func:`run_training` (with ``data_parallel``
in each rank of a multi-worker member); the student's DeepSpeed worker uses the same
pieces with its own backend.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch

from mtkd.config import ExperimentConfig, KDConfig, TrainingConfig
from mtkd.data.prepared import read_prepared, read_task_spec
from mtkd.data.sampler import MultiTaskBatchSampler
from mtkd.data.tokenize import load_tokenizer
from mtkd.model.mtdnn import MTDNN, build_mtdnn
from mtkd.model.shape import EncoderShape, student_shape
from mtkd.pretrained import resolve_encoder_dir
from mtkd.storage import Storage
from mtkd.tasks.spec import TaskSpec
from mtkd.training.backend import DataParallelBackend, TorchBackend, from_rank0
from mtkd.training.checkpoint import Resume
from mtkd.training.data import TeacherArrays
from mtkd.training.loop import (
    LoopData,
    LoopHooks,
    LoopState,
    TrainingLoop,
    total_optimizer_steps,
)
from mtkd.training.steptiming import StepTimes, TimedBackend


@dataclass
class PreparedTasks:
    """Tokenized train and dev splits of some tasks, with their specs."""

    specs: dict[str, TaskSpec]
    train: dict[str, datasets.Dataset]
    dev: dict[str, datasets.Dataset]


def load_prepared_tasks(store: Storage, names: Sequence[str],
                        tokenization: str | None = None) -> PreparedTasks:
    """Read what the prepare stage wrote for ``names`` (``store`` = experiment root), in
    ``tokenization`` (None: encoder.path's; see
    :func:`mtkd.data.prepared.encoder_tokenization` for a model's own)."""
    return PreparedTasks(
        specs={n: read_task_spec(store, n) for n in names},
        train={n: read_prepared(store, n, "train", tokenization) for n in names},
        dev={n: read_prepared(store, n, "dev", tokenization) for n in names},
    )


def make_sampler(train: Mapping[str, datasets.Dataset], config: ExperimentConfig,
                 training: TrainingConfig, seed: int, num_shards: int = 1,
                 shard_index: int = 0) -> MultiTaskBatchSampler:
    return MultiTaskBatchSampler.from_config(
        {name: split["length"] for name, split in train.items()}, training.batch_size,
        config.sampling, seed=seed, num_shards=num_shards, shard_index=shard_index)


def build_model(config: ExperimentConfig, specs: Sequence[TaskSpec], *, encoder: str,
                num_layers: int | None, dropout: float, seed: int,
                shape: EncoderShape | None = None) -> MTDNN:
    """An MT-DNN from the experiment's head settings and the given encoder (its first
    ``num_layers`` layers, or cut to ``shape``)."""
    return build_mtdnn(resolve_encoder_dir(encoder), list(specs), num_layers=num_layers,
                       dropout=dropout, pooling=config.encoder.pooling, san=config.heads.san,
                       seed=seed, san_steps=config.heads.san_steps,
                       san_step_dropout=config.heads.san_step_dropout, shape=shape)


def build_student(config: ExperimentConfig, specs: Sequence[TaskSpec], seed: int) -> MTDNN:
    """The student MT-DNN before training: student.encoder (or encoder.path) cut to the
    student's shape (student.num_layers, layer_selection, hidden_size)."""
    student = config.student
    return build_model(config, specs, encoder=student.encoder or config.encoder.path,
                       num_layers=None, dropout=student.training.dropout, seed=seed,
                       shape=student_shape(student))


@dataclass
class TrainResult:
    """A trained model (best dev weights), its tokenizer and the loop's final state."""

    model: MTDNN
    tokenizer: object
    state: LoopState
    loop: TrainingLoop = field(repr=False)


def build_training_loop(config: ExperimentConfig, data: PreparedTasks, *, encoder: str,
                        num_layers: int | None, training: TrainingConfig, seed: int,
                        device: torch.device | str = "cpu",
                        teachers: Mapping[str, TeacherArrays] | None = None,
                        kd: KDConfig | None = None, hooks: LoopHooks | None = None,
                        name: str = "train", log_every: int = 50,
                        model: MTDNN | None = None,
                        data_parallel: bool = False,
                        precision_key: str = "teachers.training.precision",
                        step_times: StepTimes | None = None) -> TrainingLoop:
    """Model, sampler and plain-PyTorch backend for one run, ready to ``run``.

    ``model`` starts from an existing MT-DNN instead of the pretrained ``encoder``.
    ``data_parallel``: this process is one rank of an initialised ``torch.distributed``
    process group (a Ray Train worker): it trains its shard of the batches
    (``total_steps`` shrinks accordingly), gradients are averaged with DDP, and rank 0's
    dev score decides keep-best and early stopping on every rank (only rank 0 keeps the
    best weights). ``training.precision`` is resolved on ``device`` (``precision_key``
    names it in errors). ``step_times``: record every step's timing into it
    (:class:`~mtkd.training.steptiming.TimedBackend`; the same results).
    """
    world, rank = 1, 0
    if data_parallel:
        import torch.distributed as dist

        world, rank = dist.get_world_size(), dist.get_rank()
    if model is None:
        model = build_model(config, list(data.specs.values()), encoder=encoder,
                            num_layers=num_layers, dropout=training.dropout, seed=seed)
    sampler = make_sampler(data.train, config, training, seed, num_shards=world,
                           shard_index=rank)
    backend: TorchBackend | DataParallelBackend | TimedBackend = TorchBackend(
        model, training, total_optimizer_steps(training, len(sampler)), device,
        precision_key=precision_key)
    score, decide = None, None
    if data_parallel:
        backend = DataParallelBackend(backend, several_tasks=len(data.specs) > 1)
        score, decide = rank0_score(backend.device), rank0_decision(backend.device)
    if step_times is not None:
        backend = TimedBackend(backend, step_times)
    return TrainingLoop(backend, LoopData(data.specs, data.train, data.dev, teachers or {}),
                        training, sampler=sampler, kd=kd, hooks=hooks, name=name,
                        log_every=log_every, score=score, keep_best_in_memory=rank == 0,
                        decide=decide)


def rank0_score(device: torch.device) -> Callable[[dict[str, Any]], float]:
    """The loop's ``score`` for a data-parallel rank: rank 0's dev average, broadcast, so
    that keep-best and early stopping decide the same on every rank (a collective: every
    rank evaluates at the same steps)."""
    return functools.partial(_rank0_average, device=device)


def _rank0_average(result: dict[str, Any], device: torch.device) -> float:
    return from_rank0(float(result["average"]), device)


def rank0_decision(device: torch.device) -> Callable[[bool], bool]:
    """The loop's ``decide`` for a data-parallel rank: rank 0's answer on every rank (a
    time-triggered checkpoint is a collective; the ranks' clocks differ)."""
    return functools.partial(_rank0_flag, device=device)


def _rank0_flag(flag: bool, device: torch.device) -> bool:
    return bool(from_rank0(float(flag), device))


def run_training(loop: TrainingLoop, tokenized_with: str, seed: int,
                 resume: Resume | None = None) -> TrainResult:
    """Run ``loop``; ``resume`` (from :func:`mtkd.training.checkpoint.load_checkpoint`,
    which loaded the backend's state) continues at the checkpoint's exact batch with its
    RNG and best weights. The returned model holds the best dev weights and comes with the
    tokenizer of ``tokenized_with`` (the encoder path whose tokenizer made the training
    inputs: the model's own encoder), which a saved model must ship."""
    state, rng = None, None
    if resume is not None:
        state, rng = resume.state, resume.rng
        loop.restore_best_weights(state, resume.best)
    final = loop.run(state, rng=rng, seed=seed)
    tokenizer = load_tokenizer(resolve_encoder_dir(tokenized_with))
    return TrainResult(loop.backend.model, tokenizer, final, loop)

