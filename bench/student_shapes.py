"""Student shapes and representation distillation, side by side (issue 18).

Real data: the first ``--examples`` rows of the bundled rotten_tomatoes train split,
tokenized with the bundled all-MiniLM-L6-v2 tokenizer (max length 64). Every variant runs
in a fresh child process (so its peak memory is its own), one after another, round by
round (order reversed on odd rounds); ratios are medians of per-round ratios. Precision is
what ``auto`` resolves to on this CPU (bf16 where native, else fp32); ``--threads`` torch
threads (default 1) with ``OMP_WAIT_POLICY=PASSIVE``. The figures are ratios of this
process's CPU seconds for the same work (``time.process_time``: on a shared 2-core
machine other processes stretch wall time 5-20x, CPU time much less); wall-clock ratios
are printed beside them.

* **inference** (``narrow_student_speedup``): mtkd's length-sorted prediction
  (``predict_outputs``, batch 64) with the 6 x 384 student (all-MiniLM-L6-v2) and the
  6 x 256 student cut from it (``student.hidden_size: 256``: 8 heads, intermediate 1024,
  initialised by truncated SVD, mtkd/model/shape.py); examples per second.
* **training step** (``hidden_distill_step_overhead``): the student step the student worker
  runs (``TorchBackend``: AdamW, autocast; the loss as ``TrainingLoop`` computes it) with
  the default student (the first 3 of MiniLM's 6 layers, batch 32, length-bucketed
  batches) output-only, against the same step with representation distillation
  (``student.kd.hidden_weight: 1``) from a 6-layer, 384-wide representation teacher
  (all-MiniLM-L6-v2 itself, standing in for a member: same shape) run frozen at the same
  precision; ``--narrow`` adds the 6 x 256 student distilled through a learned
  projection. Seconds per step after ``--warmup`` steps; the memory ratio is the ratio of
  the children's peak resident memory (ru_maxrss).

    python bench/student_shapes.py [--rounds 3] [--examples 1024] [--steps 20] [--narrow]
                                   [--threads 1]

Ends with ``RESULT narrow_student_speedup`` (6x256 / 6x384 inference ex/s; goal >= 1.8),
``RESULT hidden_distill_step_overhead`` (step seconds with / without) and ``RESULT
hidden_distill_memory_ratio`` (peak memory with / without).
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
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from common import describe_machine, markdown_table, paired_ratio  # noqa: E402

ENCODER = "bundled:all-MiniLM-L6-v2"
MAX_LENGTH = 64
VARIANTS = {  # name: (kind, layers, hidden, representation distillation)
    "infer_6x384": ("infer", 6, None, False), "infer_6x256": ("infer", 6, 256, False),
    "step_3x384": ("step", 3, None, False), "step_3x384_hidden": ("step", 3, None, True),
    "step_6x256_hidden": ("step", 6, 256, True),
}


def load_data(examples: int) -> tuple[object, object]:
    """(spec, tokenized train rows) of rotten_tomatoes' first ``examples`` rows."""
    import datasets

    from mtkd.data.tokenize import load_tokenizer, tokenize_split
    from mtkd.pretrained import resolve_encoder_dir
    from mtkd.tasks.bundled import bundled_task

    datasets.disable_progress_bars()
    task = bundled_task("rotten_tomatoes")
    spec = task.spec(max_length=MAX_LENGTH, teacher=False)
    split = task.load()["train"]
    split = split.select(range(min(examples, len(split))))
    return spec, tokenize_split(split, spec, load_tokenizer(resolve_encoder_dir(ENCODER)))


def child(name: str, args: argparse.Namespace) -> dict:
    """One variant in this (fresh) process: its rate and peak memory."""
    import torch
    from common import bench_precision, set_threads

    from mtkd.model.mtdnn import build_mtdnn
    from mtkd.model.shape import EncoderShape
    from mtkd.pretrained import resolve_encoder_dir

    set_threads(args.threads)
    kind, layers, hidden, distil = VARIANTS[name]
    precision = bench_precision()
    spec, rows = load_data(args.examples)
    folder = resolve_encoder_dir(ENCODER)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_mtdnn(folder, [spec], shape=EncoderShape(layers, "first", hidden))
    if kind == "infer":
        from mtkd.training.evaluate import predict_outputs

        predict_outputs(model, spec, rows.select(range(128)), precision=precision)  # warm
        wall, cpu = time.perf_counter(), time.process_time()
        predict_outputs(model, spec, rows, batch_size=64, precision=precision)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates = {"rate": len(rows) / cpu, "wall_rate": len(rows) / wall}
    else:
        rates = _step_rate(model, folder, spec, rows, distil, precision, args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    return {**rates, "peak_mib": peak, "precision": precision,
            "params": sum(p.numel() for p in model.parameters())}


def _step_rate(model: object, folder: Path, spec: object, rows: object, distil: bool,
               precision: str, args: argparse.Namespace) -> dict[str, float]:
    """CPU and wall seconds per training step (forward, loss, backward, AdamW) after the
    warm-up: {"rate": CPU s, "wall_rate": wall s}."""

    from mtkd.config import KDConfig, SamplingConfig, TrainingConfig
    from mtkd.data.sampler import MultiTaskBatchSampler
    from mtkd.losses import WithAuxLoss, task_loss
    from mtkd.model.infer import model_inputs
    from mtkd.model.mtdnn import build_mtdnn
    from mtkd.student.hidden import RepresentationDistillation
    from mtkd.training.backend import TorchBackend
    from mtkd.training.data import CollateFn, MultiTaskRows

    if distil:
        teacher = build_mtdnn(folder, [spec])  # a 6 x 384 member's shape
        model = RepresentationDistillation(model, teacher, 1.0, precision=precision)
    config = TrainingConfig(batch_size=32, learning_rate=1e-5, precision=precision)
    backend = TorchBackend(model, config, 10**6)
    sampler = MultiTaskBatchSampler.from_config({spec.name: rows["length"]}, 32,
                                                SamplingConfig(), seed=0)
    loader_rows, collate = MultiTaskRows({spec.name: rows}), CollateFn({spec.name: spec}, 0)
    batches = sampler.batches(0)[: args.warmup + args.steps]
    cpu, wall = [], []
    for i, b in enumerate(batches):
        batch = collate([loader_rows[(b.task, j)] for j in b.indices])
        start, start_cpu = time.perf_counter(), time.process_time()
        out = backend.forward(spec.name, model_inputs(batch, backend.device))
        aux = None
        if isinstance(out, WithAuxLoss):
            out, aux = out
        loss = task_loss(spec, out, batch["labels"], None, KDConfig()).total
        backend.backward(loss + aux if aux is not None else loss)
        backend.step()
        if i >= args.warmup:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {"rate": sum(cpu) / len(cpu), "wall_rate": sum(wall) / len(wall)}


def run_child(name: str, args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, "--examples",
                          str(args.examples), "--steps", str(args.steps), "--warmup",
                          str(args.warmup), "--threads", str(args.threads)],
                         capture_output=True, text=True, timeout=900, check=True, cwd=ROOT,
                         env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--narrow", action="store_true", help="also time step_6x256_hidden")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0
    print("# bench/student_shapes.py " + (" ".join(sys.argv[1:]) or "(defaults)"))
    print(f"machine: {describe_machine()}")
    names = [n for n in VARIANTS if args.narrow or n != "step_6x256_hidden"]
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(run_child(name, args))
            print(f"round {r} {name}: {results[name][-1]}", flush=True)
    summarise(results, names, args.narrow)
    return 0


def summarise(results: dict[str, list[dict]], names: list[str], narrow: bool) -> None:
    """The table of every round, the wall-clock ratios and the RESULT lines."""
    rows = [[n, VARIANTS[n][0], results[n][0]["precision"], f"{results[n][0]['params']:,}",
             " ".join(f"{x['rate']:.4g}" for x in results[n]),
             " ".join(f"{x['wall_rate']:.4g}" for x in results[n]),
             f"{max(x['peak_mib'] for x in results[n]):.0f}"] for n in names]
    print("\nrate: inference ex per CPU second (wall: per second), or CPU (wall) seconds "
          "per training step\n")
    print(markdown_table(["variant", "kind", "precision", "parameters", "rate per round",
                          "wall rate per round", "peak MiB"], rows))

    def ratio(a: str, b: str, key: str = "rate") -> float:
        return paired_ratio([x[key] for x in results[a]], [x[key] for x in results[b]])

    print(f"wall clock: narrow {ratio('infer_6x256', 'infer_6x384', 'wall_rate'):.3f}, "
          f"step {ratio('step_3x384_hidden', 'step_3x384', 'wall_rate'):.3f}")
    if narrow:
        print(f"narrow 6x256 distilled step / 3x384 output-only step: "
              f"{ratio('step_6x256_hidden', 'step_3x384'):.3f}")
    print(f"RESULT narrow_student_speedup {ratio('infer_6x256', 'infer_6x384'):.3f}")
    print(f"RESULT hidden_distill_step_overhead {ratio('step_3x384_hidden', 'step_3x384'):.3f}")
    print(f"RESULT hidden_distill_memory_ratio "
          f"{ratio('step_3x384_hidden', 'step_3x384', 'peak_mib'):.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
