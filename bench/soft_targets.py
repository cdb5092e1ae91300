"""Soft-target inference throughput: mtkd's Ray Data actor pool against single-process loops.

Data: the bundled rotten_tomatoes (max_length 128) and boolq (max_length 256) train splits,
``--examples`` of each (mtkd's deterministic subset), prepared by mtkd's real prepare stage
into a temporary experiment folder. Model: one member, the bundled all-MiniLM-L6-v2 MT-DNN
with fresh heads for both tasks, saved at ``teachers/m000/model`` as the teachers stage
would. Variants, measured side by side in one run, interleaved round by round (medians over
``--rounds``):

* ``soft``: ``mtkd.soft.stage.infer_member`` itself (rows from storage, Ray Data
  ``map_batches`` with the ``MemberPredictor`` actor pool: every actor loads the model from
  storage), ``soft_targets.precision: bf16``, ``resources_per_actor: {cpu: 0.5}`` (2 actors
  with one torch thread each on 2 CPUs), ``batch_size`` ``--batch-size``. The stage also
  predicts dev; here only the train splits go through it (``splits=TRAIN_ONLY``), as in
  every other variant. Ray is started once before any timing;
* ``naive``: one process, fp32, batches of 32 in data order, every batch padded to the task's
  max_length, 2 torch threads;
* ``best``: one process, bf16 autocast, length-sorted batches with dynamic padding (batch
  ``--best-batch-rt`` for rotten_tomatoes, ``--best-batch-boolq`` for boolq), 2 threads;
* the fp32 and bf16 matmul ceilings (``bench/common.py``, 2 threads).

Useful FLOPs (real tokens only, forward): ``2·N·Σℓ + 4·L·h·Σℓ²`` (N non-embedding encoder
parameters, ℓ real tokens of an example, L layers, h hidden size); MFU = useful FLOP/s over
the bf16 matmul FLOP/s of the same run. The soft targets (probabilities) of the bf16 variants
are compared with those of the fp32 naive loop.

``--investigate`` adds, to explain the gap between ``soft`` and ``best``: a single-thread
``best`` (one actor's ideal), the model load of one actor, and replicas of ``infer_member``
with one knob changed at a time (start-up only; more blocks; longest blocks first; token-
budget sub-batches), with Ray Data's per-operator stats.

    .venv/bin/python bench/soft_targets.py [--examples 2000] [--rounds 2] [--quick]
                                           [--investigate]

Ends with ``RESULT`` lines: soft_vs_naive, soft_vs_best_single, soft_mfu and the bf16/fp32
soft-target difference.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from common import (
    Ceiling,
    Timing,
    add_matmul_options,
    add_precision_option,
    add_quiet_options,
    begin,
    bench_parser,
    import_seconds,
    interleave,
    markdown_table,
    matmul_variant,
    median,
    paired_ratio,
    parse,
    private_ray,
    quiet_wait,
    result,
    scratch,
    set_threads,
    timed,
    wait_for_quiet,
)

import mtkd.soft.stage as soft_stage
from mtkd.config import ExperimentConfig, Resources, config_from_dict
from mtkd.data.prepared import read_prepared, read_task_spec
from mtkd.data.tokenize import load_tokenizer
from mtkd.model.infer import predict_rows
from mtkd.model.mtdnn import MTDNN, build_mtdnn, non_embedding_parameters
from mtkd.model.remote import load_model_from, save_model_to
from mtkd.pipeline import experiment_store, run_pipeline
from mtkd.pretrained import resolve_encoder_dir
from mtkd.raycluster import ensure_ray
from mtkd.records import MemberRecord
from mtkd.resources import ray_resources, task_options
from mtkd.storage import Storage

ENCODER = "bundled:all-MiniLM-L6-v2"
MAX_LENGTHS = {"rotten_tomatoes": 128, "boolq": 256}
TRAIN_ONLY = ("train",)
"""The splits timed: train only (the stage also predicts dev and test)."""
MEMBER = MemberRecord(lineage="bench", content=None, name="m000", tasks=list(MAX_LENGTHS))
Key = tuple[str, str]
"""(task, uid)"""


# ------------------------------------------------------------------------------ setup


@dataclass
class Setup:
    args: argparse.Namespace
    config: ExperimentConfig
    store: Storage
    model: MTDNN
    """The saved member, loaded back (the weights every variant uses)."""
    pad_id: int
    data: dict[str, dict[str, list[Any]]]
    """Per task: uid, input_ids, token_type_ids, length (the prepared train split)."""
    non_embedding: int
    layers: int
    hidden: int

    @property
    def examples(self) -> int:
        return sum(len(d["uid"]) for d in self.data.values())

    @property
    def tokens(self) -> int:
        return sum(sum(d["length"]) for d in self.data.values())

    @property
    def useful_flops(self) -> float:
        """2·N·Σℓ + 4·L·h·Σℓ² over every example (forward only, real tokens)."""
        lengths = np.concatenate([np.asarray(d["length"], dtype=np.float64)
                                  for d in self.data.values()])
        return (2.0 * self.non_embedding * lengths.sum()
                + 4.0 * self.layers * self.hidden * (lengths ** 2).sum())

    def padded_tokens(self, task: str, batch: int, sort: bool, pad_to_max: bool) -> int:
        lengths = np.asarray(self.data[task]["length"])
        if sort:
            lengths = np.sort(lengths)
        total = 0
        for start in range(0, len(lengths), batch):
            chunk = lengths[start:start + batch]
            total += len(chunk) * (MAX_LENGTHS[task] if pad_to_max else int(chunk.max()))
        return total


def experiment(args: argparse.Namespace, root: Path) -> ExperimentConfig:
    return config_from_dict({
        "name": "soft-bench", "storage_path": str(root / "runs"), "seed": 0,
        "ray": {"num_cpus": args.cpus},
        "encoder": {"path": ENCODER},
        "tasks": [{"name": t, "max_length": n, "max_train_examples": args.examples,
                   "max_dev_examples": 16} for t, n in MAX_LENGTHS.items()],
        "soft_targets": {"batch_size": args.batch_size, "precision": args.precision,
                         "resources_per_actor": {"cpu": args.cpu_per_actor}},
    })


def load_setup(args: argparse.Namespace, root: Path) -> Setup:
    config = experiment(args, root)
    run_pipeline(config, only="prepare")
    store = experiment_store(config)
    encoder_dir = resolve_encoder_dir(ENCODER)
    specs = [read_task_spec(store, t) for t in MAX_LENGTHS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = build_mtdnn(encoder_dir, specs, seed=0)
    tokenizer = load_tokenizer(encoder_dir)
    save_model_to(store, f"teachers/{MEMBER.name}/model", fresh, tokenizer)
    model, tokenizer = load_model_from(store, f"teachers/{MEMBER.name}/model",
                                       root / "local-model")
    model.eval()
    data = {}
    for task in MAX_LENGTHS:
        split = read_prepared(store, task, "train")
        data[task] = {k: list(split[k][:]) for k in ("uid", "input_ids", "token_type_ids",
                                                      "length")}
    heads = sum(p.numel() for p in model.heads.parameters())
    cfg = model.encoder.config
    return Setup(args, config, store, model, int(tokenizer.pad_token_id or 0), data,
                 non_embedding_parameters(model) - heads, int(cfg.num_hidden_layers),
                 int(cfg.hidden_size))


# ------------------------------------------------------------------------------ variants


@dataclass
class Measurement:
    timing: Timing
    examples: int
    threads: int
    outputs: dict[Key, np.ndarray] = field(repr=False, default_factory=dict)
    per_task: dict[str, float] = field(default_factory=dict)
    """Seconds per task (single-process variants)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.timing.wall

    def cpu_share(self) -> float:
        return self.timing.cpu_share(self.threads) if self.threads else 1.0


def local_variant(setup: Setup, *, precision: str, sort: bool, pad_to_max: bool,
                  batch: dict[str, int], threads: int) -> Callable[[], Measurement]:
    """A single-process loop over both tasks' rows with ``setup.model``: mtkd's inference
    core (:func:`mtkd.model.infer.predict_rows`), rows sorted by length or not, batches
    padded to the longest row or to the task's max_length."""

    def run() -> Measurement:
        set_threads(threads)
        outputs: dict[Key, np.ndarray] = {}
        per_task: dict[str, float] = {}

        def go() -> None:
            for task, cols in setup.data.items():
                t0 = time.perf_counter()
                rows = [{"uid": u, "input_ids": i, "token_type_ids": t} for u, i, t in
                        zip(cols["uid"], cols["input_ids"], cols["token_type_ids"], strict=True)]
                values = predict_rows(
                    setup.model, task, rows, batch_size=batch[task], device="cpu",
                    precision=precision, pad_id=setup.pad_id,
                    lengths=cols["length"] if sort else None,
                    pad_to_multiple_of=MAX_LENGTHS[task] if pad_to_max else None)
                outputs.update({(task, uid): value for uid, value in
                                zip(cols["uid"], values, strict=True)})
                per_task[task] = time.perf_counter() - t0

        try:
            _, timing = timed(go)
        finally:
            set_threads(setup.args.threads)
        return Measurement(timing, setup.examples, threads, outputs, per_task)

    return run


def soft_variant(setup: Setup) -> Callable[[], Measurement]:
    """mtkd's own ``infer_member`` (Ray Data actor pool), timed from the call to the table."""
    tasks = list(MAX_LENGTHS)

    def run() -> Measurement:
        table, timing = timed(lambda: soft_stage.infer_member(setup.config, setup.store,
                                                                MEMBER, tasks,
                                                                splits=TRAIN_ONLY))
        return Measurement(timing, setup.examples, 0, table_outputs(table))

    return run


def table_outputs(table: pa.Table) -> dict[Key, np.ndarray]:
    return {(t, u): np.asarray(v, dtype=np.float32) for t, u, v in
            zip(table["task"].to_pylist(), table["uid"].to_pylist(),
                table["logits"].to_pylist(), strict=True)}


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def max_prob_diff(a: dict[Key, np.ndarray], b: dict[Key, np.ndarray]) -> float:
    if set(a) != set(b):
        raise RuntimeError(f"outputs cover different examples: {len(a)} vs {len(b)}")
    return max(float(np.abs(softmax(a[k]) - softmax(b[k])).max()) for k in a)


# ------------------------------------------------------------------------------ investigation


class TokenBudgetPredictor(soft_stage.MemberPredictor):
    """MemberPredictor that splits each incoming batch into sub-batches of at most
    ``budget`` padded tokens (rows arrive length-sorted, so sub-batches stay tight)."""

    budget = 16 * 256

    def _predict(self, task: str, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        start = 0
        while start < len(rows):
            end = start + 1
            while end < len(rows) and (end - start + 1) * max(
                    len(r["input_ids"]) for r in rows[start:end + 1]) <= self.budget:
                end += 1
            out += super()._predict(task, rows[start:end])
            start = end
        return out


def replica(setup: Setup, *, blocks: int | None = None, batch_size: int | None = None,
            longest_first: bool = False, limit: int | None = None,
            predictor: type = soft_stage.MemberPredictor) -> tuple[Measurement, str]:
    """``infer_member`` rebuilt here with one knob changed; also returns Ray Data's stats."""
    import ray

    soft = setup.config.soft_targets
    rows = soft_stage.member_rows(setup.store, list(MAX_LENGTHS), TRAIN_ONLY)
    if limit:
        rows = pa.concat_tables([rows.filter(pa.compute.equal(rows["task"], t)).slice(0, limit)
                                 for t in MAX_LENGTHS])
    if longest_first:
        lengths = np.asarray([len(x[0]) for x in rows["input_ids"].to_pylist()])
        rows = rows.take(pa.array(np.argsort(-lengths, kind="stable")))
    size = batch_size or soft.batch_size
    actors = soft_stage.actor_pool_size(soft, ray.cluster_resources())
    nblocks = blocks or max(1, min(actors * 4, len(rows) // max(size, 1)))
    per = soft.resources_per_actor
    request = ray_resources(per)

    def go() -> tuple[pa.Table, str]:
        dataset = ray.data.from_arrow(rows).repartition(nblocks)
        outputs = dataset.map_batches(
            predictor, batch_size=size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"storage": setup.store.uri,
                                   "model_rel": f"teachers/{MEMBER.name}/model",
                                   "precision": soft.precision,
                                   "threads": max(1, round(per.cpu)), "request": request},
            **task_options(request))
        table = pa.concat_tables(ray.get(outputs.to_arrow_refs()))
        return table, outputs.stats()

    (table, stats), timing = timed(go)
    return Measurement(timing, len(table), 0, table_outputs(table),
                       extra={"blocks": nblocks, "batch": size}), stats


ACTOR_IMPORTS = "torch, ray.data, mtkd.soft.predictor"
"""What an inference actor imports."""


def actor_load_seconds(setup: Setup) -> float:
    """One MemberPredictor constructed in this process: model download from storage + load."""
    _, timing = timed(lambda: soft_stage.MemberPredictor(
        setup.store.uri, f"teachers/{MEMBER.name}/model", setup.args.precision, 1,
        ray_resources(Resources(cpu=1))))
    set_threads(setup.args.threads)
    return timing.wall


def investigate(setup: Setup, soft_median: float, best_median: float) -> None:
    args = setup.args
    print("\n### Investigation: where the actor pool loses against one process")
    wait_for_quiet(args.max_busy, args.quiet_timeout)
    single = local_variant(setup, precision=args.precision, sort=True, pad_to_max=False,
                           batch={"rotten_tomatoes": args.best_batch_rt,
                                  "boolq": args.best_batch_boolq}, threads=1)()
    print(f"best loop with ONE thread: {single.examples_per_s:.1f} ex/s (per task s: "
          + ", ".join(f"{t} {s:.1f}" for t, s in single.per_task.items())
          + f"); two such actors at most {2 * single.examples_per_s:.1f} ex/s; best with 2 "
          f"threads {best_median:.1f} ex/s; soft {soft_median:.1f} ex/s")
    alone = median(import_seconds(ACTOR_IMPORTS, 1)[0] for _ in range(3))
    two = median(max(import_seconds(ACTOR_IMPORTS, 2)) for _ in range(3))
    print(f"one actor's model load (download from storage + load_mtdnn), in this process: "
          f"{actor_load_seconds(setup):.2f} s; a fresh worker's imports ({ACTOR_IMPORTS}): "
          f"alone {alone:.1f} s, two at once {two:.1f} s")
    soft = setup.config.soft_targets
    cases: list[tuple[str, dict[str, Any]]] = [
        ("start-up only (one batch per task)", {"limit": soft.batch_size}),
        ("as mtkd (replica)", {}),
        ("blocks x4", {"blocks": 32}),
        ("blocks = rows / batch", {"blocks": max(1, setup.examples // soft.batch_size)}),
        ("longest rows first", {"longest_first": True}),
        ("longest first + blocks = rows / batch",
         {"longest_first": True, "blocks": max(1, setup.examples // soft.batch_size)}),
        ("batch 64 + token budget 16x256 sub-batches",
         {"batch_size": 64, "predictor": TokenBudgetPredictor}),
    ]
    rows = []
    for name, kwargs in cases:
        wait_for_quiet(args.max_busy, args.quiet_timeout)
        m, stats = replica(setup, **kwargs)
        rows.append([name, m.extra["blocks"], m.extra["batch"], m.examples,
                     f"{m.timing.wall:.1f}", f"{m.examples_per_s:.1f}"])
        print(f"  {name}: {m.timing.wall:.1f} s, {m.examples_per_s:.1f} ex/s", flush=True)
        if args.stats and name == "as mtkd (replica)":
            print("\nRay Data stats of the replica:\n" + stats + "\n")
    print(markdown_table(["replica of infer_member", "blocks", "batch", "examples", "wall s",
                          "ex/s"], rows))


def quiet_ray_data() -> None:
    """No progress lines from Ray Data every few seconds (they drown the results)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--examples", type=int, default=2000, help="train examples per task")
    parser.add_argument("--batch-size", type=int, default=32, help="soft_targets.batch_size")
    parser.add_argument("--best-batch-rt", type=int, default=64)
    parser.add_argument("--best-batch-boolq", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=2, help="ray.num_cpus")
    parser.add_argument("--cpu-per-actor", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    add_matmul_options(parser)
    add_quiet_options(parser, max_busy=0.15, quiet_timeout=120.0)
    parser.add_argument("--investigate", action="store_true")
    parser.add_argument("--stats", action="store_true",
                        help="with --investigate: print Ray Data's stats of the replica")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 200 examples per task, 1 round, short matmuls")
    add_precision_option(parser, "the soft stage and the best single-process loop")
    args = parse(parser, argv)
    if args.quick:
        args.examples, args.rounds = min(args.examples, 200), 1
        args.matmul_n, args.matmul_seconds = 1024, 0.5
        args.retries, args.quiet_timeout = 0, 20.0
    return args


def best_batches(args: argparse.Namespace) -> dict[str, int]:
    return {"rotten_tomatoes": args.best_batch_rt, "boolq": args.best_batch_boolq}


def describe(setup: Setup) -> None:
    """Data, model, FLOPs and each variant's padding, printed."""
    args = setup.args
    sizes = ", ".join(f"{t} {len(d['uid'])} (max_length {MAX_LENGTHS[t]}, mean "
                      f"{np.mean(d['length']):.0f} tokens)" for t, d in setup.data.items())
    print(f"data: {sizes}; {setup.examples} examples, {setup.tokens:,} real tokens")
    print(f"model: all-MiniLM-L6-v2 MT-DNN, {setup.layers} layers, hidden {setup.hidden}, "
          f"N = {setup.non_embedding:,} non-embedding encoder parameters; useful FLOPs "
          f"2·N·Σℓ + 4·L·h·Σℓ² = {setup.useful_flops / 1e9:.0f} GFLOP")
    for name, (b, srt, pad) in {"naive": ({t: 32 for t in MAX_LENGTHS}, False, True),
                                "best": (best_batches(args), True, False),
                                "soft (rows of batch_size, sorted)":
                                ({t: args.batch_size for t in MAX_LENGTHS}, True,
                                 False)}.items():
        padded = sum(setup.padded_tokens(t, b[t], srt, pad) for t in MAX_LENGTHS)
        print(f"  padding of {name}: {1 - setup.tokens / padded:.1%} of computed positions")


def measure(setup: Setup) -> dict[str, list[Any]]:
    """soft, best, naive and the ceilings, rounds interleaved."""
    args = setup.args
    variants: dict[str, Callable[[], Any]] = {
        "soft": soft_variant(setup),
        "best": local_variant(setup, precision=args.precision, sort=True, pad_to_max=False,
                              batch=best_batches(args), threads=args.threads),
        "naive": local_variant(setup, precision="fp32", sort=False, pad_to_max=True,
                               batch={t: 32 for t in MAX_LENGTHS}, threads=args.threads),
        "matmul_fp32": matmul_variant(args, torch.float32),
    }
    if args.precision == "bf16":
        variants["matmul_bf16"] = matmul_variant(args, torch.bfloat16)

    def progress(r: int, name: str, result: Any, ok: bool) -> None:
        share = result.cpu_share()
        what = (f"{result.gflops:7.1f} GFLOP/s" if isinstance(result, Ceiling)
                else f"{result.examples_per_s:7.1f} ex/s in {result.timing.wall:6.1f} s")
        note = "" if ok else "  <- contended (cpu share too low), measuring again"
        print(f"  round {r + 1} {name:<12} {what}  cpu share {share:.2f}{note}", flush=True)

    print(f"\nmeasuring {len(variants)} variants × {args.rounds} rounds, interleaved:")
    return interleave(variants, args.rounds, progress=progress, before=quiet_wait(args)[0],
                      quality=lambda m: m.cpu_share(), good_enough=args.min_cpu_share,
                      retries=args.retries)


def report(setup: Setup, results: dict[str, list[Any]]) -> dict[str, float]:
    """The results table and the ceilings, printed; the RESULT figures."""
    args = setup.args
    mm32 = median(c.gflops for c in results["matmul_fp32"])
    # soft and best run in args.precision: their MFU is against that dtype's ceiling.
    mm16 = (median(c.gflops for c in results["matmul_bf16"])
            if args.precision == "bf16" else mm32)
    flops = setup.useful_flops
    rows = []
    for name in ("soft", "best", "naive"):
        ms = results[name]
        gflops = flops / median(m.timing.wall for m in ms) / 1e9
        per_task = ", ".join(f"{t} {median(m.per_task[t] for m in ms):.1f}"
                             for t in MAX_LENGTHS) if ms[0].per_task else "-"
        rows.append([name, f"{median(rate(results, name)):.1f}",
                     f"{median(m.timing.wall for m in ms):.1f}", per_task, f"{gflops:.1f}",
                     f"{gflops / (mm32 if name == 'naive' else mm16):.1%}",
                     f"{median(m.cpu_share() for m in ms):.2f}" if ms[0].threads else "-"])
    print("\n### Results (medians over rounds)\n")
    print(markdown_table(["variant", "ex/s", "wall s", "s per task", "useful GFLOP/s",
                          "MFU (same-dtype matmul)", "cpu share"], rows))
    print(f"\nmatmul {args.matmul_n}² ceiling (2 threads): fp32 {mm32:.1f} GFLOP/s, "
          + (f"bf16 {mm16:.1f} GFLOP/s" if args.precision == "bf16" else
             "bf16 not timed (soft and best run in fp32 here)"))
    reference = results["naive"][0].outputs
    diff_soft = max_prob_diff(results["soft"][0].outputs, reference)
    diff_best = max_prob_diff(results["best"][0].outputs, reference)
    print(f"max |p_{args.precision} - p_fp32| over {len(reference)} examples: soft stage "
          f"{diff_soft:.2e}, best loop {diff_best:.2e} (fresh heads: probabilities near 0.5)")
    return {"soft_vs_naive": paired_ratio(rate(results, "soft"), rate(results, "naive")),
            "soft_vs_best": paired_ratio(rate(results, "soft"), rate(results, "best")),
            "soft_mfu": flops / median(m.timing.wall for m in results["soft"]) / (mm16 * 1e9),
            "diff_soft": diff_soft}


def rate(results: dict[str, list[Any]], name: str) -> list[float]:
    return [m.examples_per_s for m in results[name]]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    private_ray()
    begin("soft_targets.py", argv, threads=args.threads)
    began = time.perf_counter()
    with scratch("mtkd-bench-soft-", args.keep) as root:
        setup = load_setup(args, root)
        describe(setup)
        _, t = timed(lambda: ensure_ray(setup.config.ray))
        quiet_ray_data()
        print(f"Ray started in {t.wall:.1f} s (excluded); soft stage: {args.precision}, "
              f"{args.cpu_per_actor:g} CPU per actor, batch_size {args.batch_size}")
        results = measure(setup)
        figures = report(setup, results)
        if args.investigate:
            investigate(setup, median(rate(results, "soft")), median(rate(results, "best")))
        print(f"\ntotal bench time {time.perf_counter() - began:.0f} s")
        result("soft_vs_naive", figures["soft_vs_naive"], "target >= 3.5")
        result("soft_vs_best_single", figures["soft_vs_best"], "target >= 0.9")
        result("soft_mfu", figures["soft_mfu"], "target >= 0.5")
        result(f"soft_{args.precision}_vs_fp32_max_prob_diff", f"{figures['diff_soft']:.2e}",
               "target <= 0.02")
    return 0


if __name__ == "__main__":
    sys.exit(main())
