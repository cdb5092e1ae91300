"""Teacher-ensemble scaling: N members on k concurrent slots against one member alone.

mtkd's real ``teachers`` stage (Ray Tune trials, checkpoints, model upload) on the bundled
rotten_tomatoes task (``--train``/``--dev`` examples, ``--max-length`` tokens) with the
bundled all-MiniLM-L6-v2 encoder truncated to ``--layers`` layers. Every timed run is a
fresh experiment (its own name, nothing reused); the prepare stage runs for it untimed
first, and a private local Ray (``ray.num_cpus`` = ``--cpus``) is started once before any
timing, so Ray's start-up is in neither number. One untimed size-1 run warms Ray's worker
pool and the page cache (unless ``--no-warmup``). Then, per round, size 1 and size N are
timed with the wall clock around ``run_pipeline(config, only="teachers")``
(order alternating between rounds).

    ratio = wall(N) / (ceil(N / k) × wall(1))       (median of per-round ratios)

1.0 means k trials run side by side as fast as one alone and nothing is lost between
trials. Per run the members' own ``wall_seconds`` (from ``teachers/teachers.json``), their
training throughput and the time around training are printed, and the excess of wall(N)
over ceil(N/k) × wall(1) is split into its parts. Unless ``--no-levers``, every round also
times size N with Tune's ``reuse_actors=True`` (``teachers.reuse_actors``, false by
default) to price the per-trial worker start-up. ``--diagnose`` adds micro-measurements of
the per-trial fixed costs (worker imports alone and two at once, data load, model build,
evaluation, checkpoint, model upload).

    .venv/bin/python bench/ensemble_scaling.py [--members 4] [--slots 2] [--rounds 2]
                                               [--quick] [--diagnose] [--no-levers]

Ends with ``RESULT ensemble_scaling <ratio> (target <= 1.15)``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    _cpu_times,
    begin,
    bench_parser,
    import_seconds,
    markdown_table,
    median,
    other_load,
    paired_ratio,
    parse,
    private_ray,
    python_processes,
    result,
    scratch,
    timed,
)

from mtkd.config import ExperimentConfig, config_from_dict
from mtkd.pipeline import experiment_store, read_manifest, run_pipeline
from mtkd.raycluster import ensure_ray

ENCODER = "bundled:all-MiniLM-L6-v2"
TASK = "rotten_tomatoes"


# ------------------------------------------------------------------------------ config


def experiment(args: argparse.Namespace, root: Path, name: str, size: int,
               reuse: bool = False) -> ExperimentConfig:
    return config_from_dict({
        "name": name, "storage_path": str(root / "runs"), "seed": 0,
        "ray": {"num_cpus": args.cpus},
        "encoder": {"path": ENCODER, "num_layers": args.layers},
        "tasks": [{"name": TASK, "max_length": args.max_length,
                   "max_train_examples": args.train, "max_dev_examples": args.dev}],
        "teachers": {"size": size, "max_concurrent": args.slots, "max_failures": 0,
                     "reuse_actors": reuse,
                     "resources_per_member": {"cpu": args.cpu_per_member},
                     "training": {"epochs": args.epochs, "batch_size": args.batch_size}},
    })


# ------------------------------------------------------------------------------ one run


@dataclass
class MemberRecord:
    name: str
    start: float
    """Seconds from the stage's start to the trial function's first line."""
    wall: float
    """The member's own wall_seconds (trial function start to member.json)."""
    train: float
    """Seconds in the training loop proper (examples / train ex/s; evaluation excluded)."""
    examples_per_s: float
    steps: int

    @property
    def end(self) -> float:
        return self.start + self.wall

    @property
    def around(self) -> float:
        """Member wall outside the training loop: data and model load, evaluations,
        checkpoints, model upload."""
        return self.wall - self.train


@dataclass
class Run:
    size: int
    wall: float
    driver_cpu: float
    machine_busy: float
    """CPU-seconds all processes spent during the run / (wall × cores)."""
    other_before: float
    steal: float = 0.0
    """Fraction of CPU time the hypervisor gave to other guests during the run."""
    members: list[MemberRecord] = field(default_factory=list)

    def launch(self) -> float:
        return min(m.start for m in self.members)

    def tail(self) -> float:
        return self.wall - max(m.end for m in self.members)

    def gaps(self, slots: int) -> list[float]:
        """Start of the i-th member (i >= k) minus the (i-k)-th end: the time a freed slot
        waited for the next trial to reach its first line."""
        starts = sorted(m.start for m in self.members)
        ends = sorted(m.end for m in self.members)
        return [starts[i] - ends[i - slots] for i in range(slots, len(starts))]


def _steal_seconds() -> float:
    """Steal time of all CPUs since boot (/proc/stat), seconds."""
    try:
        with open("/proc/stat") as file:
            values = file.readline().split()[1:]
        return float(values[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def run_teachers(args: argparse.Namespace, root: Path, name: str, size: int,
                 reuse: bool = False) -> Run:
    """Prepare (untimed), then time the teachers stage of a fresh experiment."""
    config = experiment(args, root, name, size, reuse)
    run_pipeline(config, only="prepare")
    store = experiment_store(config)
    train_rows = read_manifest(store, "prepare")["tasks"][TASK]["splits"]["train"]["rows"]
    other = other_load(0.3)
    busy0, total0 = _cpu_times()
    steal0 = _steal_seconds()
    cpu0 = time.process_time()
    started = time.time()
    _, timing = timed(lambda: run_pipeline(config, only="teachers"))
    busy1, total1 = _cpu_times()
    steal = (_steal_seconds() - steal0) / max(total1 - total0, 1e-9)
    report = store.read_json("teachers/teachers.json")
    if report["failed"]:
        raise RuntimeError(f"{name}: members failed: {report['failed']}")
    members = []
    for m in report["members"]:
        examples = args.epochs * train_rows
        train = examples / max(m["train_examples_per_s"], 1e-9)
        members.append(MemberRecord(m["name"], m["attempts"][0]["started_at"] - started,
                                    m["wall_seconds"], train, m["train_examples_per_s"],
                                    m["steps"]))
    return Run(size, timing.wall, time.process_time() - cpu0,
               (busy1 - busy0) / max(total1 - total0, 1e-9), other, steal, members)


def print_run(run: Run, slots: int, label: str) -> None:
    print(f"\n{label}: size {run.size}, stage wall {run.wall:.1f} s, driver CPU "
          f"{run.driver_cpu:.1f} s, machine busy {run.machine_busy:.0%} during the run "
          f"(others' use just before: {run.other_before:.0%}), steal {run.steal:.1%}")
    members = sorted(run.members, key=lambda m: m.start)
    rows = [[m.name, f"{m.start:.1f}", f"{m.wall:.1f}", f"{m.train:.1f}", f"{m.around:.1f}",
             f"{m.examples_per_s:.1f}", m.steps] for m in members]
    print(markdown_table(["member", "starts at s", "wall_seconds", "training s",
                          "around training s", "train ex/s", "steps"], rows))
    gaps = run.gaps(slots)
    print(f"launch (stage start → first trial's first line) {run.launch():.1f} s; "
          f"slot hand-over gaps {', '.join(f'{g:.1f}' for g in gaps) or '-'} s; "
          f"tail (last member.json → stage end) {run.tail():.2f} s")


# ------------------------------------------------------------------------------ diagnosis


TRIAL_IMPORTS = "torch, ray.tune, mtkd.teachers.member, mtkd.training.recipe"
"""What a trial worker imports."""


def diagnose(args: argparse.Namespace, root: Path, name: str) -> None:
    """Per-trial fixed costs, measured in this process with one torch thread (as a trial)."""
    import torch

    from mtkd.data.tokenize import load_tokenizer
    from mtkd.model.remote import save_model_to
    from mtkd.pretrained import resolve_encoder_dir
    from mtkd.teachers.plan import plan_members
    from mtkd.training.recipe import build_training_loop, load_prepared_tasks

    print("\n### Per-trial fixed costs (one torch thread, this process; medians of 3)")
    solo = [import_seconds(TRIAL_IMPORTS, 1)[0] for _ in range(3)]
    pair = [max(import_seconds(TRIAL_IMPORTS, 2)) for _ in range(3)]
    print(f"fresh worker imports (torch, ray.tune, mtkd trial modules): alone "
          f"{median(solo):.1f} s, two at once {median(pair):.1f} s")
    matmul = ("import torch; torch.set_num_threads(1); from common import matmul_gflops; "
              "print(matmul_gflops(1024, torch.float32, 3.0))")  # one thread, n = 1024
    alone = [python_processes(matmul, 1)[0] for _ in range(2)]
    both = [python_processes(matmul, 2) for _ in range(2)]
    print(f"one-thread fp32 matmul (n 1024): one process alone {median(alone):.1f} GFLOP/s; "
          f"two processes at once {median(sum(b) for b in both) / 2:.1f} GFLOP/s each "
          f"(two cores give {median(sum(b) for b in both) / median(alone):.2f}× one core)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = experiment(args, root, name, 1)
    store = experiment_store(config)
    member = plan_members(config)[0]
    tokenizer = load_tokenizer(resolve_encoder_dir(member.encoder))
    costs: dict[str, list[float]] = {}

    def measure(label: str, fn: Any) -> Any:
        result, t = timed(fn)
        costs.setdefault(label, []).append(t.wall)
        return result

    def build(data: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build_training_loop(
                config, data, encoder=member.encoder, num_layers=config.encoder.num_layers,
                training=member.training(config.teachers.training), seed=member.seed)

    def checkpoint(loop: Any) -> float:
        if not loop.backend.optimizer.state:  # AdamW's moments exist after the first step
            loop.total_steps = 1
            loop.run()
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"backend": loop.backend.state_dict()}, Path(folder) / "backend.pt")
            return (Path(folder) / "backend.pt").stat().st_size / 2**20

    try:
        size_mb = 0.0
        for _ in range(3):
            data = measure("load prepared data", lambda: load_prepared_tasks(store, member.tasks))
            loop = measure("build model + loop (encoder load)", lambda d=data: build(d))
            measure(f"one dev evaluation ({args.dev} examples)", loop.evaluate)
            size_mb = measure("checkpoint: torch.save of model + AdamW state",
                              lambda lp=loop: checkpoint(lp))
            measure("save_model_to (final model upload)",
                    lambda lp=loop: save_model_to(store.child("_diag"), "model",
                                                  lp.backend.model, tokenizer))
        print(markdown_table(["cost", "seconds"],
                             [[k, f"{median(v):.2f}"] for k, v in costs.items()]))
        print(f"checkpoint size {size_mb:.0f} MiB; per trial {math.ceil(args.epochs)} "
              "evaluation(s) + checkpoint(s) (eval_every 0: one per epoch), each checkpoint "
              "also copied by Tune into teachers/_tune")
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--members", type=int, default=4, help="ensemble size N")
    parser.add_argument("--slots", type=int, default=2, help="teachers.max_concurrent k")
    parser.add_argument("--cpus", type=int, default=2, help="ray.num_cpus")
    parser.add_argument("--cpu-per-member", type=float, default=1.0)
    parser.add_argument("--train", type=int, default=200, help="train examples")
    parser.add_argument("--dev", type=int, default=100, help="dev examples")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--layers", type=int, default=2, help="encoder layers kept")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--no-levers", dest="levers", action="store_false",
                        help="skip the size-N run with teachers.reuse_actors: true")
    parser.add_argument("--diagnose", action="store_true",
                        help="also measure the per-trial fixed costs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64/32 examples, 1 layer, 1 epoch, 1 round")
    args = parse(parser, argv)
    if args.quick:
        args.train, args.dev, args.layers = min(args.train, 64), min(args.dev, 32), 1
        args.epochs, args.rounds = 1.0, 1
    return args


@dataclass
class Runs:
    """The timed runs of every round: size 1, size N, and size N with reused actors."""

    ones: list[Run] = field(default_factory=list)
    manys: list[Run] = field(default_factory=list)
    reused: list[Run] = field(default_factory=list)


def run_rounds(args: argparse.Namespace, root: Path) -> Runs:
    """Per round size 1, size N (and the reuse_actors lever), order alternating."""
    runs = Runs()
    for r in range(args.rounds):
        order = [1, args.members] + ([-args.members] if args.levers else [])
        for size in order if r % 2 == 0 else reversed(order):
            run = run_teachers(args, root, f"r{r}-n{size}".replace("-n-", "-reuse-n"),
                               abs(size), reuse=size < 0)
            (runs.ones if size == 1 else runs.manys if size > 0 else runs.reused).append(run)
            print_run(run, args.slots, f"round {r + 1}"
                      + (" (lever: reuse_actors=True)" if size < 0 else ""))
    return runs


def summary(args: argparse.Namespace, runs: Runs) -> float:
    """The summary table and the split of the excess, printed; the ratio."""
    waves = math.ceil(args.members / args.slots)
    ones, manys = runs.ones, runs.manys
    print("\n### Summary (medians over rounds)")
    one_m = [m for run in ones for m in run.members]
    many_m = [m for run in manys for m in run.members]

    def gap(rs: list[Run]) -> float:
        return median(g for r in rs for g in r.gaps(args.slots)) if waves > 1 else 0.0

    def row(label: str, fmt: str, one: Any, many: Any) -> list[str]:
        return [label, format(median(one), fmt), format(median(many), fmt)]

    rows = [
        row("stage wall s", ".1f", (r.wall for r in ones), (r.wall for r in manys)),
        row("member wall_seconds", ".1f", (m.wall for m in one_m), (m.wall for m in many_m)),
        row("  training s", ".1f", (m.train for m in one_m), (m.train for m in many_m)),
        row("  around training s", ".1f", (m.around for m in one_m),
            (m.around for m in many_m)),
        row("train ex/s per member", ".1f", (m.examples_per_s for m in one_m),
            (m.examples_per_s for m in many_m)),
        row("launch s", ".1f", (r.launch() for r in ones), (r.launch() for r in manys)),
        ["slot hand-over gap s", "-", f"{gap(manys):.1f}"],
        row("tail s", ".1f", (r.tail() for r in ones), (r.tail() for r in manys)),
        row("driver CPU s", ".1f", (r.driver_cpu for r in ones), (r.driver_cpu for r in manys)),
        row("machine busy", ".0%", (r.machine_busy for r in ones),
            (r.machine_busy for r in manys)),
        row("steal (hypervisor)", ".1%", (r.steal for r in ones), (r.steal for r in manys)),
    ]
    print(markdown_table(["", "size 1", f"size {args.members}"], rows))
    w1, wn = median(r.wall for r in ones), median(r.wall for r in manys)
    m1, mn = median(m.wall for m in one_m), median(m.wall for m in many_m)
    tr1, trn = median(m.train for m in one_m), median(m.train for m in many_m)
    print(f"\nexcess of wall(N) over ceil(N/k)·wall(1) = {wn:.1f} − {waves}×{w1:.1f} = "
          f"{wn - waves * w1:+.1f} s, of which (approximately, per wave on the critical path):")
    print(f"  member slowdown while sharing the machine: {waves} × ({mn:.1f} − {m1:.1f}) "
          f"= {waves * (mn - m1):+.1f} s (training part {waves * (trn - tr1):+.1f} s: "
          f"per-member train ex/s {median(m.examples_per_s for m in many_m):.1f} vs "
          f"{median(m.examples_per_s for m in one_m):.1f} alone)")
    l1 = median(r.launch() + r.tail() for r in ones)
    ln = median(r.launch() + r.tail() for r in manys)
    print(f"  trial start-up of k trials at once vs one alone: first wave ({ln:.1f} − "
          f"{l1:.1f}) + {waves - 1} later wave(s) × (hand-over gap {gap(manys):.1f} − "
          f"{l1:.1f}) = {ln - l1 + (waves - 1) * (gap(manys) - l1):+.1f} s")
    ratios = [m.wall / (waves * o.wall) for m, o in zip(manys, ones, strict=True)]
    print(f"  per round ratios: {', '.join(f'{x:.3f}' for x in ratios)}")
    if runs.reused:
        lever = paired_ratio([m.wall for m in runs.reused], [waves * o.wall for o in ones])
        print(f"\nlever teachers.reuse_actors: true (default false): size {args.members} in "
              f"{median(r.wall for r in runs.reused):.1f} s (vs {wn:.1f} s); hand-over gaps "
              f"{gap(runs.reused):.1f} s; ratio with it {lever:.3f}")
    return paired_ratio([m.wall for m in manys], [waves * o.wall for o in ones])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    private_ray()
    begin("ensemble_scaling.py", argv)
    began = time.perf_counter()
    print(f"task {TASK}: {args.train} train / {args.dev} dev examples, max_length "
          f"{args.max_length}; encoder all-MiniLM-L6-v2 first {args.layers} layer(s); "
          f"{args.epochs:g} epoch(s), batch {args.batch_size}; N = {args.members} members, "
          f"k = {args.slots} slots, {args.cpu_per_member:g} CPU each, ray.num_cpus {args.cpus}")
    with scratch("mtkd-bench-ens-", args.keep) as root:
        _, t = timed(lambda: ensure_ray(experiment(args, root, "warmup", 1).ray))
        print(f"Ray started in {t.wall:.1f} s (excluded from the timings)")
        if args.warmup:
            warm = run_teachers(args, root, "warmup", 1)
            print(f"warm-up run (untimed for the ratio): size 1 in {warm.wall:.1f} s")
        ratio = summary(args, run_rounds(args, root))
        if args.diagnose:
            diagnose(args, root, "r0-n1")
        print(f"\ntotal bench time {time.perf_counter() - began:.0f} s; data under {root}"
              + ("" if args.keep else " (deleted)"))
        result("ensemble_scaling", ratio, "target <= 1.15")
    return 0


if __name__ == "__main__":
    sys.exit(main())
