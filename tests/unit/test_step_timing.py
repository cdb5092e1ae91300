"""Per-step timing (mtkd.training.steptiming): a timed run computes what an untimed one
does, and its record adds up to the loop's own counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tiny import synthetic_task

from mtkd.config import TrainingConfig
from mtkd.data.sampler import MultiTaskBatchSampler
from mtkd.model.mtdnn import build_mtdnn
from mtkd.tasks.spec import TaskSpec
from mtkd.training.backend import TorchBackend
from mtkd.training.loop import LoopData, LoopHooks, TrainingLoop, total_optimizer_steps
from mtkd.training.steptiming import StepTimes, TimedBackend

SPECS = {"cls": TaskSpec("cls", "classification", ("neg", "pos"), ("accuracy",), 16)}


def run(encoder_dir: Path, times: StepTimes | None) -> tuple[TrainingLoop, list[int]]:
    config = TrainingConfig(epochs=1, batch_size=8, grad_accum=2, learning_rate=1e-3)
    train = {"cls": synthetic_task(40, 0, prefix="c")}
    torch.manual_seed(0)
    model = build_mtdnn(encoder_dir, list(SPECS.values()), seed=0)
    sampler = MultiTaskBatchSampler({"cls": train["cls"]["length"]}, 8, seed=0)
    backend = TorchBackend(model, config, total_optimizer_steps(config, len(sampler)))
    saved: list[int] = []
    hooks = LoopHooks(on_checkpoint=lambda state: saved.append(state.step), checkpoint_every=1)
    if times is not None:
        hooks.on_checkpoint = times.timed_hook(hooks.on_checkpoint)
    loop = TrainingLoop(TimedBackend(backend, times) if times is not None else backend,
                        LoopData(SPECS, train, {}), config, sampler=sampler, hooks=hooks,
                        log_every=10**9, keep_best_in_memory=False)
    loop.run(seed=0)
    return loop, saved


def test_timed_run_equals_untimed_and_counts_add_up(tiny_encoder_dir: Path,
                                                    tmp_path: Path) -> None:
    times = StepTimes()
    timed, saved = run(tiny_encoder_dir, times)
    plain, _ = run(tiny_encoder_dir, None)
    for (name, a), b in zip(timed.backend.model.state_dict().items(),
                            plain.backend.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # 40 examples, batch 8: 5 micro-batches an epoch, accumulation 2 -> ceil(5/2) = 3
    # optimizer steps of 2 micro-batches (the third takes epoch 1's first batch); every
    # list has one entry per step.
    assert len(times.t) == len(times.ex) == len(times.fwd) == len(times.opt) == 3
    assert times.ex == [16, 16, 16]
    lengths = np.asarray(synthetic_task(40, 0, prefix="c")["length"])
    sampler = MultiTaskBatchSampler({"cls": lengths.tolist()}, 8, seed=0)
    batches = [*sampler.batches(0), sampler.batches(1)[0]]
    tokens = [int(lengths[b.indices].sum()) for b in batches]
    assert times.tok == [tokens[0] + tokens[1], tokens[2] + tokens[3], tokens[4] + tokens[5]]
    assert all(b >= a for a, b in zip(times.t, times.t[1:], strict=False))
    assert min(times.fwd + times.bwd + times.opt) > 0
    assert times.info["backend"] == "TorchBackend" and times.info["params"] > 0
    # one record per checkpoint hook call, the final one included
    assert [c["step"] for c in times.checkpoints] == saved == [1, 2, 3, 3]
    # the backend's other attributes pass through; the record is plain JSON
    assert timed.backend.learning_rate() == plain.backend.learning_rate()
    json.dumps(times.to_json())


def test_timed_save_counts_the_bytes_written(tmp_path: Path) -> None:
    times = StepTimes()
    times.timed_save(lambda: (tmp_path / "a.bin").write_bytes(b"x" * 1000), tmp_path, 7)
    times.timed("reports", lambda: None, checkpoint=True)
    assert times.saves[0]["step"] == 7 and times.saves[0]["bytes"] == 1000
    assert times.reports[0]["checkpoint"] is True and times.reports[0]["seconds"] >= 0
