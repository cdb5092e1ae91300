"""Training-step throughput of mtkd's loop against a minimal PyTorch loop, fp32 and bf16.

Real data: the first ``--examples`` rows of the bundled rotten_tomatoes train split and the
first ``--trec-examples`` of trec (multi-task, one task per batch), tokenized with the
bundled all-MiniLM-L6-v2 tokenizer (max_length 128). The model is mtkd's MT-DNN on that
encoder (first ``--layers`` layers), dropout 0.1, in train mode. Variants, measured side by
side in one run, interleaved round by round (medians over ``--rounds``):

* ``mtkd_fp32``: ``TrainingLoop`` + ``TorchBackend`` (no dev evaluation, no keep-best), fp32;
* ``minimal_fp32``: a hand-written loop over a fresh copy of the same model (same init),
  the same batches (the same ``MultiTaskBatchSampler`` epoch, collated beforehand with
  ``mtkd.data.collate.collate``), the same AdamW (groups, ``fused=True`` as
  ``build_adamw``) and linear schedule: forward →
  cross-entropy → backward → clip → step → zero_grad, nothing else;
* ``mtkd_bf16``: the mtkd loop under bf16 autocast;
* the fp32 and bf16 matmul ceilings (``bench/common.py``);
* levers (unless ``--no-levers``), on the minimal loop against its own baseline of the same
  precision (``minimal_bf16`` is added for that): AdamW with ``foreach=True`` instead of
  mtkd's ``fused=True`` (the price of the old optimizer path) and frozen word embeddings.
  ``--all-levers`` adds a few more (see ``LEVERS``), among them batch 64 (the same
  examples: pairs of the batch-32 window's batches of one task and similar length merged).

Every variant warms up ``--warmup`` steps untimed, then times ``--steps`` steps: the same
batches (epoch 0, positions warmup..warmup+steps) for every batch-32 variant. Useful FLOPs
per step: ``6·N·Σℓᵢ + 12·L·h·Σℓᵢ²`` (N non-embedding encoder parameters, ℓᵢ real tokens of
example i, L layers, h hidden size): matmuls of the layers, forward and backward, and the
attention scores and weighted sums over real tokens only; padding, embeddings, heads, norms
and the optimizer count as overhead. MFU = useful FLOP/s / matmul FLOP/s of the same dtype.

    .venv/bin/python bench/train_step.py [--examples N] [--batch-size 32] [--layers 6]
                                         [--quick] [--no-levers] [--profile]

Ends with three ``RESULT`` lines (medians of per-round ratios).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from common import (
    Timing,
    add_matmul_options,
    add_quiet_options,
    begin,
    bench_parser,
    bf16_native,
    emulated_bf16_note,
    interleave,
    markdown_table,
    matmul_variant,
    median,
    paired_ratio,
    parse,
    quiet_wait,
    result,
    timed,
    wait_for_quiet,
)

from mtkd.config import SamplingConfig, TrainingConfig
from mtkd.data.collate import collate
from mtkd.data.sampler import Batch, MultiTaskBatchSampler
from mtkd.data.tokenize import load_tokenizer, tokenize_split
from mtkd.model.mtdnn import MTDNN, build_mtdnn, non_embedding_parameters
from mtkd.precision import autocast
from mtkd.pretrained import resolve_encoder_dir
from mtkd.tasks.bundled import bundled_task
from mtkd.tasks.spec import TaskSpec
from mtkd.training.backend import TorchBackend, warmup_steps
from mtkd.training.data import CollateFn, MultiTaskRows, epoch_loader
from mtkd.training.loop import LoopData, LoopState, TrainingLoop, total_optimizer_steps

if TYPE_CHECKING:
    import datasets

ENCODER = "bundled:all-MiniLM-L6-v2"
MAX_LENGTH = 128
RUN_EPOCHS = 100.0
"""The schedule's length: long enough that no round reaches the end of the linear decay."""


# ------------------------------------------------------------------------------ data


@dataclass
class Setup:
    """Everything the variants share: tables, sampler, the timed window, FLOP counts."""

    args: argparse.Namespace
    specs: dict[str, TaskSpec]
    train: dict[str, datasets.Dataset]
    pad_id: int
    template: MTDNN
    sampler: MultiTaskBatchSampler
    window: list[Batch]
    """Warm-up batches then timed batches: positions 0 .. warmup+steps of the run."""
    non_embedding: int
    layers: int
    hidden: int
    lengths: dict[str, list[int]] = field(default_factory=dict)

    @property
    def warmup(self) -> int:
        return self.args.warmup

    @property
    def timed_batches(self) -> list[Batch]:
        return self.window[self.warmup:]

    def tokens(self, batches: Sequence[Batch]) -> int:
        return sum(self.lengths[b.task][i] for b in batches for i in b.indices)

    def useful_flops(self, batches: Sequence[Batch]) -> float:
        """6·N·Σℓ + 12·L·h·Σℓ² over the examples of ``batches``."""
        linear = attention = 0
        for b in batches:
            lens = [self.lengths[b.task][i] for i in b.indices]
            linear += sum(lens)
            attention += sum(n * n for n in lens)
        return 6.0 * self.non_embedding * linear + 12.0 * self.layers * self.hidden * attention

    def padded_tokens(self, batches: Sequence[Batch]) -> int:
        return sum(len(b.indices) * max(self.lengths[b.task][i] for i in b.indices)
                   for b in batches)

    def config(self, precision: str) -> TrainingConfig:
        return TrainingConfig(epochs=RUN_EPOCHS, batch_size=self.args.batch_size,
                              precision=precision)

    @property
    def total_steps(self) -> int:
        return total_optimizer_steps(self.config("fp32"), len(self.sampler))


def load_setup(args: argparse.Namespace) -> Setup:
    encoder_dir = resolve_encoder_dir(ENCODER)
    tokenizer = load_tokenizer(encoder_dir)
    wanted = {"rotten_tomatoes": args.examples, "trec": args.trec_examples}
    specs, train = {}, {}
    for name, count in wanted.items():
        if count <= 0:
            continue
        task = bundled_task(name)
        spec = task.spec(max_length=MAX_LENGTH, teacher=False)
        split = task.load()["train"]
        split = split.select(range(min(count, len(split))))
        specs[name], train[name] = spec, tokenize_split(split, spec, tokenizer)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        template = build_mtdnn(encoder_dir, list(specs.values()), num_layers=args.layers,
                               dropout=0.1, seed=0)
    template.train()
    heads = sum(p.numel() for p in template.heads.parameters())
    sampler = MultiTaskBatchSampler.from_config(
        {t: d["length"] for t, d in train.items()}, args.batch_size, SamplingConfig(), seed=0)
    window: list[Batch] = []
    epoch = 0
    while len(window) < args.warmup + args.steps:
        window += sampler.batches(epoch)
        epoch += 1
    cfg = template.encoder.config
    setup = Setup(args, specs, train, int(tokenizer.pad_token_id or 0), template, sampler,
                  window[: args.warmup + args.steps],
                  non_embedding_parameters(template) - heads,
                  int(cfg.num_hidden_layers), int(cfg.hidden_size))
    setup.lengths = {t: list(d["length"]) for t, d in train.items()}
    return setup


def collate_batches(setup: Setup, batches: Sequence[Batch]) -> list[dict[str, Any]]:
    """The batches as the minimal loop sees them: mtkd's ``collate`` of the same rows."""
    columns = {t: {k: d[k] for k in ("uid", "input_ids", "token_type_ids", "label")}
               for t, d in setup.train.items()}
    out = []
    for b in batches:
        cols = columns[b.task]
        rows = [{k: cols[k][i] for k in cols} for i in b.indices]
        batch = collate(rows, setup.pad_id)
        batch["task"] = b.task
        out.append(batch)
    return out


def merge_pairs(setup: Setup, batches: Sequence[Batch]) -> list[Batch]:
    """Batches of twice the size from the same examples: per task, sorted by longest
    example, neighbours merged (an odd one out stays as it is)."""
    out = []
    for task in sorted({b.task for b in batches}):
        own = sorted((b for b in batches if b.task == task),
                     key=lambda b: max(setup.lengths[task][i] for i in b.indices))
        out += [Batch(task, [i for b in own[k:k + 2] for i in b.indices])
                for k in range(0, len(own), 2)]
    return out


# ------------------------------------------------------------------------------ variants


@dataclass
class Measurement:
    timing: Timing
    steps: int
    examples: int
    tokens: int
    flops: float
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase over the timed steps (minimal loop only)."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.timing.wall

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.timing.wall

    @property
    def gflops(self) -> float:
        return self.flops / self.timing.wall / 1e9


def _fresh_model(setup: Setup, freeze_word_embeddings: bool = False,
                 no_dropout: bool = False) -> MTDNN:
    model = copy.deepcopy(setup.template).train()
    if freeze_word_embeddings:
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    if no_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return model


def mtkd_variant(setup: Setup, precision: str) -> Callable[[], Measurement]:
    """mtkd's TrainingLoop + TorchBackend: warm up, then time the next ``steps`` steps."""
    timed_batches = setup.timed_batches
    tokens, examples = setup.tokens(timed_batches), sum(len(b.indices) for b in timed_batches)
    flops = setup.useful_flops(timed_batches)

    def run() -> Measurement:
        config = setup.config(precision)
        backend = TorchBackend(_fresh_model(setup), config, setup.total_steps)
        data = LoopData(setup.specs, setup.train, {})
        loop = TrainingLoop(backend, data, config, sampler=setup.sampler, name=f"mtkd_{precision}",
                            log_every=10**9, keep_best_in_memory=False, pad_id=setup.pad_id)
        assert loop.total_steps == setup.total_steps
        loop.total_steps = setup.warmup
        state = loop.run(LoopState(), seed=0)
        before = state.tokens
        loop.total_steps = setup.warmup + setup.args.steps
        _, timing = timed(lambda: loop.run(state))
        if state.step != loop.total_steps or state.tokens - before != tokens:
            raise RuntimeError(f"mtkd loop ran {state.step} steps / {state.tokens - before} "
                               f"tokens, expected {loop.total_steps} / {tokens}")
        return Measurement(timing, setup.args.steps, examples, tokens, flops)

    return run


def minimal_variant(setup: Setup, precision: str, *, freeze_word_embeddings: bool = False,
                    foreach_adamw: bool = False, merge: bool = False,
                    no_dropout: bool = False) -> Callable[[], Measurement]:
    """The hand-written loop. Levers: ``freeze_word_embeddings``; ``foreach_adamw``
    (``foreach=True`` instead of ``fused=True``); ``merge``: batch 64 from the same
    examples; ``no_dropout``: every dropout p = 0 (prices the dropout masks)."""
    warm, timed_batches = setup.window[: setup.warmup], setup.timed_batches
    if merge:
        warm, timed_batches = merge_pairs(setup, warm), merge_pairs(setup, timed_batches)
    warm_data, timed_data = collate_batches(setup, warm), collate_batches(setup, timed_batches)
    tokens, examples = setup.tokens(timed_batches), sum(len(b.indices) for b in timed_batches)
    flops = setup.useful_flops(timed_batches)
    config = setup.config(precision)
    warmup, total = warmup_steps(config, setup.total_steps), setup.total_steps

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(total - step, 0) / max(total - warmup, 1)

    def run() -> Measurement:
        model = _fresh_model(setup, freeze_word_embeddings, no_dropout)
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                plain = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
                (no_decay if plain else decay).append(p)
        kind = {"foreach": True} if foreach_adamw else {"fused": True}
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=config.learning_rate, **kind)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        phases = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}

        def step(batch: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            with autocast(torch.device("cpu"), precision):
                logits = model(batch["task"], input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"],
                               token_type_ids=batch["token_type_ids"])
            loss = F.cross_entropy(logits.float(), batch["labels"])
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            t3 = time.perf_counter()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            t4 = time.perf_counter()
            for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[key] += dt

        torch.manual_seed(0)
        for batch in warm_data:
            step(batch)
        phases.update(dict.fromkeys(phases, 0.0))

        def timed_steps() -> None:
            for batch in timed_data:
                step(batch)

        _, timing = timed(timed_steps)
        return Measurement(timing, len(timed_data), examples, tokens, flops, dict(phases))

    return run


LEVERS: list[tuple[str, dict[str, bool], str, bool]] = [
    # name, minimal_variant options, description, in the default run
    ("minimal_fp32_frozen_word_emb", {"freeze_word_embeddings": True},
     "word embeddings frozen (no dense 11.7M gradient, clip and AdamW update)", True),
    ("minimal_fp32_foreach_adamw", {"foreach_adamw": True},
     "AdamW(foreach=True), not fused (mtkd's optimizer before 2026-11-21)", True),
    ("minimal_fp32_bs64", {"merge": True}, "batch 64 (same examples, pairs merged)", False),
    ("minimal_bf16_frozen_word_emb", {"freeze_word_embeddings": True},
     "word embeddings frozen", True),
    ("minimal_bf16_foreach_adamw", {"foreach_adamw": True}, "AdamW(foreach=True)", True),
    ("minimal_bf16_bs64", {"merge": True}, "batch 64 (same examples, pairs merged)", False),
    ("minimal_bf16_no_dropout", {"no_dropout": True},
     "dropout p=0 (not a clean price of dropout: SDPA then switches from the math path to "
     "the CPU flash-attention kernel, whose backward is slower here)", False),
]
"""Levers tried on the minimal loop, each against the minimal loop of its precision."""


# ------------------------------------------------------------------------------ checks


def data_pipeline_ms(setup: Setup, lazy_columns: bool = False) -> float:
    """ms per batch of mtkd's data path alone (MultiTaskRows → DataLoader → CollateFn plus
    the loop's per-batch bookkeeping: attention_mask.sum, labels.to) over the window.

    ``lazy_columns``: the same with MultiTaskRows' columns as ``datasets``' lazy ``Column``
    objects (``table[name]``, mtkd before 2026-11-21), whose row indexing slices the Arrow
    table: tens of µs per row and column."""
    rows, collate_fn = MultiTaskRows(setup.train), CollateFn(setup.specs, setup.pad_id)
    if lazy_columns:
        rows.columns = {t: {k: setup.train[t][k] for k in cols}
                        for t, cols in rows.columns.items()}
    count = len(setup.window)

    def go() -> None:
        loader = epoch_loader(rows, setup.sampler, collate_fn, 0)
        for _, batch in zip(range(count), loader, strict=False):
            int(batch["attention_mask"].sum())
            batch["labels"].to("cpu", non_blocking=True)

    go()
    _, timing = timed(go)
    return 1000 * timing.wall / count


def profile(setup: Setup, precision: str, steps: int = 6) -> None:
    """torch.profiler of the minimal loop: where a step's time goes, by operator."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps = max(1, min(steps, len(setup.window) - setup.warmup))
    sub = copy.copy(setup)
    sub.args = argparse.Namespace(**{**vars(setup.args), "steps": steps})
    sub.window = setup.window[: setup.warmup + steps]
    run = minimal_variant(sub, precision)
    wait_for_quiet(setup.args.max_busy, setup.args.quiet_timeout)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        result = run()
    print(f"\n### torch.profiler, minimal loop, {precision}, warm-up + {steps} steps "
          f"(self CPU time, top 25; cpu share {result.timing.cpu_share():.2f}, "
          "below ~0.95: contended, shares distorted)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--examples", type=int, default=1200,
                        help="rotten_tomatoes train rows (first N by uid)")
    parser.add_argument("--trec-examples", type=int, default=400,
                        help="trec train rows (0: single task)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per measurement")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    add_matmul_options(parser)
    add_quiet_options(parser, max_busy=0.15, quiet_timeout=120.0)
    parser.add_argument("--no-levers", dest="levers", action="store_false",
                        help="skip the lever variants (fused AdamW, frozen word embeddings)")
    parser.add_argument("--all-levers", action="store_true",
                        help="also fp32 frozen embeddings, batch 64 and bf16 without dropout")
    parser.add_argument("--profile", action="store_true",
                        help="also print a torch.profiler table of the minimal loop, fp32 and bf16")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small data, 1 round, few steps, no levers")
    args = parse(parser, argv)
    if args.quick:
        args.examples, args.trec_examples = min(args.examples, 300), min(args.trec_examples, 100)
        args.warmup, args.steps, args.rounds = 1, 3, 1
        args.levers = args.all_levers = False
        args.matmul_n, args.matmul_seconds = 1024, 0.5
    return args


@dataclass
class Plan:
    """The variants to measure: name → run, and what each is compared with."""

    variants: dict[str, Callable[[], Any]]
    baselines: dict[str, str]
    """mtkd variant → the minimal loop of its precision."""
    levers: dict[str, tuple[str, str]]
    """lever → (its baseline, description)."""
    native: bool
    """bf16 runs in hardware here (else bf16 variants are left out)."""

    def base(self, name: str) -> str:
        return self.levers.get(name, (self.baselines.get(name, ""), ""))[0]


def describe(setup: Setup) -> None:
    """The data, model, timed window and FLOP count, printed."""
    args, timed_batches = setup.args, setup.timed_batches
    padded, real = setup.padded_tokens(timed_batches), setup.tokens(timed_batches)
    sizes = ", ".join(f"{t} {len(d)}" for t, d in setup.train.items())
    print(f"data: {sizes} train rows, max_length {MAX_LENGTH}; batch {args.batch_size}, "
          f"{len(setup.sampler)} batches/epoch (length-bucketed, proportional)")
    print(f"model: MT-DNN on all-MiniLM-L6-v2, {setup.layers} layers, hidden {setup.hidden}, "
          f"N = {setup.non_embedding:,} non-embedding encoder parameters")
    print(f"timed window: {args.steps} steps after {args.warmup} warm-up steps, "
          f"{sum(len(b.indices) for b in timed_batches)} examples, {real} real tokens "
          f"({real / args.steps:.0f}/step), padding {1 - real / padded:.1%}, tasks "
          + ", ".join(f"{t} {sum(b.task == t for b in timed_batches)}" for t in setup.specs))
    print("useful FLOPs = 6·N·Σℓ + 12·L·h·Σℓ² (ℓ: real tokens per example) = "
          f"{setup.useful_flops(timed_batches) / 1e9:.1f} GFLOP over the window")


def plan(setup: Setup) -> Plan:
    """mtkd's loop, the minimal loop and the ceilings; bf16 variants only where bf16 is
    native (emulated, they run 4-65x slower than fp32); the levers asked for."""
    args, native = setup.args, bf16_native()
    if not native:
        print(emulated_bf16_note(), flush=True)
    variants: dict[str, Callable[[], Any]] = {
        "mtkd_fp32": mtkd_variant(setup, "fp32"),
        "minimal_fp32": minimal_variant(setup, "fp32"),
        "matmul_fp32": matmul_variant(args, torch.float32),
    }
    if native:
        variants["mtkd_bf16"] = mtkd_variant(setup, "bf16")
        variants["matmul_bf16"] = matmul_variant(args, torch.bfloat16)
    levers: dict[str, tuple[str, str]] = {}
    baselines = {"mtkd_fp32": "minimal_fp32"}
    if args.levers or args.all_levers:
        if native:
            variants["minimal_bf16"] = minimal_variant(setup, "bf16")
            baselines["mtkd_bf16"] = "minimal_bf16"
        for name, kwargs, text, default in LEVERS:
            if (default or args.all_levers) and (native or "_bf16" not in name):
                precision = name.split("_")[1]
                variants[name] = minimal_variant(setup, precision, **kwargs)
                levers[name] = (f"minimal_{precision}", text)
    return Plan(variants, baselines, levers, native)


def measure(args: argparse.Namespace, the_plan: Plan
            ) -> tuple[dict[str, list[Any]], dict[str, int], list[tuple[float, float]]]:
    """Every variant, rounds interleaved; results, contended attempts per variant, waits."""
    rejected: dict[str, int] = {}

    def progress(r: int, name: str, result: Any, ok: bool) -> None:
        share = result.timing.cpu_share()
        what = (f"{result.tokens_per_s:7.0f} tok/s {result.examples_per_s:6.1f} ex/s"
                if isinstance(result, Measurement) else f"{result.gflops:7.1f} GFLOP/s")
        note = "" if ok else "  <- contended (cpu share too low)"
        if not ok:
            rejected[name] = rejected.get(name, 0) + 1
        print(f"  round {r + 1} {name:<28} {what}  cpu share {share:.2f}{note}", flush=True)

    before, waits = quiet_wait(args)
    print(f"\nmeasuring {len(the_plan.variants)} variants × {args.rounds} rounds, "
          "interleaved:")
    results = interleave(the_plan.variants, args.rounds, progress=progress, before=before,
                         quality=lambda m: m.timing.cpu_share(),
                         good_enough=args.min_cpu_share, retries=args.retries)
    return results, rejected, waits


class Figures:
    """Per-round figures of the results: tokens/s, the ceilings."""

    def __init__(self, results: dict[str, list[Any]], native: bool) -> None:
        self.results = results
        self.per_round_mm32 = [c.gflops for c in results["matmul_fp32"]]
        self.mm32 = median(self.per_round_mm32)
        self.mm16 = median(c.gflops for c in results["matmul_bf16"]) if native else float("nan")

    def tok(self, name: str) -> list[float]:
        return [m.tokens_per_s for m in self.results[name]]

    def ceiling(self, name: str) -> float:
        return self.mm16 if "bf16" in name else self.mm32

    def mfu_fp32(self) -> list[float]:
        return [m.gflops / c for m, c in zip(self.results["mtkd_fp32"], self.per_round_mm32,
                                              strict=True)]


def print_results(args: argparse.Namespace, the_plan: Plan, fig: Figures) -> None:
    """The results table, the ceilings and the minimal loop's phases."""
    rows = []
    for name, ms in fig.results.items():
        if name.startswith("matmul"):
            continue
        step_ms = median(1000 * m.timing.wall / m.steps for m in ms)
        flops = median(m.gflops for m in ms)
        base = the_plan.base(name)
        vs = f"{paired_ratio(fig.tok(name), fig.tok(base)):.3f}" if base else ""
        rows.append([name, f"{median(m.tokens_per_s for m in ms):.0f}",
                     f"{median(m.examples_per_s for m in ms):.1f}", f"{step_ms:.0f}",
                     f"{flops:.1f}", f"{flops / fig.ceiling(name):.1%}", vs,
                     f"{median(m.timing.cpu_share() for m in ms):.2f}"])
    print("\n### Results (medians over rounds)\n")
    print(markdown_table(["variant", "tokens/s", "ex/s", "ms/step", "useful GFLOP/s",
                          "MFU (same-dtype matmul)", "vs its baseline", "cpu share"], rows))
    bf16_text = (f"bf16 {fig.mm16:.1f} GFLOP/s" if the_plan.native
                 else "bf16 emulated, not timed")
    print(f"\nmatmul {args.matmul_n}² ceiling: fp32 {fig.mm32:.1f} GFLOP/s, {bf16_text} "
          f"(per round fp32 {', '.join(f'{c:.0f}' for c in fig.per_round_mm32)}; bf16 "
          f"{', '.join(f'{c.gflops:.0f}' for c in fig.results.get('matmul_bf16', []))})")
    phase_rows = []
    for name, ms in fig.results.items():
        if not name.startswith("minimal"):
            continue
        step = median(m.timing.wall / m.steps for m in ms)
        cells = [name]
        for key in ("forward", "backward", "clip", "optimizer"):
            share = median(m.phases[key] / m.timing.wall for m in ms)
            cells.append(f"{1000 * share * step:.0f} ({share:.0%})")
        phase_rows.append(cells)
    print("\n### Minimal loop: ms/step by phase (share of the step)\n")
    print(markdown_table(["variant", "forward+loss", "backward", "clip", "AdamW+sched+zero"],
                         phase_rows))
    if the_plan.levers:
        print("\nlevers: " + "; ".join(f"{n}: {text}"
                                       for n, (_, text) in the_plan.levers.items()))


def print_checks(args: argparse.Namespace, the_plan: Plan, fig: Figures,
                 pipeline: tuple[float, float], rejected: dict[str, int]) -> None:
    """The data path's share, contention, per-round ratios, bf16 / fp32 on the minimal loop."""
    results, tok = fig.results, fig.tok
    fp32_step_ms = median(1000 * m.timing.wall / m.steps for m in results["mtkd_fp32"])
    print(f"\nmtkd data path alone (MultiTaskRows → DataLoader → CollateFn + bookkeeping): "
          f"{pipeline[0]:.2f} ms/batch = {pipeline[0] / fp32_step_ms:.2%} of an fp32 step; "
          f"with datasets' lazy Column objects instead (mtkd before 2026-11-21) "
          f"{pipeline[1]:.2f} ms/batch")
    low = {n: min(m.timing.cpu_share() for m in ms) for n, ms in results.items()}
    low = {n: x for n, x in low.items() if x < args.min_cpu_share}
    if rejected or low:
        print(f"\ncontention: {sum(rejected.values())} contended attempt(s) "
              f"({', '.join(f'{n} ×{k}' for n, k in rejected.items()) or 'none'}); kept "
              f"below cpu share {args.min_cpu_share} after {args.retries} retries: "
              f"{', '.join(f'{n} ({x:.2f})' for n, x in low.items()) or 'none'}")

    def ratios(a: str, b: str) -> str:
        return ", ".join(f"{x / y:.3f}" for x, y in zip(tok(a), tok(b), strict=True))

    print(f"\nper-round ratios: train_vs_minimal {ratios('mtkd_fp32', 'minimal_fp32')}; "
          f"bf16_vs_fp32 {ratios('mtkd_bf16', 'mtkd_fp32') if the_plan.native else 'emulated'}"
          f"; mfu_fp32 {', '.join(f'{x:.3f}' for x in fig.mfu_fp32())}")
    cross = [("fused AdamW", "minimal_bf16", "minimal_fp32"),
             ("foreach AdamW", "minimal_bf16_foreach_adamw", "minimal_fp32_foreach_adamw"),
             ("fused AdamW + frozen word embeddings", "minimal_bf16_frozen_word_emb",
              "minimal_fp32_frozen_word_emb")]
    cross = [(text, a, b) for text, a, b in cross if a in results and b in results]
    if cross:
        print("bf16 / fp32 on the minimal loop: " + "; ".join(
            f"{text} {paired_ratio(tok(a), tok(b)):.3f}" for text, a, b in cross))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    begin("train_step.py", argv, threads=args.threads)
    started = time.perf_counter()
    setup = load_setup(args)
    describe(setup)
    pipeline = data_pipeline_ms(setup), data_pipeline_ms(setup, lazy_columns=True)
    the_plan = plan(setup)
    results, rejected, waits = measure(args, the_plan)
    fig = Figures(results, the_plan.native)
    print_results(args, the_plan, fig)
    print_checks(args, the_plan, fig, pipeline, rejected)
    if args.profile:
        for precision in ("fp32", "bf16") if the_plan.native else ("fp32",):
            profile(setup, precision)
    waited = sum(w for w, _ in waits)
    print(f"\ntotal {time.perf_counter() - started:.0f} s (of which {waited:.0f} s waiting for "
          f"a quiet machine; others' CPU use before measurements: median "
          f"{median(b for _, b in waits) if waits else 0:.0%}, max "
          f"{max((b for _, b in waits), default=0):.0%}); load avg now {os.getloadavg()[0]:.2f}")
    result("train_vs_minimal", paired_ratio(fig.tok("mtkd_fp32"), fig.tok("minimal_fp32")),
           "target >= 0.95")
    if the_plan.native:
        result("bf16_vs_fp32", paired_ratio(fig.tok("mtkd_bf16"), fig.tok("mtkd_fp32")),
               "target >= 1.5")
    else:
        result("bf16_vs_fp32", "emulated", "bf16 not native on this CPU; not timed; "
               "target >= 1.5 where it is native")
    result("train_mfu_fp32", median(fig.mfu_fp32()), "target >= 0.5")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
