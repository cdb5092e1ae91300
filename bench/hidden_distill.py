"""Representation distillation and staged training against output-only distillation, at
the same 3-layer student shape (issue "XtremeDistil students", item 5).

XtremeDistilTransformers (Mukherjee, Awadallah, Gao 2021, sections 3-4) distils a
teacher's hidden states as well as its outputs, and trains in stages (representations,
then soft targets, then hard labels) with gradual unfreezing. Here the same experiment is
distilled three ways, everything else equal (data, the three-member all-MiniLM-L6-v2
ensemble and its soft targets, the student: the first 3 layers of all-MiniLM-L6-v2, its
seeds, epochs, batch, learning rate):

* **output** (the baseline of this comparison): jobs/configs/large-teachers.yaml's MiniLM
  ensemble as bench/large_teachers.py runs it (soft-target CE, weight 0.5; reused when that
  experiment is already in the storage folder);
* **hidden**: the same plus ``student.kd.hidden_weight`` (default 1.0): the student's 3
  layers matched to the best member's layers 2, 4, 6 (MSE over real tokens; equal widths,
  so no projection);
* **staged** (``--variants hidden,staged``): ``student.stages``: representation (hidden
  only, the top layer first and one more every quarter epoch), soft (soft targets +
  hidden), hard (hard labels), one epoch each: as many steps as the others.

The variants are experiments of their own next to the output one; its members, soft
targets and prepared data are copied in first and reused by their lineage (no member is
trained again). Per variant it prints each seed's dev and test averages and

    RESULT hidden_distill_gain <points>   hidden - output, test average, mean over seeds
    RESULT hidden_distill_gain_dev <points>
    RESULT staged_gain <points>           staged - output (with --variants ...,staged)

Goal (the issue): hidden_distill_gain >= +0.5.

Usage: python bench/hidden_distill.py [--variants hidden,staged] [--hidden-weight 1.0]
                                      [overrides of large-teachers.yaml ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402
from large_teachers import overrides_for, run_ensemble  # noqa: E402

SHARED = ("data", "teachers", "soft_targets")
"""What a variant copies from the output experiment (reused by lineage)."""
STAGES = ("[{name: representation, epochs: 1, loss: {hidden: 1.0}, "
          "unfreeze: {start_layers: 1, every_epochs: 0.25}}, "
          "{name: soft, epochs: 1, loss: {soft: 1.0, hidden: 1.0}}, "
          "{name: hard, epochs: 1, loss: {hard: 1.0}}]")


def variant_overrides(variant: str, hidden_weight: float) -> list[str]:
    if variant == "hidden":
        return [f"student.kd.hidden_weight={hidden_weight}"]
    if variant == "staged":
        return [f"student.stages={STAGES}"]
    raise SystemExit(f"unknown variant {variant!r}: use hidden or staged")


def run_variant(config: str, output: Path, variant: str, extra: list[str],
                hidden_weight: float) -> Path:
    """Run ``variant`` as its own experiment beside ``output`` (the output experiment's
    folder), seeded with its shared artifacts; returns the variant's experiment folder."""
    name = f"{output.name}-{variant}"
    target = output.parent / name
    for rel in SHARED:
        if (output / rel).is_dir() and not (target / rel).exists():
            shutil.copytree(output / rel, target / rel)
    overrides = [*extra, *overrides_for("minilm", output.name), f"name={name}",
                 *variant_overrides(variant, hidden_weight)]
    subprocess.run([sys.executable, "-m", "mtkd", "run", config, *overrides], check=True)
    return target


def per_seed(experiment: Path) -> dict[int, dict[str, float]]:
    """{seed: {"dev", "test", "seconds"}} of the distilled student runs' records."""
    found = {}
    for record in sorted((experiment / "student").glob("*/student.json")):
        run = json.loads(record.read_text())
        if run.get("distill"):
            found[int(run["seed"])] = {"dev": float(run["average"]),
                                       "test": float(run["test_average"]),
                                       "seconds": float(run.get("seconds") or 0.0)}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "jobs/configs/large-teachers.yaml"))
    parser.add_argument("--variants", default="hidden", help="hidden and/or staged")
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    output = run_ensemble(args.config, "minilm", args.overrides).parents[1]
    results = {"output": per_seed(output)}
    for variant in args.variants.split(","):
        results[variant] = per_seed(run_variant(args.config, output, variant, args.overrides,
                                                args.hidden_weight))
    seeds = sorted(set.intersection(*(set(r) for r in results.values())))
    rows = [[variant, seed, f"{r[seed]['dev']:.2f}", f"{r[seed]['test']:.2f}",
             f"{r[seed]['seconds']:.0f}"] for variant, r in results.items() for seed in seeds]
    print(markdown_table(["variant", "seed", "dev", "test", "train s"], rows))
    for variant in results:
        if variant == "output":
            continue
        for split, suffix in (("test", ""), ("dev", "_dev")):
            gains = [results[variant][s][split] - results["output"][s][split] for s in seeds]
            key = "hidden_distill_gain" if variant == "hidden" else f"{variant}_gain"
            spread = statistics.stdev(gains) if len(gains) > 1 else float("nan")
            print(f"RESULT {key}{suffix} {statistics.fmean(gains):.2f} "
                  f"(paired by seed over {len(seeds)} seeds, sd {spread:.2f}; "
                  f"per seed {[round(g, 2) for g in gains]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
