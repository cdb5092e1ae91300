"""Helpers shared by the benchmarks in ``bench/``: threads, timing, the matmul ceiling, the
machine's description, interleaved repeats and Markdown tables.

Every benchmark measures its variants side by side in one run, interleaved round by round,
and reports medians (this machine is small and shared: absolute numbers drift, ratios of
neighbouring measurements much less).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


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
