"""The student's DeepSpeed adapter in one process (gloo, world size 1, as Ray Train sets it
up for one worker): the generated config, the same numerics as the teachers' TorchBackend,
and checkpoint round trips in both mixed-precision modes."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch

from mtkd.config import config_from_dict
from mtkd.config.schema import StudentConfig
from mtkd.model.mtdnn import build_mtdnn
from mtkd.precision import DeviceInfo, Resolved
from mtkd.student.deepspeed_backend import DeepSpeedBackend, deepspeed_config
from mtkd.student.stage import consolidate
from mtkd.tasks.spec import TaskSpec
from mtkd.training.backend import TorchBackend

SPECS = [TaskSpec("cls", "classification", ("neg", "pos"), ("accuracy",), 16)]


def student(precision: str = "bf16", zero: int | str = "auto", mixed: str = "autocast",
            workers: int = 1) -> StudentConfig:
    return config_from_dict({
        "name": "t", "tasks": [{"name": "rotten_tomatoes"}],
        "student": {"num_workers": workers, "use_gpu": precision == "fp16",
                    "deepspeed": {"zero_stage": zero, "mixed_precision": mixed},
                    "training": {"precision": precision, "batch_size": 8, "grad_clip": 1.0,
                                 "learning_rate": 1e-3, "warmup_ratio": 0.0,
                                 "dropout": 0.0}}}).student


# ------------------------------------------------------------------------ generated config


def test_autocast_mode_keeps_fp32_weights_and_reduces_gradients_in_fp32() -> None:
    config = deepspeed_config(student("bf16"), world_size=1)
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16",
                                        "lower_precision_safe_modules": []}
    assert "bf16" not in config and "fp16" not in config
    assert deepspeed_config(student("fp16"), 1)["torch_autocast"]["dtype"] == "float16"


def test_half_weights_mode_is_deepspeeds_bf16_and_fp16() -> None:
    bf16 = deepspeed_config(student("bf16", mixed="half_weights"), 1)
    assert bf16["bf16"] == {"enabled": True} and "torch_autocast" not in bf16
    fp16 = deepspeed_config(student("fp16", mixed="half_weights"), 1)
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0  # dynamic scaling


@pytest.mark.parametrize(("resolved", "section"), [
    ("bf16", {"torch_autocast": "bfloat16"}), ("fp16", {"torch_autocast": "float16"}),
    ("fp32", {})])
def test_auto_takes_the_precision_resolved_on_the_worker(resolved: str,
                                                         section: dict[str, str]) -> None:
    config = deepspeed_config(student("auto"), 1, precision=resolved)
    found = {k: config[k]["dtype"] for k in ("torch_autocast",) if k in config}
    assert found == section
    assert not {"bf16", "fp16"} & set(config)


def test_unresolved_auto_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="resolved precision"):
        deepspeed_config(student("auto"), 1)


def test_fp32_has_no_mixed_precision_section() -> None:
    for mixed in ("autocast", "half_weights"):
        config = deepspeed_config(student("fp32", mixed=mixed), 1)
        assert not {"torch_autocast", "bf16", "fp16"} & set(config)


def test_zero_stage_auto_is_0_for_one_worker_and_2_for_several() -> None:
    assert student(workers=1).zero_stage == 0
    assert student(workers=2).zero_stage == 2
    assert student(zero=1, workers=1).zero_stage == 1  # an explicit stage is kept
    config = deepspeed_config(student(workers=2), world_size=2)
    assert config["zero_optimization"]["stage"] == 2
    assert config["train_batch_size"] == 16


def test_offload_only_applies_to_zero_stages_that_partition() -> None:
    offload = student(zero=2)
    offload = dataclasses.replace(offload, deepspeed=dataclasses.replace(
        offload.deepspeed, offload_optimizer=True))
    assert deepspeed_config(offload, 1)["zero_optimization"]["offload_optimizer"] == {
        "device": "cpu"}
    zero0 = dataclasses.replace(offload, deepspeed=dataclasses.replace(
        offload.deepspeed, zero_stage=0))
    assert "offload_optimizer" not in deepspeed_config(zero0, 1)["zero_optimization"]


# ------------------------------------------------------------------------ engines


def batches(n: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 25, (8, 12), generator=generator)
        out.append(({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "token_type_ids": torch.zeros_like(ids)},
                    torch.randint(0, 2, (8,), generator=generator)))
    return out


def train(backend: object, data: list) -> list[float]:
    losses = []
    for inputs, labels in data:
        loss = torch.nn.functional.cross_entropy(backend.forward("cls", inputs).float(), labels)
        backend.backward(loss)
        assert backend.step()
        losses.append(loss.item())
    return losses


def fresh_model(encoder_dir: Path) -> torch.nn.Module:
    return build_mtdnn(encoder_dir, SPECS, dropout=0.0, seed=0).train()


@pytest.mark.parametrize("zero", [0, 2])
def test_autocast_engine_trains_like_the_teachers_torch_backend(
        tiny_encoder_dir: Path, process_group: None, zero: int) -> None:
    """fp32 weights + autocast through DeepSpeed (ZeRO-0 and ZeRO-2) follow the plain
    TorchBackend's bf16 losses and weights step for step."""
    config = student("bf16", zero=zero)
    data = batches(4)
    engine = DeepSpeedBackend(fresh_model(tiny_encoder_dir), config, total_steps=4,
                              world_size=1)
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())
    plain = TorchBackend(fresh_model(tiny_encoder_dir), config.training, total_steps=4)
    ours, theirs = train(engine, data), train(plain, data)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert ours[-1] != ours[0]  # it did learn something
    for (name, a), b in zip(engine.model.state_dict().items(),
                            plain.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(("zero", "mixed"), [(0, "autocast"), (2, "autocast"),
                                             (2, "half_weights")])
def test_checkpoint_round_trip_continues_the_same_run(
        tiny_encoder_dir: Path, process_group: None, tmp_path: Path, zero: int,
        mixed: str) -> None:
    """Save after 2 steps, load into a fresh engine: the next 2 steps equal the
    uninterrupted run's (weights, optimizer moments and schedule all restored)."""
    config = student("bf16", zero=zero, mixed=mixed)
    data = batches(4)
    whole = DeepSpeedBackend(fresh_model(tiny_encoder_dir), config, 4, 1)
    train(whole, data[:2])
    whole.save_state(tmp_path)
    saved = {k: v.float().clone() for k, v in whole.model.state_dict().items()}
    expected = train(whole, data[2:])
    # The export path reads the same weights back from the checkpoint (ZeRO shards or, at
    # stage 0, DeepSpeed's model-states file loaded with weights_only=True).
    consolidated = consolidate(tmp_path, zero)
    tolerance = 0 if mixed == "autocast" else 1e-2  # half_weights: fp32 masters vs bf16
    for name, value in saved.items():
        torch.testing.assert_close(consolidated[name], value, rtol=tolerance, atol=tolerance,
                                   msg=name)

    resumed = DeepSpeedBackend(build_mtdnn(tiny_encoder_dir, SPECS, dropout=0.0, seed=1),
                               config, 4, 1)
    resumed.load_state(tmp_path)
    assert resumed.learning_rate() == pytest.approx(whole_lr_after(2, config))
    assert train(resumed, data[2:]) == expected
    if mixed == "half_weights":
        assert {p.dtype for p in resumed.model.parameters()} == {torch.bfloat16}


def whole_lr_after(steps: int, config: StudentConfig) -> float:
    """The schedule's learning rate after ``steps`` of 4 (no warm-up, linear decay)."""
    return config.training.learning_rate * (4 - steps) / 4


# ------------------------------------------------------------------------ fp16 loss scaling
# What a V100/T4 resolves auto to. DeepSpeed refuses its fp16 *mode* on CPU, but its
# torch_autocast fp16 path runs here, so the loss-scaling logic is checked on CPU with the
# resolution forced (the GPU run is in docs/BENCHMARKS.md when a GPU was lent).
FP16_HERE = Resolved("fp16", "fp16", DeviceInfo("cpu", "test", "AVX2", False))


def overflowing_steps(backend: DeepSpeedBackend, steps: int, factor: float
                      ) -> tuple[int, list[float | None]]:
    """Train ``steps`` steps on a loss multiplied by ``factor``; how many changed the
    weights, and the loss scale after each."""
    ids = torch.randint(5, 25, (8, 12), generator=torch.Generator().manual_seed(0))
    changed, scales = 0, []
    for _ in range(steps):
        before = {k: v.clone() for k, v in backend.model.state_dict().items()}
        logits = backend.forward("cls", {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1] * 4))
        backend.backward(loss * factor)
        backend.step()
        after = backend.model.state_dict()
        changed += any(not torch.equal(before[k], after[k]) for k in before)
        scales.append(backend.loss_scale())
    return changed, scales


def test_fp16_autocast_at_zero0_backs_off_and_skips_overflows(tiny_encoder_dir: Path,
                                                              process_group: None) -> None:
    config = student("fp16", zero=0)
    backend = DeepSpeedBackend(fresh_model(tiny_encoder_dir), config, 20, 1, device="cpu",
                               resolved=FP16_HERE)
    assert backend.config["torch_autocast"]["dtype"] == "float16"
    # A loss 1e4 times too large overflows fp16 at the initial scale 2**16: each such step
    # is skipped and halves the scale, until the scaled gradients fit and steps go through.
    changed, scales = overflowing_steps(backend, 20, 1e4)
    assert scales[0] == 2.0**15
    assert all(b <= a for a, b in itertools.pairwise(scales))
    skipped = 20 - changed
    assert skipped >= 1 and changed >= 1
    assert scales[-1] == 2.0**16 / 2**skipped  # halved once per skipped step, no growth yet


def test_fp16_at_zero2_uses_deepspeeds_fp16_mode() -> None:
    """torch_autocast + fp16 + ZeRO 1-3 would never back off (see the next test)."""
    for zero in (1, 2, 3):
        config = deepspeed_config(student("fp16", zero=zero, workers=2), 2, "fp16")
        assert "torch_autocast" not in config
        assert config["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    assert "torch_autocast" in deepspeed_config(student("bf16", zero=2, workers=2), 2, "bf16")


def test_upstream_autocast_fp16_zero2_never_backs_off(tiny_encoder_dir: Path,
                                                      process_group: None) -> None:
    """Why fp16 at ZeRO 1-2 avoids torch_autocast: DeepSpeed's ZeRO optimizer skips an
    overflowing step before its GradScaler can lower the scale, so it stays at 2**16 and no
    step ever goes through. If this starts failing, DeepSpeed fixed it: revisit
    mtkd.student.deepspeed_backend.mixed_precision."""
    import deepspeed

    config = student("fp16", zero=2)
    raw = {**deepspeed_config(config, 1, "bf16"),
           "torch_autocast": {"enabled": True, "dtype": "float16",
                              "lower_precision_safe_modules": []}}
    model = fresh_model(tiny_encoder_dir)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=raw,
        dist_init_required=False)
    ids = torch.randint(5, 25, (8, 12))
    weights = {k: v.clone() for k, v in engine.module.state_dict().items()}
    for _ in range(6):
        logits = engine("cls", input_ids=ids, attention_mask=torch.ones_like(ids))
        engine.backward(torch.nn.functional.cross_entropy(logits.float(),
                                                          torch.tensor([0, 1] * 4)) * 1e4)
        engine.step()
    assert engine.optimizer.torch_autocast_gradscaler.get_scale() == 2.0**16
    assert all(torch.equal(v, engine.module.state_dict()[k]) for k, v in weights.items())
    import deepspeed.runtime.torch_autocast as ds_autocast

    ds_autocast.TORCH_AUTOCAST_INITIALIZED = False  # do not leak into later engines


# ------------------------------------------------------------------ heads absent from a step
TWO = [TaskSpec("cls", "classification", ("neg", "pos"), ("accuracy",), 16),
       TaskSpec("other", "classification", ("x", "y", "z"), ("accuracy",), 16)]


def test_task_aware_adamw_skips_absent_heads_as_torch_skips_missing_gradients() -> None:
    """set_tasks({"a"}) with a zero gradient on b's head == plain AdamW with b's gradient
    None: same weights, b untouched (no decay, no stale-moment update), same state."""
    from mtkd.training.optim import TaskAwareAdamW

    torch.manual_seed(0)
    start = [torch.randn(4, 3), torch.randn(4, 3)]
    ours_params = [torch.nn.Parameter(t.clone()) for t in start]
    plain_params = [torch.nn.Parameter(t.clone()) for t in start]
    ours = TaskAwareAdamW([{"params": [ours_params[0]], "task": "a"},
                           {"params": [ours_params[1]], "task": "b"}], lr=0.1,
                          weight_decay=0.5)
    plain = torch.optim.AdamW([{"params": [plain_params[0]]}, {"params": [plain_params[1]]}],
                              lr=0.1, weight_decay=0.5)
    for step, present in enumerate([{"a", "b"}, {"a"}, {"a"}, {"a", "b"}]):
        grads = [torch.randn(4, 3, generator=torch.Generator().manual_seed(step + i))
                 for i in range(2)]
        before_b = ours_params[1].detach().clone()
        for params, optimizer in ((ours_params, ours), (plain_params, plain)):
            params[0].grad = grads[0].clone()
            if params is ours_params:  # DeepSpeed's zero gradient for an absent head
                params[1].grad = grads[1].clone() if "b" in present else torch.zeros(4, 3)
                ours.set_tasks(present)
            else:
                params[1].grad = grads[1].clone() if "b" in present else None
            optimizer.step()
        if "b" not in present:
            assert torch.equal(ours_params[1].detach(), before_b)
        for a, b in zip(ours_params, plain_params, strict=True):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
    assert ours.state[ours_params[1]]["step"] == plain.state[plain_params[1]]["step"] == 2


def alternating(tasks: list[str]) -> list[tuple[str, dict[str, torch.Tensor], torch.Tensor]]:
    generator = torch.Generator().manual_seed(5)
    out = []
    for task in tasks:
        ids = torch.randint(5, 25, (8, 12), generator=generator)
        out.append((task, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                           "token_type_ids": torch.zeros_like(ids)},
                    torch.randint(0, 2 if task == "cls" else 3, (8,), generator=generator)))
    return out


@pytest.mark.parametrize("zero", [0, 2])
def test_deepspeed_leaves_absent_heads_alone_like_the_teachers_backend(
        tiny_encoder_dir: Path, process_group: None, zero: int) -> None:
    """Batches of one task at a time: the DeepSpeed student (ZeRO-0, ZeRO-2, fp32) and the
    teachers' TorchBackend end with the same weights, and a head whose task is absent from
    a step is bit-for-bit unchanged by it (weight decay is on: 0.01)."""
    config = student("fp32", zero=zero)
    data = alternating(["cls", "other", "cls", "cls", "other"])
    models = [build_mtdnn(tiny_encoder_dir, TWO, dropout=0.0, seed=0).train() for _ in "ab"]
    engine = DeepSpeedBackend(models[0], config, total_steps=len(data), world_size=1)
    plain = TorchBackend(models[1], config.training, total_steps=len(data))
    for task, inputs, labels in data:
        heads = {b: {n: p.detach().clone() for n, p in b.model.named_parameters()
                     if n.startswith("heads.")} for b in (engine, plain)}
        for backend in (engine, plain):
            loss = torch.nn.functional.cross_entropy(backend.forward(task, inputs).float(),
                                                     labels)
            backend.backward(loss)
            assert backend.step()
            for name, param in backend.model.named_parameters():
                if name.startswith("heads.") and not name.startswith(f"heads.{task}."):
                    assert torch.equal(param.detach(), heads[backend][name]), name
    for (name, a), b in zip(engine.model.state_dict().items(),
                            plain.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(("zero", "precision", "mixed"), [(0, "fp32", "autocast"),
                                                          (2, "fp32", "autocast"),
                                                          (2, "bf16", "half_weights")])
def test_full_weights_are_the_models_weights_as_fp32_on_cpu(
        tiny_encoder_dir: Path, process_group: None, zero: int, precision: str,
        mixed: str) -> None:
    engine = DeepSpeedBackend(fresh_model(tiny_encoder_dir), student(precision, zero, mixed),
                              total_steps=2, world_size=1)
    train(engine, batches(1))
    weights = engine.full_weights()
    module = engine.model.state_dict()
    assert set(weights) == set(module)
    for name, value in weights.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        torch.testing.assert_close(value, module[name].float().cpu(), rtol=0, atol=0)
        assert value.data_ptr() != module[name].data_ptr()  # a copy, not a view


def test_pruning_keeps_only_the_best_step_named_by_the_checkpoint(tmp_path: Path) -> None:
    from mtkd.storage import Storage
    from mtkd.student.worker import best_weights_file, prune_best_weights

    store = Storage.from_uri(str(tmp_path))
    for step in (10, 20, 30):
        store.write_bytes(best_weights_file(step), b"w")
    prune_best_weights(store, 20)
    assert store.list("best") == ["step-00000020.safetensors"]
    prune_best_weights(store, None)
    assert store.list("best") == []
    prune_best_weights(Storage.from_uri(str(tmp_path / "empty")), 5)  # nothing there: fine


def test_pruning_with_an_async_upload_also_keeps_the_previous_checkpoints_best(
        tmp_path: Path) -> None:
    from mtkd.storage import Storage
    from mtkd.student.worker import best_weights_file, prune_best_weights

    store = Storage.from_uri(str(tmp_path))
    for step in (10, 20, 30):
        store.write_bytes(best_weights_file(step), b"w")
    prune_best_weights(store, 30, 10)
    assert store.list("best") == ["step-00000010.safetensors", "step-00000030.safetensors"]


def test_zero_overrides_go_over_the_generated_zero_section(tiny_encoder_dir: Path,
                                                           process_group: None) -> None:
    config = student("fp32", zero=2)
    engine = DeepSpeedBackend(fresh_model(tiny_encoder_dir), config, 2, 1,
                              zero_overrides={"contiguous_gradients": False})
    assert engine.config["zero_optimization"] == {"stage": 2, "contiguous_gradients": False}
    assert engine.engine.zero_contiguous_gradients() is False
    plain = DeepSpeedBackend(fresh_model(tiny_encoder_dir), config, 2, 1)
    assert plain.config["zero_optimization"] == {"stage": 2}
