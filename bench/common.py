"""Helpers shared by the benchmarks in ``bench/``: the preamble (environment, logging, the
header lines, shared command-line options, ``RESULT`` lines), threads, timing, the matmul
ceiling, the machine's description, interleaved repeats and Markdown tables.

Every benchmark measures its variants side by side in one run, interleaved round by round,
and reports medians (this machine is small and shared: absolute numbers drift, ratios of
neighbouring measurements much less). A benchmark imports this module before anything
that loads transformers, datasets or Ray, so that the environment below is in place.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bundled assets only, never the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # silences DeepSpeed's accelerator notice

import torch

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ preamble


def private_ray() -> None:
    """A private local Ray for the benchmark even if someone ran ``ray start`` here."""
    os.environ["RAY_ADDRESS"] = "local"


def tests_on_path() -> None:
    """``tests/`` importable (``s3server``: the SeaweedFS helper of the tests)."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of the script's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def add_quiet_options(parser: argparse.ArgumentParser, *, max_busy: float,
                      quiet_timeout: float, min_cpu_share: float = 0.9,
                      retries: int = 2) -> None:
    """``--max-busy``, ``--quiet-timeout``, ``--min-cpu-share``, ``--retries``: waiting for
    a quiet machine and measuring a contended run again."""
    parser.add_argument("--max-busy", type=float, default=max_busy,
                        help="before each measurement wait until other processes use at most "
                        "this fraction of the CPUs (1: never wait)")
    parser.add_argument("--quiet-timeout", type=float, default=quiet_timeout,
                        help="longest wait for a quiet machine per measurement, seconds")
    parser.add_argument("--min-cpu-share", type=float, default=min_cpu_share,
                        help="a measurement whose CPU seconds / (wall × threads) is below "
                        "this was contended and is measured again")
    parser.add_argument("--retries", type=int, default=retries,
                        help="re-measurements of a contended measurement")


def add_matmul_options(parser: argparse.ArgumentParser) -> None:
    """``--matmul-n`` and ``--matmul-seconds`` of the matmul ceiling."""
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--matmul-seconds", type=float, default=2.0)


def add_precision_option(parser: argparse.ArgumentParser, of: str) -> None:
    """``--precision auto|fp32|bf16`` (``of``: what it sets); see :func:`resolve_precision`."""
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help=f"of {of} (auto: bf16 where this CPU has native bf16, else fp32)")


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser``'s arguments; a ``--precision`` of "auto" becomes
    :func:`bench_precision`'s answer (with a note where bf16 is only emulated)."""
    args = parser.parse_args(argv)
    if getattr(args, "precision", None) == "auto":
        args.precision = bench_precision()
        if args.precision != "bf16":
            print(emulated_bf16_note(), flush=True)
    return args


def config_parser(doc: str, default_config: str) -> argparse.ArgumentParser:
    """A parser for a benchmark over an experiment config: the whole docstring as its
    description, ``--config`` (default ``default_config`` under the repository) and
    ``key=value`` overrides."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / default_config))
    parser.add_argument("overrides", nargs="*")
    return parser


def run_mtkd(*args: str) -> None:
    """``python -m mtkd ARGS`` in the caller's folder (relative paths in the config and in
    what is read afterwards mean the same); CalledProcessError when it fails."""
    subprocess.run([sys.executable, "-m", "mtkd", *args], check=True)


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A fresh temporary folder, deleted at the end unless ``keep``."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def python_processes(code: str, processes: int) -> list[float]:
    """Run ``code`` in ``processes`` fresh Pythons at once (one torch/OpenMP thread each,
    ``bench/`` importable); the number each printed last."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "bench"), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env,
                              text=True) for _ in range(processes)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def import_seconds(modules: str, concurrent: int) -> list[float]:
    """Wall seconds of a fresh Python importing ``modules`` (comma-separated, as in an
    import statement), ``concurrent`` processes at once."""
    return python_processes("import time; t = time.perf_counter(); "
                            f"import {modules}; print(time.perf_counter() - t)", concurrent)


def begin(script: str, argv: Sequence[str] | None = None, *, threads: int | None = 2,
          mtkd_level: int = logging.WARNING) -> dict[str, Any]:
    """The start of every benchmark: warnings-only logging (mtkd's at ``mtkd_level``),
    ``threads`` torch threads, no ``datasets`` progress bars, then the header: the command
    line and the machine. Returns :func:`machine`'s description."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("mtkd").setLevel(mtkd_level)
    if threads:
        set_threads(threads)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    info = machine()
    args = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"# bench/{script}  {args or '(defaults)'}")
    print(f"machine: {describe_machine(info)}", flush=True)
    return info


def result(name: str, value: float | str, note: str = "", digits: int = 3) -> None:
    """One ``RESULT <name> <value> (<note>)`` line (the note, e.g. the target, only when
    given), what docs/BENCHMARKS.md quotes; a float with ``digits`` decimals."""
    shown = value if isinstance(value, str) else f"{value:.{digits}f}"
    print(f"RESULT {name} {shown}" + (f" ({note})" if note else ""), flush=True)


def quiet_wait(args: argparse.Namespace) -> tuple[Callable[[], None], list[tuple[float, float]]]:
    """A ``before`` for :func:`interleave`: wait for a quiet machine (``--max-busy``,
    ``--quiet-timeout``) and say so when it took over a second; and the list of (seconds
    waited, others' CPU use) it fills."""
    waits: list[tuple[float, float]] = []

    def before() -> None:
        if args.max_busy < 1.0:
            waited, busy = wait_for_quiet(args.max_busy, args.quiet_timeout)
            waits.append((waited, busy))
            if waited > 1.0:
                print(f"  (waited {waited:.0f} s for other processes to leave the CPUs; "
                      f"others' use now {busy:.0%})", flush=True)

    return before, waits


def set_threads(n: int = 2) -> int:
    """Intra-op threads for torch (the whole benchmark runs in this one process)."""
    torch.set_num_threads(n)
    return torch.get_num_threads()


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds and this process's CPU seconds (all threads) of one measurement."""

    wall: float
    cpu: float

    def cpu_share(self, threads: int | None = None) -> float:
        """CPU seconds / (wall seconds × threads): near 1.0 when the process had its threads'
        cores to itself, lower when other processes took them."""
        return self.cpu / max(self.wall * (threads or torch.get_num_threads()), 1e-12)


def timed(fn: Callable[[], T]) -> tuple[T, Timing]:
    """Run ``fn`` once; its result and :class:`Timing`."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, Timing(time.perf_counter() - wall, time.process_time() - cpu)


def matmul_gflops(n: int = 2048, dtype: torch.dtype = torch.float32,
                  seconds: float = 2.0) -> float:
    """GFLOP/s of square ``n × n`` matmuls (``2 n³`` FLOPs each) repeated for about
    ``seconds``; the median call time after one untimed call. The machine's speed ceiling
    for dense work in ``dtype``."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)
    calls: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(calls) < 3:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        calls.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(calls) / 1e9


@dataclass
class Ceiling:
    """One matmul-ceiling measurement: GFLOP/s and its timing."""

    gflops: float
    timing: Timing

    def cpu_share(self) -> float:
        return self.timing.cpu_share()


def matmul_variant(args: Any, dtype: torch.dtype) -> Callable[[], Ceiling]:
    """A variant for :func:`interleave`: the matmul ceiling in ``dtype`` (``--matmul-n``,
    ``--matmul-seconds``)."""
    def run() -> Ceiling:
        gflops, timing = timed(lambda: matmul_gflops(args.matmul_n, dtype, args.matmul_seconds))
        return Ceiling(gflops, timing)

    return run


def _cpu_times() -> tuple[float, float]:
    """(busy, total) seconds of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as file:
        values = [float(v) for v in file.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


def other_load(probe: float = 0.5) -> float:
    """Fraction of the machine's CPUs that other processes kept busy over ``probe`` seconds
    (0.0: idle; 1.0: every core busy with other work)."""
    try:
        busy0, total0 = _cpu_times()
        own0 = time.process_time()
        time.sleep(probe)
        busy1, total1 = _cpu_times()
        own = time.process_time() - own0
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(busy1 - busy0 - own, 0.0) / max(total1 - total0, 1e-9)


def wait_for_quiet(max_busy: float = 0.15, timeout: float = 120.0) -> tuple[float, float]:
    """Sleep until other processes use at most ``max_busy`` of the CPUs (or ``timeout``
    seconds pass): torch's threads collapse when another process takes one of their cores.
    Returns (seconds waited, last busy fraction seen)."""
    start = time.perf_counter()
    busy = other_load()
    while busy > max_busy and time.perf_counter() - start < timeout:
        time.sleep(2.0)
        busy = other_load()
    return time.perf_counter() - start, busy


def interleave(variants: Mapping[str, Callable[[], T]], rounds: int, *,
               progress: Callable[[int, str, T, bool], None] | None = None,
               before: Callable[[], object] | None = None,
               quality: Callable[[T], float] | None = None, good_enough: float = 0.0,
               retries: int = 0) -> dict[str, list[T]]:
    """Run every variant once per round, rounds one after another (order reversed on odd
    rounds, so slow drift of the machine does not favour one variant); results per variant
    in round order.

    ``before`` runs ahead of every attempt (e.g. :func:`wait_for_quiet`). A result whose
    ``quality`` (e.g. :meth:`Timing.cpu_share`: low when another process took a core) is
    below ``good_enough`` is measured again, up to ``retries`` times, and the best attempt
    is kept. ``progress(round, name, result, good)`` sees every attempt.
    """
    results: dict[str, list[T]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            attempts: list[T] = []
            for _ in range(retries + 1):
                if before:
                    before()
                attempts.append(variants[name]())
                good = quality is None or quality(attempts[-1]) >= good_enough
                if progress:
                    progress(r, name, attempts[-1], good)
                if good:
                    break
            results[name].append(max(attempts, key=quality) if quality else attempts[-1])
    return results


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of per-round ratios (each round's two numbers were measured minutes apart at
    most, so the machine's drift cancels better than in a ratio of medians)."""
    return median(a / b for a, b in zip(numerators, denominators, strict=True))


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, torch, threads, date, load."""
    flags = _cpu_flags()
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages * page / 2**30, 1)
    except (ValueError, OSError):
        memory_gib = None
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "isa": " ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def describe_machine(info: Mapping[str, Any] | None = None) -> str:
    """One line for logs and docs."""
    m = dict(info or machine())
    return (f"{m['cpu']}, {m['cores']} cores ({m['isa'] or 'no AVX-512'}), "
            f"{m['memory_gib']} GiB, Python {m['python']}, torch {m['torch']}, "
            f"{m['threads']} threads; {m['date']}; load avg at start {m['load_avg_1m']}")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (cells are str()'d)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bf16_native() -> bool:
    """Whether this CPU runs bf16 in hardware (mtkd's precision probe: avx512_bf16/AMX, and
    oneDNN not capped below them)."""
    from mtkd.precision import probe_device

    return probe_device("cpu").native_bf16


def bench_precision() -> str:
    """What ``precision: auto`` resolves to on this CPU: bf16 where it is native, else
    fp32. Benchmarks time their mixed-precision variants in it, so that a CPU that only
    emulates bf16 (65x slower on a Zen 3) is not left running for an hour."""
    from mtkd.precision import resolve_here

    return resolve_here("auto", "cpu").precision


def emulated_bf16_note() -> str:
    """One line for a benchmark's output where bf16 variants are skipped: the probe's
    figures, measured briefly."""
    from mtkd.precision import bf16_cost, probe_device

    return (f"bf16 is emulated on this CPU ({probe_device('cpu').describe()}): "
            f"{bf16_cost()}; bf16 variants are not timed")
