"""Large and mixed teachers: an ensemble of three all-mpnet-base-v2 members (110M
parameters each), one of three all-MiniLM-L6-v2 members (22M) and a mixed one (two mpnet,
one MiniLM: two tokenizers; models the other two trained, reused by lineage), each
distilled into the same 3-layer MiniLM student, three student seeds each. Runs (or
resumes) jobs/configs/large-teachers.yaml three times, the ensembles differing only in
``teachers.variation`` (seeds 1, 2, 3 in every one), and prints per ensemble the
ensemble's and the students' dev and test averages, sizes and inference speed, then:

    RESULT mpnet_teacher_gain <points>   KD student from the mpnet ensemble minus KD student
                                         from the MiniLM ensemble, test average, mean of seeds
    RESULT student_vs_mpnet_ensemble <r> student (mpnet-taught) / mpnet ensemble, test average
    RESULT student_speedup_vs_mpnet_ensemble <x>  student ex/s / mpnet ensemble ex/s

Goals (issue "Large and mixed teachers"): the mpnet ensemble beats the MiniLM ensemble;
the student keeps >= 0.95 of the mpnet ensemble's average at >= 10x its speed.

Usage: python bench/large_teachers.py [--config ...] [--only mpnet,minilm,mixed] [overrides...]
       python bench/large_teachers.py --reports DIR   (no run: read DIR/<name>/report/report.json)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402
from quality import with_test_averages  # noqa: E402

MPNET, MINILM = "bundled:all-mpnet-base-v2", "bundled:all-MiniLM-L6-v2"
SEEDS = (1, 2, 3)
MIXED = ((1, MPNET), (2, MINILM), (3, MPNET))
"""The mixed ensemble: member i is member i of the mpnet or the MiniLM ensemble (same seed,
encoder, data and hyper-parameters), so its trained model and predictions are reused."""


def overrides_for(ensemble: str, base_name: str) -> list[str]:
    """Overrides that make the config (the mpnet ensemble) into ``ensemble``'s."""
    name = f"name={base_name.rsplit('-', 1)[0]}-{ensemble}"
    if ensemble == "mixed":
        members = ", ".join(f"{{seed: {seed}, encoder: '{encoder}'}}" for seed, encoder in MIXED)
        return [name, "teachers.variation.strategy=list", f"teachers.variation.members=[{members}]"]
    encoder = MPNET if ensemble == "mpnet" else MINILM
    return [name, "teachers.variation.strategy=grid", f"teachers.variation.seed={list(SEEDS)}",
            f"teachers.variation.encoder=[{encoder}]"]


def seed_mixed_members(root: Path, base: str) -> None:
    """Copy the trained members (``teachers/m00i``) and their predictions
    (``soft_targets/_members/m00i``) the mixed ensemble shares with the other two into its
    experiment; the teacher and soft stages reuse them only if their lineage matches (else
    they train and predict anew)."""
    import shutil

    for index, (seed, encoder) in enumerate(MIXED):
        source = root / f"{base}-{'mpnet' if encoder == MPNET else 'minilm'}"
        assert SEEDS.index(seed) == index  # member i of its ensemble: the same name m00i
        name = f"m{index:03d}"
        for rel in (f"teachers/{name}", f"soft_targets/_members/{name}"):
            target = root / f"{base}-mixed" / rel
            if (source / rel).is_dir() and not target.exists():
                shutil.copytree(source / rel, target)


def summary(report: dict) -> dict[str, float]:
    """The figures of one ensemble's report: ensemble and student (mean of seeds) dev and
    test averages, parameters, examples/s."""
    runs = [r for r in report["student_runs"].values() if r["distill"]]
    ensemble = report["ensemble"]
    return {"ensemble_dev": ensemble["average"], "ensemble_test": ensemble["test"]["average"],
            "member_mean_dev": ensemble["member_mean"],
            "student_dev": statistics.mean(r["average"] for r in runs),
            "student_test": statistics.mean(r["test_average"] for r in runs),
            "student_test_per_seed": [round(r["test_average"], 2) for r in runs],
            "ensemble_params": ensemble.get("params", float("nan")),
            "student_params": report["student"]["params"],
            "ensemble_ex_s": ensemble.get("examples_per_s", float("nan")),
            "student_ex_s": report["student"].get("examples_per_s", float("nan")),
            "speedup": report.get("speedup", float("nan")),
            "encoders": sorted({m["encoder"] for m in report["members"]})}


def run_ensemble(config: str, ensemble: str, extra: list[str]) -> Path:
    from mtkd.config import load_config
    from mtkd.storage import Storage

    base = load_config(config, extra)
    overrides = [*extra, *overrides_for(ensemble, base.name)]
    if ensemble == "mixed":
        seed_mixed_members(Path(base.storage_path), base.name.rsplit("-", 1)[0])
    subprocess.run([sys.executable, "-m", "mtkd", "run", config, *overrides], check=True)
    loaded = load_config(config, overrides)
    root = Storage.from_uri(loaded.storage_path).child(loaded.name)
    return Path(root.uri_of("report/report.json"))


def print_results(figures: dict[str, dict]) -> None:
    rows = [[name, ", ".join(f["encoders"]), f"{f['ensemble_params'] / 1e6:.0f}M",
             f"{f['ensemble_dev']:.2f}", f"{f['ensemble_test']:.2f}", f"{f['student_dev']:.2f}",
             f"{f['student_test']:.2f}", f"{f['student_test_per_seed']}",
             f"{f['ensemble_ex_s']:.0f}", f"{f['student_ex_s']:.0f}", f"{f['speedup']:.1f}"]
            for name, f in figures.items()]
    print(markdown_table(["ensemble", "encoders", "ensemble params", "ensemble dev",
                          "ensemble test", "student dev", "student test",
                          "student test per seed", "ensemble ex/s", "student ex/s",
                          "speedup"], rows))
    mpnet, minilm = figures.get("mpnet"), figures.get("minilm")
    if mpnet and minilm:
        difference = mpnet["ensemble_test"] - minilm["ensemble_test"]
        print(f"ensembles, test: mpnet {mpnet['ensemble_test']:.2f} vs MiniLM "
              f"{minilm['ensemble_test']:.2f} ({difference:+.2f})")
        gain = mpnet["student_test"] - minilm["student_test"]
        print(f"RESULT mpnet_teacher_gain {gain:.2f} (goal > 0)")
    if mpnet:
        print(f"RESULT student_vs_mpnet_ensemble "
              f"{mpnet['student_test'] / mpnet['ensemble_test']:.3f} (goal >= 0.95)")
        print(f"RESULT student_speedup_vs_mpnet_ensemble {mpnet['speedup']:.1f} (goal >= 10)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "jobs/configs/large-teachers.yaml"))
    parser.add_argument("--only", default="mpnet,minilm,mixed",
                        help="ensembles to run, comma-separated")
    parser.add_argument("--reports", help="read <DIR>/large-teachers-<ensemble>/report/"
                        "report.json instead of running")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    figures = {}
    for ensemble in args.only.split(","):
        if args.reports:
            path = Path(args.reports) / f"large-teachers-{ensemble}" / "report" / "report.json"
        else:
            path = run_ensemble(args.config, ensemble, args.overrides)
        figures[ensemble] = summary(with_test_averages(json.loads(path.read_text())))
        print(f"{ensemble}: {json.dumps(figures[ensemble])}", flush=True)
    print_results(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
