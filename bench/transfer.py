"""Task transfer (issue 18 item 4): a task-agnostic small encoder distilled on source tasks
plus unlabelled transfer text, fine-tuned on held-out target tasks, against the same-shape
truncated pretrained encoder fine-tuned the same way.

XtremeDistilTransformers (Mukherjee, Awadallah, Gao 2021, section 3) distils a large model
into a small one on source tasks and transfers the small encoder to other tasks. Here:

1. **distil** (one mtkd experiment, ``transfer-source``): the bundled all-MiniLM-L6-v2
   teachers on the ``--sources`` tasks; a 3-layer student (its first 3 layers) distilled
   from their soft targets with representation distillation (``student.kd.hidden_weight``)
   on the source tasks plus the bundled ``rotten_tomatoes_plots`` transfer text (the plot
   summaries the rotten_tomatoes task excludes; ``student.kd.transfer_text``);
2. **export** its encoder alone (``mtkd export --encoder-only``, :mod:`mtkd.export_encoder`):
   a plain transformers encoder folder;
3. **fine-tune** on the ``--targets`` tasks (none of them a source), with ``student.distill:
   false`` (the no-KD path: hard labels only, the same trainer, seeds ``--seeds``) twice,
   identical but for the encoder: ``transferred`` (``encoder.path`` = the exported folder)
   and ``truncated`` (``encoder.path`` = all-MiniLM-L6-v2, ``student.num_layers: 3``: the
   first 3 pretrained layers, the same shape).

The figure is the mean over seeds of (transferred - truncated) average target score (GLUE
0-100 scale, mean of each task's metrics), on dev and on test; goal > 0. Each seed's pair is
printed too. Everything goes through mtkd's public API (``mtkd.run``, the records it writes,
:func:`mtkd.export_encoder.export_encoder`).

    python bench/transfer.py [--size quick|medium|full] [--seeds 0 1 2] [--sources ...]
                             [--targets ...] [--storage DIR] [--keep]

Sizes (:data:`SIZES`): ``quick`` (also ``--quick``) is a smoke run of every step (a few
hundred examples, one epoch, one seed, one target: a few minutes on 2 cores); its number
means nothing. ``medium`` (about 40 minutes on 2 cores): two sources of up to 1,500
examples plus all 1,083 plot summaries, four held-out targets of up to 1,000 examples at
128 tokens, three seeds. ``full``: three sources of up to 4,000 examples, three targets of
up to 3,000 at 256 tokens where texts are long, three seeds: hours on a 2-core CPU.

Ends with ``RESULT transfer_gain <test points>`` and ``RESULT transfer_gain_dev <dev
points>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import begin, bench_parser, markdown_table, parse, result, scratch

ENCODER = "bundled:all-MiniLM-L6-v2"
LAYERS = 3


@dataclass(frozen=True)
class Size:
    """One size of the benchmark: tasks, how many examples, epochs, members and seeds."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    source_train: int
    source_dev: int
    target_train: int
    target_dev: int
    long_length: int
    """max_length of the long-text tasks (boolq passages, lp50 news documents); others 64."""
    members: int
    member_epochs: int
    epochs: int
    """Epochs of the distilled student and of each fine-tuning."""
    transfer_examples: int | None
    seeds: tuple[int, ...]


SIZES = {
    "quick": Size(("rotten_tomatoes",), ("sms_spam",), 300, 100, 200, 100, 128, 1, 1, 1, 200,
                  (0,)),
    "medium": Size(("rotten_tomatoes", "vader_movies"), ("trec", "sms_spam", "lp50", "boolq"),
                   1500, 500, 1000, 500, 128, 2, 1, 3, None, (0, 1, 2)),
    "full": Size(("rotten_tomatoes", "trec", "vader_movies"), ("sms_spam", "lp50", "boolq"),
                 4000, 1000, 3000, 1000, 256, 2, 2, 3, None, (0, 1, 2)),
}
LONG = ("boolq", "lp50")


def task_entries(names: Sequence[str], train: int, dev: int, long_length: int
                 ) -> list[dict[str, Any]]:
    return [{"name": n, "max_length": long_length if n in LONG else 64,
             "max_train_examples": train, "max_dev_examples": dev} for n in names]


def source_config(args: argparse.Namespace, storage: Path) -> dict[str, Any]:
    """The distillation experiment: teachers, soft targets, the 3-layer student with
    representation distillation on the sources and the transfer text."""
    size = SIZES[args.size]
    return {
        "name": "transfer-source", "storage_path": str(storage), "seed": 0,
        "encoder": {"path": ENCODER},
        "tasks": task_entries(args.sources, size.source_train, size.source_dev,
                              size.long_length),
        "teachers": {"size": size.members, "max_concurrent": 1,
                     "variation": {"strategy": "grid", "seed": [1, 2]},
                     "training": {"epochs": size.member_epochs, "batch_size": 32,
                                  "learning_rate": 5e-5}},
        "student": {"num_layers": LAYERS, "distill": True, "baseline": False,
                    "kd": {"soft_weight": 0.5, "hidden_weight": 1.0,
                           "transfer_text": {"bundled": "rotten_tomatoes_plots",
                                             "max_length": 128,
                                             "max_examples": size.transfer_examples}},
                    "training": {"epochs": size.epochs, "batch_size": 16,
                                 "learning_rate": 3e-4},
                    "checkpoint_every": 1000, "seeds": [0]},
        "report": {"plot": False, "speed_examples": 32, "bootstrap_samples": 0},
    }


def target_config(args: argparse.Namespace, storage: Path, name: str, encoder: str,
                  layers: int | None) -> dict[str, Any]:
    """Fine-tuning on the targets with hard labels only (student.distill: false), one run
    per seed; only the encoder differs between the two variants."""
    size = SIZES[args.size]
    return {
        "name": name, "storage_path": str(storage), "seed": 0,
        "encoder": {"path": encoder},
        "tasks": task_entries(args.targets, size.target_train, size.target_dev,
                              size.long_length),
        "student": {"num_layers": layers, "distill": False, "baseline": True,
                    "training": {"epochs": size.epochs, "batch_size": 16,
                                 "learning_rate": 1e-4},
                    "checkpoint_every": 1000, "seeds": list(args.seeds)},
        "report": {"plot": False, "speed_examples": 32, "bootstrap_samples": 0},
    }


def scores(storage: Path, name: str, seeds: Sequence[int]) -> dict[int, dict[str, float]]:
    """{seed: {"dev": average, "test": average}} from the runs' records (student.json)."""
    out = {}
    for seed in seeds:
        run = f"baseline-s{seed}" if len(seeds) > 1 else "baseline"
        record = json.loads((storage / name / "student" / run / "student.json").read_text())
        out[seed] = {"dev": float(record["average"]), "test": float(record["test_average"])}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--quick", action="store_true", help="--size quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--sources", nargs="+", default=None)
    parser.add_argument("--targets", nargs="+", default=None)
    parser.add_argument("--storage", default=None, help="experiments here (default: scratch)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parse(parser, argv)
    args.size = "quick" if args.quick else args.size
    size = SIZES[args.size]
    args.seeds = args.seeds or list(size.seeds)
    args.sources = args.sources or list(size.sources)
    args.targets = args.targets or list(size.targets)
    overlap = set(args.sources) & set(args.targets)
    if overlap:
        parser.error(f"targets must be held out of the sources: {', '.join(sorted(overlap))}")
    begin("transfer.py", argv, threads=None, mtkd_level=logging.INFO)  # stage progress

    import mtkd
    from mtkd.config import config_from_dict
    from mtkd.export_encoder import export_encoder

    with scratch("mtkd-bench-transfer-", keep=args.keep or bool(args.storage)) as tmp:
        storage = Path(args.storage).absolute() if args.storage else tmp
        print(f"storage: {storage}", flush=True)
        mtkd.run(config_from_dict(source_config(args, storage)))
        exported = export_encoder(storage / "transfer-source" / "student" / "student" / "final",
                                  storage / "transferred-encoder", overwrite=True)
        print(f"exported encoder: {exported.path} (max difference {exported.max_diff:.1e})")
        variants = {"transferred": (str(exported.path), None), "truncated": (ENCODER, LAYERS)}
        found = {}
        for variant, (encoder, layers) in variants.items():
            name = f"transfer-target-{variant}"
            mtkd.run(config_from_dict(target_config(args, storage, name, encoder, layers)))
            found[variant] = scores(storage, name, args.seeds)
    rows, gains = [], {"dev": [], "test": []}
    for seed in args.seeds:
        t, b = found["transferred"][seed], found["truncated"][seed]
        for split in gains:
            gains[split].append(t[split] - b[split])
        rows.append([seed, f"{t['dev']:.2f}", f"{b['dev']:.2f}", f"{t['test']:.2f}",
                     f"{b['test']:.2f}"])
    print(markdown_table(["seed", "dev transferred", "dev truncated", "test transferred",
                          "test truncated"], rows))
    print(f"sources {', '.join(args.sources)} + transfer text rotten_tomatoes_plots; "
          f"targets {', '.join(args.targets)}; {len(args.seeds)} seed(s)"
          + f"; size {args.size}"
          + (": a smoke run, not a measurement" if args.size == "quick" else ""))
    result("transfer_gain", statistics.fmean(gains["test"]),
           "test, points, mean over seeds; goal > 0", digits=2)
    result("transfer_gain_dev", statistics.fmean(gains["dev"]), "dev, points", digits=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
