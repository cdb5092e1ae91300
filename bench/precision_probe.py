"""What bf16 costs on this CPU, and what ``precision: auto`` picks here; the same again with
oneDNN and ATen capped to AVX2 (how a Zen 3, which has no AVX-512, runs bf16).

Side by side, in one run: a matmul probe (one thread, n x n, fp32 against bf16, and fp16
for reference), each in a fresh process: as the machine is, and with
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``. Each process also reports what
mtkd's precision probe (``mtkd.precision.probe_device``) sees and what ``auto`` resolves to.

    python bench/precision_probe.py [--n 512] [--seconds 1.0]

Ends with ``RESULT`` lines: bf16_vs_fp32_matmul (as is) and bf16_vs_fp32_matmul_avx2
(capped); below 1 means bf16 is slower than fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine, markdown_table, result

CAPPED = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def probe(n: int, seconds: float) -> dict:
    """In this process: GFLOP/s per dtype (one thread) and mtkd's view of the CPU."""
    import torch

    from mtkd.precision import DTYPES, matmul_gflops_one_thread, probe_device, resolve_precision

    rates = {name: matmul_gflops_one_thread(dtype, n, seconds) for name, dtype in DTYPES.items()}
    info = probe_device("cpu")
    return {"gflops": rates, "aten": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": info.native_bf16,
            "auto": resolve_precision("auto", info).precision}


def run_child(env: dict[str, str], n: int, seconds: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", "--n", str(n), "--seconds",
                          str(seconds)], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="matrix size (default 512)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="time per dtype and setting (default 1.0)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(probe(args.n, args.seconds)))
        return 0
    print("# bench/precision_probe.py " + (" ".join(sys.argv[1:]) or "(defaults)"))
    print(f"machine: {describe_machine()}")
    results = {"as is": run_child({}, args.n, args.seconds),
               "ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2":
               run_child(CAPPED, args.n, args.seconds)}
    rows = [[name, r["aten"], f"{r['gflops']['fp32']:.1f}", f"{r['gflops']['bf16']:.1f}",
             f"{r['gflops']['fp16']:.1f}", f"{r['gflops']['bf16'] / r['gflops']['fp32']:.3f}",
             "native" if r["native_bf16"] else "emulated", r["auto"]]
            for name, r in results.items()]
    print(f"\nmatmul {args.n}x{args.n}, one thread, GFLOP/s\n")
    print(markdown_table(["setting", "ATen", "fp32", "bf16", "fp16", "bf16 / fp32",
                          "mtkd probe: bf16", "auto ->"], rows))
    as_is, capped = results.values()
    result("bf16_vs_fp32_matmul", as_is["gflops"]["bf16"] / as_is["gflops"]["fp32"])
    result("bf16_vs_fp32_matmul_avx2", capped["gflops"]["bf16"] / capped["gflops"]["fp32"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
