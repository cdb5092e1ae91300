"""The precision rule: which number format a piece of work runs in, from the device it got.

One function, :func:`resolve_precision`, decides for every caller: teacher trials, Ray
Data soft-target actors, student workers, in-stage evaluation, the report and
``mtkd predict``. Each of them probes the device it actually runs on
(:func:`probe_device`) and resolves the configured value there:

* ``auto`` (the default of every precision setting)
    - CUDA with compute capability >= 8.0 (A100, A10G, L4, H100, ...) -> ``bf16``;
    - CUDA 7.x (V100, T4: fp16 tensor cores, no bf16) -> ``fp16``, training with dynamic
      loss scaling (torch's GradScaler in the teachers' backend, DeepSpeed's in the
      student), inference in fp16;
    - a CPU with native bf16 (avx512_bf16 or AMX) -> ``bf16``;
    - anything else -> ``fp32``.
* an explicit value the hardware cannot run well: ``bf16`` on a CPU that only emulates it
  runs (with a warning that names the cost and the fix); ``bf16`` on CUDA < 8.0 and
  ``fp16`` on a CPU are refused with :class:`PrecisionError`.

Why: without avx512_bf16/AMX, oneDNN emulates bf16. Measured on 2-core machines
(docs/BENCHMARKS.md): a Zen 3 (AVX2) runs a bf16 matmul 65x slower than fp32, an Ice Lake
(AVX-512 without bf16) 4x slower; a Zen 4 with avx512_bf16 runs it 2x faster. V100s and
T4s have no bf16 at all (NVIDIA compute capability 7.x).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, get_args

import torch

from mtkd.config.schema import Precision
from mtkd.errors import MtkdError

PRECISIONS: tuple[str, ...] = get_args(Precision)
"""Accepted values of every precision setting: auto, fp32, bf16, fp16."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Resolved precision -> the torch dtype of its autocast (fp32: no autocast)."""

# oneDNN's CPU ISA levels, lowest first; ONEDNN_MAX_CPU_ISA caps what it may use. Below
# AVX512_CORE_BF16 it does not use the bf16 instructions even when the CPU has them.
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16",
                "AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16",
                "AVX512_CORE_AMX_FP16", "DEFAULT", "ALL")


class PrecisionError(MtkdError):
    """An explicit precision this device cannot run (the CLI exits with code 2)."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the precision rule needs to know about one device, as it reports itself."""

    type: str
    """"cpu" or "cuda" (anything else resolves auto to fp32)."""
    name: str
    """CPU model or GPU name, for people reading artifacts."""
    capability: str
    """CPU: torch's ATen kernel level (e.g. "AVX2", "AVX512"); CUDA: compute capability
    "major.minor"."""
    native_bf16: bool
    """bf16 matmuls run in hardware: CUDA >= 8.0, or a CPU with avx512_bf16/AMX that
    oneDNN is allowed to use."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.type == "cuda":
            return f"cuda {self.name} (compute capability {self.capability})"
        bf16 = "native bf16" if self.native_bf16 else "bf16 emulated"
        return f"cpu {self.name} ({self.capability}, {bf16})"


def _cpu_flags() -> dict[str, bool]:
    """The CPU's bf16 feature flags (torch's cpuinfo, else /proc/cpuinfo)."""
    try:
        caps = torch.cpu.get_capabilities()
        return {k: bool(caps.get(k)) for k in ("avx512_bf16", "amx_bf16")}
    except (AttributeError, RuntimeError):  # torch < 2.6 has no get_capabilities
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            words = set(f.read().split())
    except OSError:
        words = set()
    return {k: k in words for k in ("avx512_bf16", "amx_bf16")}


def onednn_allows_bf16(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """False when ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA) caps oneDNN below
    AVX512_CORE_BF16, so that bf16 is emulated even on a CPU that has it."""
    cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").upper()
    if cap not in _ONEDNN_ISAS:
        return True  # unset or unknown: oneDNN uses what the CPU has
    return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index("AVX512_CORE_BF16")


@functools.lru_cache(maxsize=1)
def _cpu_info() -> DeviceInfo:
    flags = _cpu_flags()
    try:
        name = str(torch.cpu.get_capabilities().get("cpu_name", "")) or "unknown CPU"
    except (AttributeError, RuntimeError):
        name = "unknown CPU"
    native = (flags["avx512_bf16"] or flags["amx_bf16"]) and onednn_allows_bf16()
    return DeviceInfo("cpu", name, torch.backends.cpu.get_cpu_capability(), native)


def probe_device(device: torch.device | str = "cpu") -> DeviceInfo:
    """Describe ``device`` (the one this process will run the work on)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return DeviceInfo("cuda", torch.cuda.get_device_name(index), f"{major}.{minor}",
                          major >= 8)
    if device.type == "cpu":
        return _cpu_info()
    return DeviceInfo(device.type, device.type, "", False)


@dataclass(frozen=True)
class Resolved:
    """The outcome of the rule for one piece of work; recorded in its artifacts."""

    requested: str
    """The configured value ("auto", "fp32", "bf16", "fp16")."""
    precision: str
    """What the work runs in: "fp32", "bf16" or "fp16"."""
    device: DeviceInfo
    warning: str | None = None
    """Set when an explicit choice runs, but badly, on this device."""

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def loss_scaling(self) -> bool:
        """fp16 training needs dynamic loss scaling (bf16 has fp32's exponent range)."""
        return self.precision == "fp16"

    def to_json(self) -> dict[str, Any]:
        return {"requested": self.requested, "precision": self.precision,
                "device": self.device.to_json()}

    def describe(self) -> str:
        """One line for logs and the report, e.g. "auto -> fp32 on cpu ... (AVX2, ...)"."""
        return f"{self.requested} -> {self.precision} on {self.device.describe()}"


def resolve_precision(requested: str, device: DeviceInfo, key: str = "precision") -> Resolved:
    """Apply the precision rule (module docstring) to ``requested`` on ``device``.

    ``key`` names the setting in error messages (e.g. "teachers.training.precision").
    Raises :class:`PrecisionError` for bf16 on CUDA < 8.0 and fp16 on a CPU.
    """
    if requested not in PRECISIONS:
        raise PrecisionError(f"{key}: unknown precision {requested!r} (fix: use one of "
                             f"{', '.join(PRECISIONS)})")
    cuda = device.type == "cuda"
    major = int(device.capability.split(".")[0]) if cuda and device.capability else 0
    if requested == "auto":
        if cuda and major >= 8:
            chosen = "bf16"
        elif cuda and major == 7:
            chosen = "fp16"
        elif device.type == "cpu" and device.native_bf16:
            chosen = "bf16"
        else:
            chosen = "fp32"
        return Resolved(requested, chosen, device)
    if requested == "fp16" and not cuda:
        raise PrecisionError(
            f"{key}: fp16 on {device.describe()}: CPUs have no fast fp16 (torch and DeepSpeed "
            "refuse or crawl) (fix: set it to auto or fp32, or give the work a GPU)")
    if requested == "bf16" and cuda and not device.native_bf16:
        raise PrecisionError(
            f"{key}: bf16 on {device.describe()}: bf16 needs compute capability 8.0 or newer "
            "(fix: set it to auto, which picks fp16 with loss scaling here, or fp16/fp32)")
    warning = None
    if requested == "bf16" and not device.native_bf16:
        warning = (f"{key}: bf16 on {device.describe()}: {_why_emulated()}, so bf16 is "
                   f"emulated: {bf16_cost()} (fix: set it to auto or fp32)")
    return Resolved(requested, requested, device, warning)


def _why_emulated() -> str:
    flags = _cpu_flags()
    if (flags["avx512_bf16"] or flags["amx_bf16"]) and not onednn_allows_bf16():
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
        return (f"this CPU has native bf16 but ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN from "
                "using it")
    return "this CPU has no avx512_bf16/AMX"


def matmul_gflops_one_thread(dtype: torch.dtype, n: int = 256,
                             seconds: float = 0.15) -> float:
    """GFLOP/s of n x n matmuls in ``dtype`` on one thread, repeated for about ``seconds``
    (at least 3 calls after one untimed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(n, n).to(dtype)
        a @ a
        count, start = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - start < seconds:
            a @ a
            count += 1
        return 2 * n**3 * count / (time.perf_counter() - start) / 1e9
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def bf16_cost(n: int = 256, seconds: float = 0.15) -> str:
    """A short measurement of what emulated bf16 costs here: fp32 against bf16 matmul
    throughput (one thread, n x n), e.g. "bf16 matmul 1.7 GFLOP/s vs fp32 115 (68x slower)".
    """
    fp32 = matmul_gflops_one_thread(torch.float32, n, seconds)
    bf16 = matmul_gflops_one_thread(torch.bfloat16, n, seconds)
    return (f"bf16 matmul {bf16:.1f} GFLOP/s vs fp32 {fp32:.1f} here "
            f"({fp32 / max(bf16, 1e-9):.0f}x slower)")


def resolve_here(requested: str, device: torch.device | str, key: str = "precision"
                 ) -> Resolved:
    """Probe ``device`` and resolve ``requested`` on it (what workers and actors call)."""
    return resolve_precision(requested, probe_device(device), key)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for a *resolved* precision ("fp32": none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ValueError(f"autocast needs a resolved precision, got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def stage_precision(stage: str, key: str, requested: str, device: DeviceInfo | None
                    ) -> Resolved | None:
    """The check a stage's driver makes before it starts its workers, on the device its
    work was probed to get (``None``: not probed; the workers decide alone).

    Logs one line with the outcome and, for an explicit precision the device runs badly,
    one warning (the workers resolve again where they run and do not repeat it). Raises
    :class:`PrecisionError` (exit 2) for a precision the device cannot run.
    """
    logger = logging.getLogger("mtkd")
    if device is None:
        logger.info("[%s] %s: %s, decided on each worker's device", stage, key, requested)
        return None
    resolved = resolve_precision(requested, device, key)
    logger.info("[%s] %s %s", stage, key, resolved.describe())  # the key: a stage may
    # resolve two (the student: its training's and report.precision for its scores)
    if resolved.warning:
        logger.warning("[%s] %s", stage, resolved.warning)
    return resolved
