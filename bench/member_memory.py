"""Peak memory and training throughput of one teacher member, per encoder and precision.

What ``teachers.resources_per_member.memory_gb`` should say for a member of each bundled
encoder: every variant runs in a fresh Python process (so its peak resident set is its
own), builds mtkd's MT-DNN on the encoder (all layers, dropout 0.1, one pair-classification
head) with ``build_mtdnn``, wraps it in ``TorchBackend`` (AdamW, schedule, autocast) and
trains it on real data: boolq question + passage pairs, tokenized with the encoder's own
tokenizer at max_length 128 (nearly every pair fills all 128 tokens, so this is the
worst case of that setting), batch 32. It warms up ``--warmup`` steps, times ``--steps``
and reports training examples/s and the process's peak RSS (``ru_maxrss``), also the RSS
before the model was built (Python, torch, the data) so the model's own share is visible.

Precisions: ``fp32`` and ``auto`` (the precision rule's choice on this CPU: bf16 where it
is native, fp32 where it is emulated; the ``auto`` row then repeats fp32 and is not timed
twice).

    .venv/bin/python bench/member_memory.py [--steps 4] [--warmup 1] [--encoders A,B]

Prints a Markdown table and ``RESULT`` lines: ``<encoder>_peak_gib_<precision>`` and
``mpnet_vs_minilm_train_time`` (MiniLM ex/s over mpnet ex/s, fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine, markdown_table, result  # and the benchmarks' environment

ENCODERS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2")
MAX_LENGTH = 128
BATCH = 32
GIB = 2**30


def _rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(encoder: str, precision: str, steps: int, warmup: int) -> dict:
    """Train one member-shaped MT-DNN for ``warmup + steps`` steps in this process; its
    examples/s over the timed steps and the process's peak RSS in bytes."""
    import datasets
    import torch

    from mtkd.config import TrainingConfig
    from mtkd.data.collate import collate
    from mtkd.data.tokenize import load_tokenizer, tokenize_split
    from mtkd.losses import hard_loss
    from mtkd.model.mtdnn import build_mtdnn, num_parameters
    from mtkd.pretrained import resolve_encoder_dir
    from mtkd.tasks.bundled import bundled_task
    from mtkd.training.backend import TorchBackend

    torch.set_num_threads(2)
    datasets.disable_progress_bars()
    encoder_dir = resolve_encoder_dir(f"bundled:{encoder}")
    task = bundled_task("boolq")
    spec = task.spec(max_length=MAX_LENGTH, teacher=True)
    rows = task.load()["train"].select(range(BATCH * (steps + warmup)))
    tokenizer = load_tokenizer(encoder_dir)
    table = tokenize_split(rows, spec, tokenizer)
    pad_id = int(tokenizer.pad_token_id or 0)
    batches = [collate([table[i] for i in range(b * BATCH, (b + 1) * BATCH)], pad_id)
               for b in range(steps + warmup)]
    before = _rss_bytes()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_mtdnn(encoder_dir, [spec], dropout=0.1, seed=0)
    model.train()
    config = TrainingConfig(precision=precision, batch_size=BATCH)
    backend = TorchBackend(model, config, total_steps=steps + warmup)
    tokens = 0
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
        loss = hard_loss(spec, backend.forward(spec.name, inputs), batch["labels"])
        backend.backward(loss)
        backend.step()
        if i >= warmup:
            tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    return {"encoder": encoder, "precision": backend.precision, "requested": precision,
            "parameters": num_parameters(model), "examples_per_s": steps * BATCH / seconds,
            "tokens_per_example": tokens / (steps * BATCH),
            "rss_before_model": before,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_child(encoder: str, precision: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", encoder, precision,
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--child", nargs=2, metavar=("ENCODER", "PRECISION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.steps, args.warmup)))
        return 0
    from mtkd.precision import resolve_here

    auto = resolve_here("auto", "cpu").precision
    print(describe_machine())
    print(f"auto resolves to {auto} on this CPU")
    rows, results = [], {}
    for encoder in args.encoders.split(","):
        for precision in ("fp32", "auto"):
            if precision == "auto" and auto == "fp32":
                results[(encoder, "auto")] = results[(encoder, "fp32")]
                continue
            m = results[(encoder, precision)] = run_child(encoder, precision, args)
            rows.append([encoder, f"{precision} ({m['precision']})",
                         f"{m['parameters'] / 1e6:.1f}M", f"{m['examples_per_s']:.2f}",
                         f"{m['tokens_per_example']:.0f}", f"{m['rss_before_model'] / GIB:.2f}",
                         f"{m['peak_rss'] / GIB:.2f}"])
            print(f"{encoder} {precision}: {json.dumps(m)}", flush=True)
    print(markdown_table(["encoder", "precision", "parameters", "train ex/s", "tokens/ex",
                          "RSS before model GiB", "peak RSS GiB"], rows))
    for (encoder, precision), m in results.items():
        short = "mpnet" if "mpnet" in encoder else "minilm"
        result(f"{short}_peak_gib_{precision}", m["peak_rss"] / GIB, digits=2)
    names = args.encoders.split(",")
    if len(names) == 2:
        ratio = results[(names[0], "fp32")]["examples_per_s"] / results[(names[1], "fp32")][
            "examples_per_s"]
        result("mpnet_vs_minilm_train_time", ratio, digits=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
