"""Student step throughput: one Ray Train + DeepSpeed worker against a plain PyTorch loop, and
the cost of periodic S3 checkpoints.

Real data: the prepare stage on deterministic subsets of the bundled rotten_tomatoes and trec
train splits (``--rt-examples``, ``--trec-examples``; dev capped at ``--dev-examples``),
tokenized with the bundled all-MiniLM-L6-v2 tokenizer. The model is the student: MT-DNN on
the first 3 layers of all-MiniLM-L6-v2, dropout 0.1, bf16, batch 32, distillation off (the
``baseline`` run, so no teachers are needed), as many epochs over the subsets as ``--steps``
needs, ``eval_every`` 10⁹ (the only dev evaluation is the final one). Storage is a real S3
server (SeaweedFS ``weed mini`` from ``tests/s3server.py`` on 127.0.0.1, fresh bucket) for
every variant; Ray is started once (``mtkd.raycluster.ensure_ray``, ``num_cpus: 2``) before
anything is timed.
Variants, each its own experiment (own name, own prepare, nothing reused):

* ``plain``: mtkd's ``TrainingLoop`` + ``TorchBackend`` (fp32 weights, bf16 autocast,
  torch AdamW fused) in this process, 2 torch threads, the same model (same seed) and the
  same sampler batches as the worker (checked: identical examples per step);
* ``ds``: ``run_pipeline(config, only="student")``: ``TorchTrainer`` with one worker
  (``resources_per_worker: {cpu: 2}``), the student's DeepSpeed defaults (``zero_stage:
  auto``, which is ZeRO-0 for one worker; bf16 by ``torch_autocast``), ``checkpoint_every``
  10⁹ (only the final checkpoint, after the timed loop);
* ``ds_ckpt``: the same with ``checkpoint_every: K`` (``--checkpoint-every``): every K steps
  each rank saves its DeepSpeed shard and ``ray.train.report``s it to S3;
* ``ds_ckpt_async`` (unless ``--no-async``): a proposal priced without touching mtkd: the
  same, with the reported folder hard-linked aside and uploaded by Ray in the background
  (``checkpoint_upload_mode=ASYNC``), see :func:`make_worker`;
* ``ds_zero2`` (unless ``--no-zero2``): ``ds`` with ``zero_stage: 2`` forced, for comparison
  (ZeRO-2 partitions over one rank: its flat buffers only add copies).

Before each variant the run waits (up to ``--quiet-timeout``) for other processes to leave
the CPUs; a run whose training process got less than ``--min-cpu-share`` of its 2 cores in
the steady window is measured again (``--retries``) and the least contended attempt kept.
``--investigate`` instead splits the gap in one process (no Ray, no S3): plain vs
DeepSpeed ZeRO-0 / 1 / 2, torch_autocast / DeepSpeed's bf16 mode (half weights), fp32, and
bf16 weights without autocast, per phase.

Steady state: the worker function is wrapped (``mtkd.student.stage.student_worker`` is
replaced in this process by a wrapper that Ray pickles by value; ``mtkd/`` is unchanged) so
that every optimizer step records a timestamp, its examples and its forward / backward /
step seconds; checkpoint hooks, ``engine.save_checkpoint`` and ``ray.train.report`` are
timed too. The steady rate is examples of steps K+1..N over the time from the end of step K
to the end of step N: Ray/DeepSpeed start-up, the first K steps (warm-up), the final
evaluation and the final checkpoint are outside; the periodic checkpoints at steps K, 2K, ...,
N-K are inside (exactly one per K steps when N is a multiple of K). The loop's own figure,
``examples / train_seconds`` (``student/baseline/train_state.json``: ``examples_per_s``), is
printed next to it; the
loop's ``train_seconds`` includes the ``on_checkpoint`` hook time (the hook runs after the
throughput window was restarted and before the next step) and excludes evaluations.

    .venv/bin/python bench/student_step.py [--quick] [--steps 1000] [--checkpoint-every 500]
                                           [--rounds 1] [--no-async] [--no-zero2]
    .venv/bin/python bench/student_step.py --investigate [--rounds 3] [--profile]
                                           [--variants ds_z2_autocast,ds_z0_autocast]

Ends with ``RESULT student_vs_plain`` (ds / plain) and ``RESULT checkpoint_overhead``
(ds_ckpt / ds), medians of per-round ratios of the steady rates.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.pop("RAY_ADDRESS", None)  # always a fresh local Ray, never someone else's cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # s3server.py: the SeaweedFS helper of the tests

import torch  # noqa: E402
from common import (  # noqa: E402
    bench_precision,
    bf16_native,
    describe_machine,
    emulated_bf16_note,
    machine,
    markdown_table,
    matmul_gflops,
    median,
    other_load,
    paired_ratio,
    set_threads,
    wait_for_quiet,
)
from s3server import S3Server, start_seaweedfs  # noqa: E402

from mtkd.config import ExperimentConfig, RayConfig, config_from_dict  # noqa: E402
from mtkd.config.schema import StudentConfig  # noqa: E402
from mtkd.pipeline import experiment_store, run_pipeline  # noqa: E402

ENCODER = "bundled:all-MiniLM-L6-v2"
NEVER = 10**9
TIMING_FILE = "bench_timing.json"


# ------------------------------------------------------------------ step instrumentation
# Everything in this section runs inside the Ray Train worker too: Ray pickles these
# functions by value (they live in __main__), so they use nothing from bench/common.py.


def new_record() -> dict[str, Any]:
    return {"t": [], "cpu": [], "ex": [], "tok": [], "fwd": [], "bwd": [], "opt": [],
            "checkpoints": [], "saves": [], "reports": [], "info": {}}


def patch_backend(cls: type, rec: dict[str, Any]) -> Callable[[], None]:
    """Wrap ``cls.forward/backward/step`` (and ``save_state`` if present) to record per-step
    timestamps, examples, tokens and phase seconds into ``rec``; returns an undo function."""
    import time as _time

    names = ("forward", "backward", "step", "save_state")
    originals = {name: getattr(cls, name) for name in names if hasattr(cls, name)}
    pending = {"ex": 0, "tok": 0, "fwd": 0.0, "bwd": 0.0}

    def forward(self: Any, task: str, inputs: dict[str, Any]) -> Any:
        if not rec["info"]:
            params = list(self.model.parameters())
            engine = getattr(self, "engine", None)
            optimizer = engine.optimizer if engine is not None else self.optimizer
            rec["info"] = {"backend": type(self).__name__,
                           "optimizer": type(optimizer).__name__,
                           "param_dtype": str(params[0].dtype),
                           "params": sum(p.numel() for p in params),
                           "torch_threads": torch.get_num_threads(),
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
        start = _time.perf_counter()
        out = originals["forward"](self, task, inputs)
        pending["fwd"] += _time.perf_counter() - start
        pending["ex"] += int(inputs["input_ids"].shape[0])
        pending["tok"] += int(inputs["attention_mask"].sum())
        return out

    def backward(self: Any, loss: Any) -> None:
        start = _time.perf_counter()
        originals["backward"](self, loss)
        pending["bwd"] += _time.perf_counter() - start

    def step(self: Any) -> bool:
        start = _time.perf_counter()
        stepped = originals["step"](self)
        end = _time.perf_counter()
        if stepped:
            rec["t"].append(end)
            rec["cpu"].append(_time.process_time())
            rec["opt"].append(end - start)
            for key in ("ex", "tok", "fwd", "bwd"):
                rec[key].append(pending[key])
            pending.update(ex=0, tok=0, fwd=0.0, bwd=0.0)
        return stepped

    def save_state(self: Any, folder: Any, rank: int = 0) -> None:
        start = _time.perf_counter()
        originals["save_state"](self, folder, rank)
        seconds = _time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
        engine = getattr(self, "engine", None)  # DeepSpeed's counts the optimizer steps
        rec["saves"].append({"step": int(engine.global_steps) if engine else None,
                             "seconds": seconds, "bytes": size})

    patched = {"forward": forward, "backward": backward, "step": step,
               "save_state": save_state}
    for name in originals:
        setattr(cls, name, patched[name])

    def undo() -> None:
        for name, fn in originals.items():
            setattr(cls, name, fn)

    return undo


def patch_checkpoint_hook(rec: dict[str, Any]) -> Callable[[], None]:
    """Time every ``on_checkpoint`` call of ``TrainingLoop.run`` (step, seconds)."""
    import time as _time

    import mtkd.training.loop as loop_module

    original = loop_module.TrainingLoop.run

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        hook = self.hooks.on_checkpoint
        if hook is not None:
            def timed_hook(state: Any) -> None:
                start = _time.perf_counter()
                hook(state)
                rec["checkpoints"].append({"step": state.step,
                                           "seconds": _time.perf_counter() - start,
                                           "at": _time.perf_counter()})
            self.hooks.on_checkpoint = timed_hook
        return original(self, *args, **kwargs)

    loop_module.TrainingLoop.run = run

    def undo() -> None:
        loop_module.TrainingLoop.run = original

    return undo


def make_worker(async_upload: bool) -> Callable[[dict[str, Any]], None]:
    """``mtkd.student.worker.student_worker`` with the instrumentation above; the record goes
    to ``student/<run>/bench_timing.json`` in the experiment's storage.

    ``async_upload`` prices a proposal without touching mtkd: every checkpoint folder the
    worker reports is hard-linked into a folder of its own (the worker's TemporaryDirectory
    is deleted as soon as ``report`` returns) and reported with
    ``checkpoint_upload_mode=ASYNC``: Ray uploads it from a background thread, deletes it,
    and waits for the last upload when the training function returns."""

    def timed_student_worker(loop_config: dict[str, Any]) -> None:
        import shutil as _shutil
        import tempfile as _tempfile
        import time as _time

        import ray.train

        from mtkd.config import config_from_dict as _from_dict
        from mtkd.storage import Storage
        from mtkd.student import worker as worker_module
        from mtkd.student.deepspeed_backend import DeepSpeedBackend

        rec = new_record()
        undo = [patch_backend(DeepSpeedBackend, rec), patch_checkpoint_hook(rec)]
        original_report = ray.train.report

        def report(metrics: dict[str, Any], checkpoint: Any = None, **kwargs: Any) -> Any:
            start = _time.perf_counter()
            if async_upload and checkpoint is not None:
                folder = _tempfile.mkdtemp(prefix="mtkd-bench-async-")
                _shutil.copytree(checkpoint.path, folder, copy_function=os.link,
                                 dirs_exist_ok=True)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
                kwargs.update(checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                              delete_local_checkpoint_after_upload=True)
            result = original_report(metrics, checkpoint=checkpoint, **kwargs)
            rec["reports"].append({"seconds": _time.perf_counter() - start,
                                   "checkpoint": checkpoint is not None})
            return result

        ray.train.report = report
        try:
            worker_module.student_worker(loop_config)
        finally:
            ray.train.report = original_report
            for fn in undo:
                fn()
            config = _from_dict(loop_config["experiment"])
            store = Storage.from_uri(loop_config["storage"]).child(config.name)
            store.child("student", loop_config["run"]["name"]).write_json_atomic(TIMING_FILE,
                                                                                rec)

    return timed_student_worker


# ------------------------------------------------------------------ variants


def experiment(args: argparse.Namespace, name: str, storage: str,
               checkpoint_every: int, zero_stage: int | str = "auto") -> ExperimentConfig:
    task = {"max_train_examples": None, "max_dev_examples": args.dev_examples,
            "teacher": False}
    # Enough epochs over the subsets for --steps (max_steps stops the run there).
    epochs = -(-args.steps // ((args.rt_examples + args.trec_examples) // 32))
    return config_from_dict({
        "name": name, "storage_path": storage, "ray": {"num_cpus": 2},
        "encoder": {"path": ENCODER},
        "tasks": [{**task, "name": "rotten_tomatoes", "max_train_examples": args.rt_examples},
                  {**task, "name": "trec", "max_train_examples": args.trec_examples}],
        "student": {"num_layers": 3, "distill": False, "num_workers": 1,
                    "resources_per_worker": {"cpu": 2}, "checkpoint_every": checkpoint_every,
                    "keep_checkpoints": 2, "max_failures": 0,
                    "deepspeed": {"zero_stage": zero_stage},
                    "training": {"epochs": epochs, "max_steps": args.steps, "batch_size": 32,
                                 "precision": args.precision, "eval_every": NEVER,
                                 "dropout": 0.1}},
    })


def prepare(config: ExperimentConfig) -> float:
    start = time.perf_counter()
    run_pipeline(config, only="prepare")
    return time.perf_counter() - start


def run_plain(config: ExperimentConfig) -> dict[str, Any]:
    """TrainingLoop + TorchBackend in this process, the student's model and batches."""
    from mtkd.training.backend import TorchBackend
    from mtkd.training.recipe import build_training_loop, load_prepared_tasks

    store = experiment_store(config)
    data = load_prepared_tasks(store, [t.name for t in config.tasks])
    training = config.student.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = build_training_loop(config, data, encoder=config.student.encoder or ENCODER,
                                   num_layers=config.student.num_layers, training=training,
                                   seed=config.student.seeds[0], name="plain", log_every=50)
    assert isinstance(loop.backend, TorchBackend)
    rec = new_record()
    undo = patch_backend(TorchBackend, rec)
    try:
        state = loop.run(seed=config.student.seeds[0])
    finally:
        undo()
    rec["loop_examples_per_s"] = state.examples / max(state.train_seconds, 1e-9)
    rec["steps"] = state.step
    return rec


def run_ds(config: ExperimentConfig, async_upload: bool = False) -> dict[str, Any]:
    """The student stage (TorchTrainer + DeepSpeed) with the instrumented worker."""
    import mtkd.student.stage as stage_module

    original = stage_module.student_worker
    stage_module.student_worker = make_worker(async_upload)
    try:
        run_pipeline(config, only="student")
    finally:
        stage_module.student_worker = original
    run_store = experiment_store(config).child("student", "baseline")
    rec = run_store.read_json(TIMING_FILE)
    state = run_store.read_json("train_state.json")
    rec["loop_examples_per_s"] = state["examples_per_s"]
    rec["steps"] = state["steps"]
    return rec


# ------------------------------------------------------------------ investigation
# In one process, no Ray, no S3: the same loop, model and batches through TorchBackend and
# DeepSpeedBackend (torch.distributed gloo, world size 1, as Ray Train sets it up), rounds
# interleaved, to split the DeepSpeed worker's gap into its parts.

INVESTIGATE: dict[str, tuple[str, str, int | None, bool, dict[str, Any], str]] = {
    # name: (backend, precision, ZeRO stage, weights cast to bf16 first, extra
    #        zero_optimization, student.deepspeed.mixed_precision)
    "plain_bf16": ("torch", "bf16", None, False, {}, ""),
    "ds_z2_autocast": ("deepspeed", "bf16", 2, False, {}, "autocast"),
    "ds_z1_autocast": ("deepspeed", "bf16", 1, False, {}, "autocast"),
    "ds_z0_autocast": ("deepspeed", "bf16", 0, False, {}, "autocast"),
    "ds_z2_half": ("deepspeed", "bf16", 2, False, {}, "half_weights"),
    "ds_z2_half_nocontig": ("deepspeed", "bf16", 2, False, {"contiguous_gradients": False},
                            "half_weights"),
    "ds_z0_half": ("deepspeed", "bf16", 0, False, {}, "half_weights"),
    "pure_bf16": ("torch", "fp32", None, True, {}, ""),
    "plain_fp32": ("torch", "fp32", None, False, {}, ""),
    "ds_z2_fp32": ("deepspeed", "fp32", 2, False, {}, "autocast"),
}
"""*_autocast: fp32 weights, DeepSpeed's torch_autocast (mtkd's default); *_half: DeepSpeed's
bf16 mode (bf16 module, fp32 master weights in the optimizer); pure_bf16: bf16 weights and
no autocast, torch AdamW straight on the bf16 weights (no fp32 master copy)."""


def init_single_process_group() -> None:
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    dist.init_process_group("gloo", rank=0, world_size=1)


def investigate(args: argparse.Namespace) -> int:
    import copy
    import dataclasses

    from mtkd.student.deepspeed_backend import DeepSpeedBackend
    from mtkd.training.backend import TorchBackend
    from mtkd.training.loop import LoopData, LoopState, TrainingLoop
    from mtkd.training.recipe import build_model, load_prepared_tasks, make_sampler

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    set_threads(2)
    print(f"# bench/student_step.py --investigate  {' '.join(sys.argv[1:])}")
    print(f"machine: {describe_machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="mtkd-bench-student-inv-"))
    try:
        config = experiment(args, "inv", str(work / "runs"), NEVER)
        prepare(config)
        data = load_prepared_tasks(experiment_store(config), [t.name for t in config.tasks])
        init_single_process_group()
        student = config.student
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            template = build_model(config, list(data.specs.values()), encoder=ENCODER,
                                   num_layers=student.num_layers,
                                   dropout=student.training.dropout, seed=0)
        sampler = make_sampler(data.train, config, student.training, 0)
        warm, steps = args.inv_warmup, args.inv_steps
        total = args.steps

        def run(name: str) -> dict[str, Any]:
            import mtkd.student.deepspeed_backend as ds_module

            kind, precision, zero, cast, extra, mixed = INVESTIGATE[name]
            original_config = ds_module.deepspeed_config

            def with_extra(student_config: Any, world_size: int,
                           precision: str | None = None) -> dict[str, Any]:
                config = original_config(student_config, world_size, precision)
                config["zero_optimization"].update(extra)
                return config

            training = dataclasses.replace(student.training, precision=precision)
            model = copy.deepcopy(template).train()
            if cast:
                model = model.to(torch.bfloat16)
            if kind == "torch":
                backend = TorchBackend(model, training, total)
                cls: type = TorchBackend
            else:
                cfg = dataclasses.replace(
                    student, training=training,
                    deepspeed=dataclasses.replace(student.deepspeed, zero_stage=zero,
                                                  mixed_precision=mixed))
                ds_module.deepspeed_config = with_extra
                try:
                    backend = DeepSpeedBackend(model, cfg, total, 1)
                finally:
                    ds_module.deepspeed_config = original_config
                cls = DeepSpeedBackend
            loop = TrainingLoop(backend, LoopData(data.specs, data.train, {}), training,
                                sampler=sampler, name=name, log_every=NEVER,
                                keep_best_in_memory=False)
            rec = new_record()
            undo = patch_backend(cls, rec)
            try:
                loop.total_steps = warm + steps
                loop.run(LoopState(), seed=0)
            finally:
                undo()
            result = steady(rec, warm)
            result["info"] = rec["info"]
            return result

        if args.profile:
            profile_step(run, args)
        order = investigated(args)
        results: dict[str, list[dict[str, Any]]] = {n: [] for n in order}
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else list(reversed(order)):
                busy = other_load(0.5)
                res = run(name)
                results[name].append(res)
                print(f"  round {r + 1} {name:<19} {res['examples_per_s']:6.1f} ex/s  fwd "
                      f"{res['fwd_ms']:4.0f} bwd {res['bwd_ms']:4.0f} step {res['opt_ms']:4.0f} "
                      f"ms  cpu share {res['cpu_share']:.2f}  (others {busy:.0%} before)",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    reference = investigated(args)[0]
    base = [r["examples_per_s"] for r in results[reference]]
    for name, res in results.items():
        rows.append([name, f"{median(r['examples_per_s'] for r in res):.1f}",
                     f"{median(r['mean_step_ms'] for r in res):.0f}",
                     f"{median(r['fwd_ms'] for r in res):.0f}",
                     f"{median(r['bwd_ms'] for r in res):.0f}",
                     f"{median(r['opt_ms'] for r in res):.0f}",
                     f"{paired_ratio([r['examples_per_s'] for r in res], base):.3f}",
                     f"{median(r['cpu_share'] for r in res):.2f}",
                     f"{res[0]['info'].get('optimizer')} / {res[0]['info'].get('param_dtype')}"])
    print(f"\n### In-process, {steps} steps after {warm} warm-up, medians over {args.rounds} "
          "round(s)\n")
    print(markdown_table(["variant", "ex/s", "ms/step", "forward+loss ms", "backward ms",
                          "step ms", f"vs {reference}", "cpu share", "optimizer / weights"],
                         rows))
    return 0


def investigated(args: argparse.Namespace) -> list[str]:
    """The ``--variants`` to run, checked, with the reference first: plain_bf16, or
    plain_fp32 where this CPU only emulates bf16 (its bf16 variants are then skipped)."""
    native = bf16_native()
    reference = "plain_bf16" if native else "plain_fp32"
    names = [n for n in args.variants.split(",") if n and n != reference]
    unknown = [n for n in names if n not in INVESTIGATE]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(INVESTIGATE)}")
    if not native:
        names = [n for n in names if INVESTIGATE[n][1] == "fp32" and not INVESTIGATE[n][3]]
    return [reference, *names]


def profile_step(run: Callable[[str], dict[str, Any]], args: argparse.Namespace) -> None:
    """torch.profiler over the ``--profile-variants`` runs: top operators."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name in investigated(args):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run(name)
        print(f"\n### torch.profiler: {name} (warm-up + timed steps), self CPU time, top 30")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


# ------------------------------------------------------------------ analysis


def steady(rec: dict[str, Any], skip: int) -> dict[str, float]:
    """Rates over steps skip+1..N (timestamps of step ``skip`` and of the last step)."""
    t, ex = rec["t"], rec["ex"]
    n, first = len(t), max(skip, 1)
    if n <= first + 1:
        raise RuntimeError(f"only {n} steps recorded, need more than {first + 1}")
    wall = t[-1] - t[first - 1]
    steps = n - first
    examples = sum(ex[first:])
    gaps = [b - a for a, b in zip(t[first - 1:], t[first:], strict=False)]
    inside = [c for c in rec["checkpoints"] if first <= c["step"] < n]
    return {
        "examples_per_s": examples / wall,
        "tokens_per_s": sum(rec["tok"][first:]) / wall,
        "mean_step_ms": 1000 * wall / steps,
        "median_step_ms": 1000 * statistics.median(gaps),
        "fwd_ms": 1000 * statistics.mean(rec["fwd"][first:]),
        "bwd_ms": 1000 * statistics.mean(rec["bwd"][first:]),
        "opt_ms": 1000 * statistics.mean(rec["opt"][first:]),
        "cpu_share": (rec["cpu"][-1] - rec["cpu"][first - 1]) / (wall * 2),
        "checkpoints_inside": len(inside),
        "checkpoint_s_inside": sum(c["seconds"] for c in inside),
        "wall_s": wall,
        "steps": steps,
    }


def check_same_batches(plain: dict[str, Any], ds: dict[str, Any]) -> str:
    same_ex = plain["ex"] == ds["ex"]
    same_tok = plain["tok"] == ds["tok"]
    if not same_ex:
        raise RuntimeError("plain and DeepSpeed runs saw different batches (examples per step "
                           "differ)")
    return f"identical examples per step{' and tokens per step' if same_tok else ''}"


# ------------------------------------------------------------------ main


def measure(args: argparse.Namespace, variant: str, name: str, storage: str, every: int,
            runner: Callable[[ExperimentConfig], dict[str, Any]], prepare_s: list[float],
            waits: list[float]) -> dict[str, Any]:
    """Prepare a fresh experiment ``name``, wait for a quiet machine, run one variant."""
    config = experiment(args, name, storage, every, 2 if variant == "ds_zero2" else "auto")
    prepare_s.append(prepare(config))
    if args.max_busy < 1:
        waited, busy = wait_for_quiet(args.max_busy, args.quiet_timeout)
        waits.append(waited)
    else:
        busy = other_load(1.0)
    load = os.getloadavg()[0]
    print(f"\n== {variant} ({name}): others' CPU use {busy:.0%}, load avg {load:.2f}",
          flush=True)
    wall0 = time.perf_counter()
    rec = runner(config)
    rec.update(busy_before=busy, load_before=load, name=name,
               wall_s=time.perf_counter() - wall0)
    rec["steady"] = s = steady(rec, args.checkpoint_every)
    print(f"== {variant}: steady {s['examples_per_s']:.1f} ex/s ({s['mean_step_ms']:.0f} ms/step "
          f"mean, {s['median_step_ms']:.0f} median; fwd {s['fwd_ms']:.0f} bwd {s['bwd_ms']:.0f} "
          f"step {s['opt_ms']:.0f} ms), loop {rec['loop_examples_per_s']:.1f} ex/s, cpu share "
          f"{s['cpu_share']:.2f}, {rec['wall_s']:.0f} s in all; {rec['info']}", flush=True)
    return rec


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per run, a multiple of K (the steady window, steps "
                        "K+1..N, then holds exactly one checkpoint per K steps; default 2K)")
    parser.add_argument("--checkpoint-every", type=int, default=StudentConfig().checkpoint_every,
                        help="K: checkpoint every K steps in the ds_ckpt variant (default: the "
                        "student stage's checkpoint_every); the first K steps are also the "
                        "warm-up left out of the steady rate")
    parser.add_argument("--rt-examples", type=int, default=8000,
                        help="rotten_tomatoes train rows (deterministic subset)")
    parser.add_argument("--trec-examples", type=int, default=5000,
                        help="trec train rows (with --rt-examples: enough for --steps in one "
                        "epoch)")
    parser.add_argument("--dev-examples", type=int, default=200, help="dev rows per task")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of the variants (order reversed on odd rounds)")
    parser.add_argument("--no-async", dest="async_variant", action="store_false",
                        help="skip ds_ckpt_async (the ASYNC-upload proposal)")
    parser.add_argument("--no-zero2", dest="zero2_variant", action="store_false",
                        help="skip ds_zero2 (one worker forced to ZeRO-2, for comparison)")
    parser.add_argument("--max-busy", type=float, default=0.3,
                        help="before each variant wait until other processes use at most this "
                        "fraction of the CPUs (1: never wait)")
    parser.add_argument("--quiet-timeout", type=float, default=60.0,
                        help="longest wait for a quiet machine per variant, seconds")
    parser.add_argument("--min-cpu-share", type=float, default=0.9,
                        help="a run whose training process got less than this share of its 2 "
                        "cores in the steady window was contended and is measured again")
    parser.add_argument("--retries", type=int, default=1,
                        help="re-measurements of a contended run (fresh experiment each)")
    parser.add_argument("--investigate", action="store_true",
                        help="instead: in one process (no Ray, no S3) plain vs DeepSpeed "
                        "ZeRO-0/1/2, autocast/half weights, fp32 and pure-bf16 weights, per "
                        "phase")
    parser.add_argument("--inv-warmup", type=int, default=5, help="--investigate warm-up steps")
    parser.add_argument("--inv-steps", type=int, default=30, help="--investigate timed steps")
    parser.add_argument("--profile", action="store_true",
                        help="--investigate: also torch.profiler tables")
    parser.add_argument("--variants", default=",".join(INVESTIGATE),
                        help="--investigate: which variants to run or profile (comma list; "
                             "plain_bf16, the reference, always runs; plain_fp32 and only "
                             "fp32 variants where bf16 is emulated)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 30 steps, K=10, small subsets (about 3 min)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="of the student runs (auto: bf16 where this CPU has native bf16, "
                             "else fp32)")
    args = parser.parse_args(argv)
    if args.precision == "auto":
        args.precision = bench_precision()
        if args.precision != "bf16":
            print(emulated_bf16_note(), flush=True)
    if args.quick:
        args.steps, args.checkpoint_every = 30, 10
        args.rt_examples, args.trec_examples, args.dev_examples = 1500, 600, 100
        args.rounds = 1
    K = args.checkpoint_every
    args.steps = args.steps or 2 * K
    if args.steps < 2 * K or args.steps % K:
        parser.error(f"--steps must be a multiple of --checkpoint-every ({K}) and at least "
                     f"{2 * K}: the steady window, steps K+1..N, must hold whole K-step "
                     "intervals")
    return args


def bucket_env(server: S3Server) -> str:
    """AWS_* for ``server`` in os.environ (before Ray starts: workers inherit them)."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        os.environ.pop(var, None)
    os.environ.update(AWS_ENDPOINT_URL=server.endpoint_url, AWS_ACCESS_KEY_ID=server.access_key,
                      AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    return f"s3://{server.create_bucket('mtkd-bench-student')}/bench"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.investigate:
        return investigate(args)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("mtkd").setLevel(logging.INFO)
    set_threads(2)
    info = machine()
    started = time.perf_counter()
    print(f"# bench/student_step.py  {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"machine: {describe_machine(info)}", flush=True)
    K = args.checkpoint_every
    work = Path(tempfile.mkdtemp(prefix="mtkd-bench-student-"))
    server = start_seaweedfs(work / "s3")
    runners: dict[str, Callable[[ExperimentConfig], dict[str, Any]]] = {
        "plain": run_plain, "ds": run_ds, "ds_ckpt": run_ds,
        "ds_ckpt_async": lambda config: run_ds(config, async_upload=True), "ds_zero2": run_ds}
    if not args.async_variant:
        runners.pop("ds_ckpt_async")
    if not args.zero2_variant:
        runners.pop("ds_zero2")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    waits: list[float] = []
    contended: dict[str, int] = {}
    prepare_s: list[float] = []
    try:
        storage = bucket_env(server)
        import ray

        from mtkd.raycluster import ensure_ray

        ray_start = time.perf_counter()
        ensure_ray(RayConfig(num_cpus=2))
        print(f"Ray started in {time.perf_counter() - ray_start:.1f} s "
              f"({ray.cluster_resources().get('CPU', 0):.0f} CPU); S3 {server.endpoint_url}",
              flush=True)
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        mm_before = matmul_gflops(2048, dtype, 2.0)
        print(f"{args.precision} matmul ceiling before: {mm_before:.0f} GFLOP/s", flush=True)
        names = list(runners)
        for r in range(args.rounds):
            for variant in names if r % 2 == 0 else list(reversed(names)):
                every = K if variant.startswith("ds_ckpt") else NEVER
                attempts: list[dict[str, Any]] = []
                for attempt in range(args.retries + 1):
                    name = (f"{variant.replace('_', '-')}-r{r}" + (f"-k{K}" if every == K else "")
                            + (f"-a{attempt}" if attempt else ""))
                    rec = measure(args, variant, name, storage, every, runners[variant],
                                  prepare_s, waits)
                    attempts.append(rec)
                    if rec["steady"]["cpu_share"] >= args.min_cpu_share:
                        break
                    contended[variant] = contended.get(variant, 0) + 1
                    print(f"   (cpu share {rec['steady']['cpu_share']:.2f} < "
                          f"{args.min_cpu_share}: contended, measuring again)", flush=True)
                results[variant].append(max(attempts, key=lambda x: x["steady"]["cpu_share"]))
        mm_after = matmul_gflops(2048, dtype, 2.0)
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        finally:
            server.stop()
            shutil.rmtree(work, ignore_errors=True)

    for plain, ds in zip(results["plain"], results["ds"], strict=True):
        same = check_same_batches(plain, ds)
    rows = []
    for variant, recs in results.items():
        st = [rec["steady"] for rec in recs]
        rows.append([variant, f"{median(s['examples_per_s'] for s in st):.1f}",
                     f"{median(r['loop_examples_per_s'] for r in recs):.1f}",
                     f"{median(s['tokens_per_s'] for s in st):.0f}",
                     f"{median(s['mean_step_ms'] for s in st):.0f}",
                     f"{median(s['median_step_ms'] for s in st):.0f}",
                     f"{median(s['fwd_ms'] for s in st):.0f}",
                     f"{median(s['bwd_ms'] for s in st):.0f}",
                     f"{median(s['opt_ms'] for s in st):.0f}",
                     f"{median(s['cpu_share'] for s in st):.2f}",
                     f"{median(r['wall_s'] for r in recs):.0f}"])
    n_steps = results["plain"][0]["steady"]["steps"]
    print(f"\n### Results: steps {K + 1}..{args.steps} ({n_steps} steps), medians over "
          f"{args.rounds} round(s)\n")
    print(markdown_table(["variant", "steady ex/s", "loop ex/s (train_state)", "tok/s",
                          "ms/step mean", "ms/step median", "forward+loss ms", "backward ms",
                          "step ms", "cpu share", "wall s (incl. start-up, export)"], rows))
    print(f"\nbatches: {same}; info: plain {results['plain'][0]['info']}; "
          f"ds {results['ds'][0]['info']}")
    print(f"{args.precision} matmul ceiling: {mm_before:.0f} GFLOP/s before, {mm_after:.0f} "
          f"after; prepare stage {median(prepare_s):.1f} s per experiment (untimed)")

    for rec in results["ds_ckpt"] + results.get("ds_ckpt_async", []):
        periodic, seen = [], set()
        for c in rec["checkpoints"]:  # the final call right after step N's save is a no-op
            if c["step"] % K == 0 and c["step"] not in seen:
                periodic.append(c)
                seen.add(c["step"])
        saves = [s for s in rec["saves"] if s["step"] in seen]
        reports = [x for x in rec["reports"] if x["checkpoint"]][: len(saves)]
        hook = median(c["seconds"] for c in periodic)
        save = median(s["seconds"] for s in saves)
        upload = median(x["seconds"] for x in reports)
        size = median(s["bytes"] for s in saves)
        st = rec["steady"]
        print(f"\n{rec['name']}: {len(periodic)} periodic checkpoints (steps "
              f"{', '.join(str(c['step']) for c in periodic)}), {st['checkpoints_inside']} "
              f"inside the steady window costing {st['checkpoint_s_inside']:.1f} s of its "
              f"{st['wall_s']:.1f} s; per checkpoint (median): hook {hook:.2f} s = "
              f"engine.save_checkpoint {save:.2f} s + ray.train.report "
              f"{'(hard-link copy, ASYNC upload queued) ' if 'async' in rec['name'] else ''}"
              f"{upload:.2f} s + rest {hook - save - upload:.2f} s; "
              f"size {size / 2**20:.0f} MiB"
              + ("" if "async" in rec["name"] else
                 f" ({size / 2**20 / max(upload, 1e-9):.0f} MiB/s upload)"))

    plain_rates = [r["steady"]["examples_per_s"] for r in results["plain"]]
    ds_rates = [r["steady"]["examples_per_s"] for r in results["ds"]]
    ckpt_rates = [r["steady"]["examples_per_s"] for r in results["ds_ckpt"]]
    loop_ratio = paired_ratio([r["loop_examples_per_s"] for r in results["ds"]],
                              [r["loop_examples_per_s"] for r in results["plain"]])
    loop_ckpt = paired_ratio([r["loop_examples_per_s"] for r in results["ds_ckpt"]],
                             [r["loop_examples_per_s"] for r in results["ds"]])
    print(f"\nfrom the loop's own examples/train_seconds (all {args.steps} steps, first steps "
          f"included): student_vs_plain {loop_ratio:.3f}, checkpoint_overhead {loop_ckpt:.3f}")
    if "ds_ckpt_async" in results:
        async_rates = [r["steady"]["examples_per_s"] for r in results["ds_ckpt_async"]]
        print(f"proposal, ASYNC checkpoint upload (bench-side patch, mtkd unchanged): "
              f"checkpoint_overhead {paired_ratio(async_rates, ds_rates):.3f}")
    if contended:
        print("contended attempts measured again: "
              + ", ".join(f"{n} ×{c}" for n, c in contended.items())
              + "; kept the attempt with the highest cpu share")
    print(f"total {time.perf_counter() - started:.0f} s (of which {sum(waits):.0f} s waiting "
          f"for a quiet machine); load avg now {os.getloadavg()[0]:.2f}")
    print(f"RESULT student_vs_plain {paired_ratio(ds_rates, plain_rates):.3f} (target >= 0.9)")
    print(f"RESULT checkpoint_overhead {paired_ratio(ckpt_rates, ds_rates):.3f} "
          f"(target >= 0.95; K={K}, S3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
