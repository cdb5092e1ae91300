"""The precision rule over every kind of device, the device probe (with what torch and the
CPU report mocked), the stage check, and the fp16 loss-scaled path of the teachers'
backend on CPU."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from mtkd import precision as P
from mtkd.config import TrainingConfig
from mtkd.model.mtdnn import build_mtdnn
from mtkd.precision import (
    DeviceInfo,
    PrecisionError,
    Resolved,
    onednn_allows_bf16,
    probe_device,
    resolve_precision,
    stage_precision,
)
from mtkd.tasks.spec import TaskSpec
from mtkd.training.backend import TorchBackend

H200 = DeviceInfo("cuda", "NVIDIA H200", "9.0", True)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", "8.0", True)
A10G = DeviceInfo("cuda", "NVIDIA A10G", "8.6", True)
V100 = DeviceInfo("cuda", "Tesla V100-SXM2-16GB", "7.0", False)
T4 = DeviceInfo("cuda", "Tesla T4", "7.5", False)
P100 = DeviceInfo("cuda", "Tesla P100-PCIE-16GB", "6.0", False)
ZEN4 = DeviceInfo("cpu", "AMD EPYC 9R14", "AVX512", True)
ZEN3 = DeviceInfo("cpu", "AMD EPYC 7R13", "AVX2", False)
ICELAKE = DeviceInfo("cpu", "Intel Xeon", "AVX512", False)
MPS = DeviceInfo("mps", "mps", "", False)

REAL_BF16_COST = P.bf16_cost
REFUSED, WARNED = "refused", "warned"
# device -> what each requested value becomes: a precision, "refused" (PrecisionError) or
# "warned" (runs as asked, with a warning). The rule of issue 13 / mtkd.precision.
TABLE = {
    H200: {"auto": "bf16", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"},
    A100: {"auto": "bf16", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"},
    A10G: {"auto": "bf16", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"},
    V100: {"auto": "fp16", "fp32": "fp32", "bf16": REFUSED, "fp16": "fp16"},
    T4: {"auto": "fp16", "fp32": "fp32", "bf16": REFUSED, "fp16": "fp16"},
    P100: {"auto": "fp32", "fp32": "fp32", "bf16": REFUSED, "fp16": "fp16"},
    ZEN4: {"auto": "bf16", "fp32": "fp32", "bf16": "bf16", "fp16": REFUSED},
    ZEN3: {"auto": "fp32", "fp32": "fp32", "bf16": WARNED, "fp16": REFUSED},
    ICELAKE: {"auto": "fp32", "fp32": "fp32", "bf16": WARNED, "fp16": REFUSED},
    MPS: {"auto": "fp32", "fp32": "fp32", "bf16": WARNED, "fp16": REFUSED},
}
CASES = [(device, requested, expected) for device, row in TABLE.items()
         for requested, expected in row.items()]


@pytest.fixture(autouse=True)
def cheap_bf16_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning's cost figure is measured; here a fixed text keeps the table fast."""
    monkeypatch.setattr(P, "bf16_cost", lambda: "bf16 matmul 1.0 GFLOP/s vs fp32 65.0 here "
                                                "(65x slower)")


@pytest.mark.parametrize(("device", "requested", "expected"), CASES,
                         ids=[f"{d.name}-{r}" for d, r, _ in CASES])
def test_the_rule_over_every_device(device: DeviceInfo, requested: str, expected: str) -> None:
    key = "teachers.training.precision"
    if expected == REFUSED:
        with pytest.raises(PrecisionError) as err:
            resolve_precision(requested, device, key)
        text = str(err.value)
        assert key in text and "fix:" in text and requested in text, text
        return
    resolved = resolve_precision(requested, device, key)
    assert resolved.requested == requested
    if expected == WARNED:
        assert resolved.precision == requested
        assert resolved.warning is not None
        assert key in resolved.warning and "65x slower" in resolved.warning
        assert "auto or fp32" in resolved.warning
    else:
        assert resolved.precision == expected
        assert resolved.warning is None
    assert resolved.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16,
                              "fp16": torch.float16}[resolved.precision]
    assert resolved.loss_scaling == (resolved.precision == "fp16")


def test_unknown_value_is_refused() -> None:
    with pytest.raises(PrecisionError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", ZEN4)


def test_resolution_is_recorded_as_plain_data() -> None:
    resolved = resolve_precision("auto", V100, "student.training.precision")
    assert resolved.to_json() == {"requested": "auto", "precision": "fp16",
                                  "device": {"type": "cuda", "name": "Tesla V100-SXM2-16GB",
                                             "capability": "7.0", "native_bf16": False}}
    assert DeviceInfo(**resolved.to_json()["device"]) == V100
    assert resolved.describe() == ("auto -> fp16 on cuda Tesla V100-SXM2-16GB "
                                   "(compute capability 7.0)")
    assert ZEN3.describe() == "cpu AMD EPYC 7R13 (AVX2, bf16 emulated)"


# ------------------------------------------------------------------------ the probe


@pytest.mark.parametrize(("env", "allowed"), [
    ({}, True), ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True), ({"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
    ({"DNNL_MAX_CPU_ISA": "AVX2"}, False), ({"ONEDNN_MAX_CPU_ISA": "nonsense"}, True),
])
def test_onednn_isa_cap(env: dict[str, str], allowed: bool) -> None:
    assert onednn_allows_bf16(env) is allowed


@pytest.mark.parametrize(("flags", "env", "native"), [
    ({"avx512_bf16": True, "amx_bf16": False}, {}, True),   # Zen 4, Cooper Lake
    ({"avx512_bf16": False, "amx_bf16": True}, {}, True),   # AMX without avx512_bf16
    ({"avx512_bf16": False, "amx_bf16": False}, {}, False),  # Zen 3, Ice Lake
    ({"avx512_bf16": True, "amx_bf16": False}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
])
def test_cpu_probe(monkeypatch: pytest.MonkeyPatch, flags: dict, env: dict,
                   native: bool) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {**flags, "cpu_name": "Test CPU"})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    P._cpu_info.cache_clear()
    try:
        info = probe_device("cpu")
    finally:
        P._cpu_info.cache_clear()
    assert info == DeviceInfo("cpu", "Test CPU", "AVX512", native)
    assert resolve_precision("auto", info).precision == ("bf16" if native else "fp32")


@pytest.mark.parametrize(("capability", "auto"), [((9, 0), "bf16"), ((8, 0), "bf16"),
                                                  ((8, 6), "bf16"), ((7, 5), "fp16"),
                                                  ((7, 0), "fp16"), ((6, 1), "fp32")])
def test_cuda_probe(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int],
                    auto: str) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "GPU X")
    info = probe_device("cuda")
    assert info.capability == f"{capability[0]}.{capability[1]}"
    assert info.native_bf16 is (capability[0] >= 8)
    assert resolve_precision("auto", info).precision == auto


def test_probe_of_this_cpu_agrees_with_its_flags() -> None:
    """On the machine running the suite: native bf16 exactly when /proc/cpuinfo lists
    avx512_bf16 or amx_bf16 (and oneDNN is not capped)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        pytest.skip("no /proc/cpuinfo on this OS")
    expected = bool({"avx512_bf16", "amx_bf16"} & words) and onednn_allows_bf16()
    assert probe_device("cpu").native_bf16 is expected


def test_bf16_cost_is_a_measurement() -> None:
    text = REAL_BF16_COST.__wrapped__(n=64, seconds=0.01)  # the real function, uncached
    match = re.fullmatch(r"bf16 matmul ([\d.]+) GFLOP/s vs fp32 ([\d.]+) here \((\d+)x slower\)",
                         text)
    assert match, text
    assert float(match[1]) > 0 and float(match[2]) > 0


# ------------------------------------------------------------------------ stage check


def test_stage_check_warns_once_and_refuses(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mtkd"):
        resolved = stage_precision("teachers", "teachers.training.precision", "bf16", ZEN3)
    assert resolved is not None and resolved.precision == "bf16"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "teachers.training.precision" in warnings[0].getMessage()
    assert any("bf16 -> bf16 on cpu AMD EPYC 7R13" in r.getMessage() for r in caplog.records)
    with pytest.raises(PrecisionError, match=r"student\.training\.precision"):
        stage_precision("student", "student.training.precision", "bf16", V100)
    assert stage_precision("soft", "soft_targets.precision", "auto", None) is None


# ------------------------------------------------------------------------ fp16 on CPU

SPEC = TaskSpec("cls", "classification", ("a", "b"), ("accuracy",), 8)
FP16_ON_CPU = Resolved("fp16", "fp16", DeviceInfo("cpu", "test", "AVX2", False))


def _backend(encoder_dir: Path, resolved: Resolved | None) -> TorchBackend:
    model = build_mtdnn(encoder_dir, [SPEC], dropout=0.0, seed=0)
    config = TrainingConfig(batch_size=4, learning_rate=1e-3, grad_clip=1.0,
                            precision=resolved.precision if resolved else "fp32")
    return TorchBackend(model, config, total_steps=10, resolved=resolved)


def _step(backend: TorchBackend, poison: bool = False) -> None:
    torch.manual_seed(1)
    inputs = {"input_ids": torch.randint(5, 12, (4, 8)),
              "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    logits = backend.forward("cls", inputs)
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 0, 1]))
    if poison:  # an overflow in backward: every gradient becomes inf
        loss = loss * torch.tensor(float("inf"))
    backend.backward(loss)
    assert backend.step()


def test_fp16_loss_scaling_grows_and_skips_overflow_steps(tiny_encoder_dir: Path) -> None:
    backend = _backend(tiny_encoder_dir, FP16_ON_CPU)
    assert backend.precision == "fp16" and backend.scaler is not None
    # Torch's public GradScaler knobs: start at 2**10, double after 2 clean steps.
    backend.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    _step(backend)
    _step(backend)
    assert backend.loss_scale() == 2.0**11  # grew after two finite steps
    changed = {k: v.clone() for k, v in backend.model.state_dict().items()}
    assert any(not torch.equal(before[k], changed[k]) for k in before)

    _step(backend, poison=True)
    assert backend.loss_scale() == 2.0**10  # halved
    assert backend.skipped_steps == 1
    after = backend.model.state_dict()
    assert all(torch.equal(changed[k], after[k]) for k in changed)  # the step was skipped
    state = backend.state_dict()
    assert state["scaler"]["scale"] == 2.0**10 and state["skipped_steps"] == 1


def test_fp16_training_follows_fp32(tiny_encoder_dir: Path) -> None:
    """Loss-scaled fp16 takes (nearly) the steps fp32 takes: the scale is divided out."""
    runs = {}
    for name, resolved in (("fp32", None), ("fp16", FP16_ON_CPU)):
        backend = _backend(tiny_encoder_dir, resolved)
        for _ in range(3):
            _step(backend)
        runs[name] = backend.model.state_dict()
    for key, value in runs["fp32"].items():
        torch.testing.assert_close(runs["fp16"][key], value, atol=2e-3, rtol=0)


def test_fp32_backend_has_no_scaler(tiny_encoder_dir: Path) -> None:
    backend = _backend(tiny_encoder_dir, None)
    assert backend.scaler is None and backend.loss_scale() is None
    assert backend.resolved.requested == "fp32" and backend.resolved.device.type == "cpu"


@pytest.mark.parametrize(("flags", "cap", "reason"), [
    ({"avx512_bf16": False, "amx_bf16": False}, None, "no avx512_bf16/AMX"),
    ({"avx512_bf16": True, "amx_bf16": False}, "AVX2", "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN"),
])
def test_the_warning_gives_the_real_reason(monkeypatch: pytest.MonkeyPatch, flags: dict,
                                           cap: str | None, reason: str) -> None:
    monkeypatch.setattr(P, "_cpu_flags", lambda: flags)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    warning = resolve_precision("bf16", ZEN3, "student.training.precision").warning
    assert warning is not None and reason in warning, warning
