"""``mtkd estimate CONFIG``: GPU-hours and dollars of an experiment, computed from its sizes.

Nothing here is typed in by hand per config: the numbers come from the config (tasks,
epochs, batch sizes, ensemble plan, encoders, student) and from four inputs that are
stated with their source and can be replaced on the command line:

* **training examples per task**: GLUE tasks use the published train-set sizes
  (:data:`GLUE_TRAIN_SIZES`), capped by ``tasks.N.max_train_examples``; other tasks use
  ``max_train_examples`` or ``--examples TASK=N``;
* **encoder sizes** (layers, hidden): from the encoder's config.json when it is on this
  machine (a local folder, or a Hub id already in the HF cache), else from
  :data:`KNOWN_ENCODERS`; non-embedding parameters are 12 x layers x hidden^2;
* **throughput**: ``--rate``, training examples/s per GPU of BERT-large (24 layers,
  hidden 1024) at 128 tokens. The default, :data:`REFERENCE_RATE` = 150, is an
  *assumption*, derived in cluster/README.md section 6 (6 x 302 M parameters x 128 tokens
  per example at 27% of a V100's 125 TFLOP/s fp16 peak), not a GPU measurement. Other
  encoders and lengths scale it by FLOPs per example (non-embedding parameters x tokens;
  attention's extra FLOPs are left out). Inference runs ``--inference-factor`` times
  faster (default 4.9: the ratio measured on this project's CPU, docs/BENCHMARKS.md and
  cluster/README.md section 6);
* **price**: ``--instance`` (default p3.2xlarge) priced from
  :data:`mtkd.clusterconfig.ON_DEMAND_USD_PER_HOUR` per GPU, or ``--usd-per-gpu-hour``.

Stages counted: teacher members (all members, one pass of ``epochs`` over their tasks'
training sets), soft targets (every member predicts its tasks' training sets once) and
every student run (seeds x KD/baseline). GPU-hours assume perfect data-parallel scaling;
wall time spreads each stage over the GPUs it can use. Left out: node start-up, data
preparation, dev evaluation, retries, spot interruptions.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtkd.errors import MtkdError

if TYPE_CHECKING:
    from mtkd.config import ExperimentConfig

GLUE_TRAIN_SIZES: dict[str, int] = {
    "cola": 8551, "sst2": 67349, "mrpc": 3668, "qqp": 363846, "stsb": 5749,
    "mnli": 392702, "qnli": 104743, "rte": 2490, "wnli": 635,
}
"""Training examples of each GLUE task: the train splits of ``nyu-mll/glue`` on the
Hugging Face hub (its dataset card's split sizes), the same counts as Table 1 of the GLUE
paper (Wang et al., ICLR 2019) rounded there to thousands."""

KNOWN_ENCODERS: dict[str, tuple[int, int]] = {
    "bert-large": (24, 1024), "bert-base": (12, 768), "roberta-large": (24, 1024),
    "roberta-base": (12, 768), "deberta-v3-large": (24, 1024), "deberta-v3-base": (12, 768),
    "electra-large": (24, 1024), "electra-base": (12, 768),
    "all-minilm-l6-v2": (6, 384), "all-mpnet-base-v2": (12, 768),
}
"""(layers, hidden) of encoders by name, for ids whose config.json is not on this machine:
the published architectures (BERT: Devlin et al. 2019; RoBERTa, DeBERTa-v3, ELECTRA,
MiniLM, MPNet: their model cards). Matched on the repo name without its organisation,
"-uncased"/"-cased" and "google/"-style prefixes."""

REFERENCE_RATE = 150.0
"""Assumed training examples/s per GPU of BERT-large at 128 tokens on a V100 in fp16
(derivation in cluster/README.md section 6; not measured here)."""
REFERENCE_FLOPS_UNIT = 12 * 24 * 1024**2 * 128
"""Non-embedding parameters x tokens of the reference (BERT-large, 128 tokens)."""
INFERENCE_FACTOR = 4.9
"""Inference / training throughput, measured on this project's CPU (all-MiniLM-L6-v2,
length-sorted bf16: 430 vs 88 examples/s; docs/BENCHMARKS.md)."""
HEAD_INSTANCE = "m5.2xlarge"
"""The head node of every cluster/aws-*.yaml, billed for the whole run."""


def encoder_dims(path: str) -> tuple[int, int]:
    """(layers, hidden) of the encoder at ``path`` without a network: its config.json on
    this machine, else :data:`KNOWN_ENCODERS`. MtkdError (exit 2) when neither knows."""
    from mtkd.pretrained import BUNDLED_PREFIX, cached_hub_dir, parse_hub_id

    folder: Path | None = None
    local = Path(path).expanduser()
    if (local / "config.json").is_file():
        folder = local
    elif (hub := parse_hub_id(path)) is not None:
        try:
            folder = cached_hub_dir(*hub)
        except Exception:  # no huggingface_hub cache: use the table
            folder = None
    if folder is not None:
        config = json.loads((folder / "config.json").read_text())
        return int(config["num_hidden_layers"]), int(config["hidden_size"])
    name = path.removeprefix(BUNDLED_PREFIX).split("@")[0].rsplit("/", 1)[-1].lower()
    name = re.sub(r"-(un)?cased$", "", name)
    if name in KNOWN_ENCODERS:
        return KNOWN_ENCODERS[name]
    raise MtkdError(f"encoder {path!r}: its size is unknown here (no config.json on this "
                    f"machine, not one of {', '.join(KNOWN_ENCODERS)}) (fix: fetch it once "
                    "so that its config.json is on this machine, e.g. by a `mtkd run` of the "
                    "prepare stage, or name a known encoder of the same size)")


def train_rate(layers: int, hidden: int, tokens: int, reference: float = REFERENCE_RATE
               ) -> float:
    """Training examples/s per GPU of an encoder of ``layers`` x ``hidden`` at ``tokens``
    per example: ``reference`` (BERT-large, 128 tokens) scaled by FLOPs per example."""
    return reference * REFERENCE_FLOPS_UNIT / (12 * layers * hidden**2 * tokens)


@dataclass
class StageCost:
    """One stage of the estimate."""

    name: str
    models: int
    """Trainings (members, student runs) or predicting members (soft targets)."""
    examples: float
    """Example passes (training) or predictions (soft targets), all models together."""
    steps: int
    """Optimizer steps, all models together (0 for inference)."""
    gpu_hours: float
    gpus: float
    """GPUs the stage keeps busy at once."""
    wall_hours: float


@dataclass
class Estimate:
    """The estimate of one config (see the module docstring for what it counts)."""

    examples: dict[str, int]
    """Training examples per task."""
    examples_source: dict[str, str]
    stages: list[StageCost]
    gpu_hours: float
    wall_hours: float
    usd_per_gpu_hour: float | None
    head_usd_per_hour: float | None
    usd: float | None
    assumptions: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def task_examples(config: ExperimentConfig, given: dict[str, int] | None = None
                  ) -> tuple[dict[str, int], dict[str, str]]:
    """Training examples per task and where each number comes from: ``given`` (the
    command line), the published GLUE size (capped by max_train_examples), or
    max_train_examples. MtkdError (exit 2) for a task with none of them."""
    given = given or {}
    unknown = sorted(set(given) - {t.name for t in config.tasks})
    if unknown:
        raise MtkdError(f"--examples names {', '.join(unknown)}, not a task of this config "
                        f"(fix: use one of {', '.join(t.name for t in config.tasks)})")
    counts, sources, missing = {}, {}, []
    for i, task in enumerate(config.tasks):
        cap = task.max_train_examples
        if task.name in given:
            counts[task.name], sources[task.name] = given[task.name], "--examples"
        elif task.source == "glue" and (task.glue_task or "").lower() in GLUE_TRAIN_SIZES:
            published = GLUE_TRAIN_SIZES[(task.glue_task or "").lower()]
            counts[task.name] = min(published, cap) if cap else published
            sources[task.name] = ("GLUE train size, capped by max_train_examples"
                                  if cap and cap < published else "GLUE train size")
        elif cap:
            counts[task.name], sources[task.name] = cap, "max_train_examples (an upper bound)"
        else:
            missing.append(f"tasks.{i} ({task.name})")
    if missing:
        raise MtkdError(f"no training-set size for {', '.join(missing)} (fix: set "
                        "tasks.N.max_train_examples, or pass --examples TASK=N)")
    return counts, sources


def estimate(config: ExperimentConfig, *, examples: dict[str, int] | None = None,
             rate: float = REFERENCE_RATE, inference_factor: float = INFERENCE_FACTOR,
             gpus: int = 8, instance: str = "p3.2xlarge",
             usd_per_gpu_hour: float | None = None) -> Estimate:
    """GPU-hours, wall hours and on-demand dollars of ``config`` on ``gpus`` GPUs.

    ``rate``: training examples/s per GPU of BERT-large at 128 tokens (other encoders and
    lengths scale by FLOPs); ``inference_factor``: inference / training throughput;
    ``instance``: the GPU instance type whose on-demand price per GPU is used unless
    ``usd_per_gpu_hour`` is given."""
    from mtkd.clusterconfig import GPUS_PER_INSTANCE, ON_DEMAND_USD_PER_HOUR
    from mtkd.teachers.plan import init_member, plan_members

    def positive(value: float) -> bool:
        return math.isfinite(value) and value > 0  # false for nan too

    if (not positive(rate) or not positive(inference_factor) or gpus < 1
            or (usd_per_gpu_hour is not None and not positive(usd_per_gpu_hour))):
        raise MtkdError("--rate, --inference-factor and --usd-per-gpu-hour must be finite "
                        "numbers > 0 and --gpus >= 1 (fix: e.g. --rate 150 "
                        "--inference-factor 4.9 --gpus 8)")
    if usd_per_gpu_hour is None and instance not in GPUS_PER_INSTANCE:
        raise MtkdError(f"--instance {instance}: not a GPU instance type mtkd knows (fix: "
                        f"one of {', '.join(sorted(GPUS_PER_INSTANCE))}, or give "
                        "--usd-per-gpu-hour)")
    counts, sources = task_examples(config, examples)
    lengths = {t.name: t.max_length for t in config.tasks}

    def seconds(tasks: tuple[str, ...] | list[str], dims: tuple[int, int], epochs: float,
                factor: float = 1.0) -> float:
        return sum(counts[t] * epochs / (train_rate(*dims, lengths[t], rate) * factor)
                   for t in tasks)

    stages: list[StageCost] = []
    # teachers: every member (and the shared multi-task model per_task members start from);
    # none without distillation (the pipeline skips teachers and soft targets then)
    teachers = config.teachers
    members = plan_members(config) if config.student.distill else []
    init = init_member(config) if members else None
    if init is not None:
        members = [init, *members]
    per_member = max(teachers.resources_per_member.gpu, 1.0) * teachers.workers_per_member
    batch = teachers.training.batch_size * teachers.training.grad_accum
    member_seconds, member_steps, member_examples = 0.0, 0, 0.0
    own: dict[str, float] = {}  # each member's GPU-seconds
    for member in members:
        dims = encoder_dims(member.encoder)
        steps = sum(math.ceil(counts[t] / (batch * teachers.workers_per_member))
                    for t in member.tasks) * member.epochs
        share = 1.0
        if teachers.training.max_steps and steps > teachers.training.max_steps:
            share = teachers.training.max_steps / steps
        member_steps += math.ceil(min(steps, teachers.training.max_steps or steps))
        member_examples += sum(counts[t] for t in member.tasks) * member.epochs * share
        own[member.name] = seconds(member.tasks, dims, member.epochs) * share
        member_seconds += own[member.name]
    if members:
        parallel = min(len(members) * per_member, gpus,
                       (teachers.max_concurrent or len(members)) * per_member)
        # wall: the shared init model first, alone; then the others side by side, but never
        # shorter than the longest of them on its own GPUs
        first = own.get(init.name, 0.0) / per_member if init is not None else 0.0
        rest = [v for k, v in own.items() if init is None or k != init.name]
        wall_s = first + max(sum(rest) / parallel, max(rest, default=0.0) / per_member)
        stages.append(StageCost("teachers", len(members), member_examples, member_steps,
                                member_seconds / 3600, parallel, wall_s / 3600))
    # soft targets: each (final) member predicts its tasks' training sets once
    final = [m for m in members if init is None or m.name != init.name]
    soft_seconds = sum(seconds(m.tasks, encoder_dims(m.encoder), 1.0, inference_factor)
                       for m in final)
    predicted = float(sum(counts[t] for m in final for t in m.tasks))
    if final:
        soft_gpus = float(min(gpus, len(final)))
        stages.append(StageCost("soft targets", len(final), predicted, 0,
                                soft_seconds / 3600, soft_gpus, soft_seconds / 3600 / soft_gpus))
    # student runs: seeds x (KD, baseline)
    student = config.student
    layers, hidden = encoder_dims(student.encoder or config.encoder.path)
    dims = (min(layers, student.num_layers or layers), hidden)
    runs = len(student.seeds) * ((1 if student.distill else 0)
                                 + (1 if student.baseline or not student.distill else 0))
    tasks = [t.name for t in config.tasks]
    s_batch = student.training.batch_size * student.training.grad_accum * student.num_workers
    s_steps = sum(math.ceil(counts[t] / s_batch) for t in tasks) * student.training.epochs
    share = 1.0
    if student.training.max_steps and s_steps > student.training.max_steps:
        share = student.training.max_steps / s_steps
    s_seconds = seconds(tasks, dims, student.training.epochs) * share * runs
    s_gpus = float(min(gpus, student.num_workers * max(student.worker_resources.gpu, 1.0)))
    stages.append(StageCost(
        "student", runs, sum(counts.values()) * student.training.epochs * share * runs,
        math.ceil(min(s_steps, student.training.max_steps or s_steps)) * runs,
        s_seconds / 3600, s_gpus, s_seconds / 3600 / s_gpus))

    gpu_hours = sum(s.gpu_hours for s in stages)
    wall = sum(s.wall_hours for s in stages)
    priced_by = "--usd-per-gpu-hour" if usd_per_gpu_hour is not None else \
        f"{instance} on-demand per GPU"
    if usd_per_gpu_hour is None and instance in ON_DEMAND_USD_PER_HOUR:
        usd_per_gpu_hour = ON_DEMAND_USD_PER_HOUR[instance] / GPUS_PER_INSTANCE[instance]
    head = ON_DEMAND_USD_PER_HOUR[HEAD_INSTANCE]
    usd = (gpu_hours * usd_per_gpu_hour + wall * head) if usd_per_gpu_hour else None
    return Estimate(counts, sources, stages, gpu_hours, wall, usd_per_gpu_hour, head, usd,
                    {"rate": rate, "inference_factor": inference_factor, "gpus": gpus,
                     "instance": instance, "head": HEAD_INSTANCE, "priced_by": priced_by,
                     "rate_source": ("assumed: BERT-large, 128 tokens, V100 fp16 "
                                     "(cluster/README.md section 6)"
                                     if rate == REFERENCE_RATE else "--rate")})


def render(result: Estimate) -> str:
    """The estimate as a short plain-text table."""
    lines = ["training examples per task:"]
    width = max((len(task) for task in result.examples), default=0)  # long names align too
    lines += [f"  {task:<{width}} {n:>11,}  ({result.examples_source[task]})"
              for task, n in result.examples.items()]
    lines += ["", f"{'stage':<13} {'models':>6} {'examples':>14} {'steps':>10} "
              f"{'GPU-h':>9} {'GPUs':>5} {'wall h':>8}"]
    lines += [f"{s.name:<13} {s.models:>6} {s.examples:>14,.0f} {s.steps:>10,} "
              f"{s.gpu_hours:>9.1f} {s.gpus:>5.0f} {s.wall_hours:>8.2f}" for s in result.stages]
    lines.append(f"{'total':<13} {'':>6} {'':>14} {'':>10} {result.gpu_hours:>9.1f} "
                 f"{'':>5} {result.wall_hours:>8.2f}")
    a = result.assumptions
    lines += ["", f"throughput: {a['rate']:g} training examples/s per GPU for BERT-large at "
              f"128 tokens ({a['rate_source']}), scaled by FLOPs per example; inference "
              f"x{a['inference_factor']:g}"]
    if result.usd is not None:
        lines.append(f"cost: {result.gpu_hours:.1f} GPU-h x ${result.usd_per_gpu_hour:.3f} "
                     f"({a['priced_by']}) + {result.wall_hours:.2f} h x "
                     f"${result.head_usd_per_hour:.3f} ({a['head']} head) = "
                     f"${result.usd:,.0f}")
    else:
        lines.append(f"cost: no verified on-demand price for {a['instance']} (pass "
                     "--usd-per-gpu-hour, or --instance p3.2xlarge)")
    return "\n".join(lines)


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", action="append", default=[], metavar="TASK=N",
                        help="training examples of a task (repeatable); default: GLUE's "
                             "published sizes, else tasks.N.max_train_examples")
    parser.add_argument("--rate", type=float, default=REFERENCE_RATE,
                        help="training examples/s per GPU of BERT-large at 128 tokens "
                             f"(default {REFERENCE_RATE:g}: an assumption for a V100 in "
                             "fp16, see cluster/README.md section 6); replace it with a "
                             "member's measured rate")
    parser.add_argument("--inference-factor", type=float, default=INFERENCE_FACTOR,
                        help=f"inference / training throughput (default {INFERENCE_FACTOR:g},"
                             " measured on CPU)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the cluster (default 8)")
    parser.add_argument("--instance", default="p3.2xlarge",
                        help="GPU instance type priced per GPU (default p3.2xlarge)")
    parser.add_argument("--usd-per-gpu-hour", type=float, default=None,
                        help="price per GPU-hour instead of --instance's on-demand price")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")


def parse_examples(items: list[str]) -> dict[str, int]:
    """``TASK=N`` items -> {task: N}; MtkdError (exit 2) for a malformed one."""
    out = {}
    for item in items:
        task, sep, value = item.partition("=")
        if not sep or not task or not value.isdigit() or int(value) < 1:
            raise MtkdError(f"--examples {item!r}: expected TASK=N with N >= 1 (fix: e.g. "
                            "--examples mytask=12000)")
        out[task] = int(value)
    return out
