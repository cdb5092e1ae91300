"""The shared training loop on a tiny random BERT and synthetic, learnable tasks."""

from __future__ import annotations

import copy
import datetime
import gc
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import synthetic_task

from mtkd.config import KDConfig, TrainingConfig
from mtkd.data.sampler import MultiTaskBatchSampler
from mtkd.errors import DataError
from mtkd.model.mtdnn import build_mtdnn
from mtkd.tasks.spec import TaskSpec
from mtkd.training.backend import TorchBackend
from mtkd.training.data import TeacherArrays, align_by_uid
from mtkd.training.loop import (
    LoopData,
    LoopHooks,
    LoopState,
    TrainingLoop,
    capture_rng,
    total_optimizer_steps,
)
from mtkd.training.optim import linear_warmup_decay

SPECS = {"cls": TaskSpec("cls", "classification", ("neg", "pos"), ("accuracy",), 16),
         "reg": TaskSpec("reg", "regression", (), ("pearson",), 16)}


def make_data(teachers: dict | None = None) -> LoopData:
    train = {"cls": synthetic_task(96, 0, prefix="c"),
             "reg": synthetic_task(64, 1, regression=True, prefix="r")}
    dev = {"cls": synthetic_task(48, 2, prefix="cd"),
           "reg": synthetic_task(32, 3, regression=True, prefix="rd")}
    return LoopData(SPECS, train, dev, teachers or {})


def make_loop(encoder_dir: Path, config: TrainingConfig, data: LoopData | None = None,
              hooks: LoopHooks | None = None, kd: KDConfig | None = None,
              **loop_kwargs) -> TrainingLoop:
    data = data or make_data()
    torch.manual_seed(0)
    model = build_mtdnn(encoder_dir, list(SPECS.values()), dropout=config.dropout, seed=0)
    sampler = MultiTaskBatchSampler({t: d["length"] for t, d in data.train.items()},
                                    config.batch_size, seed=0)
    total = total_optimizer_steps(config, len(sampler))
    backend = TorchBackend(model, config, total)
    return TrainingLoop(backend, data, config, sampler=sampler, kd=kd, hooks=hooks,
                        **{"log_every": 5, **loop_kwargs})


def weights(loop: TrainingLoop) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loop.backend.model.state_dict().items()}


def test_learns_both_tasks_and_beats_majority(tiny_encoder_dir: Path) -> None:
    config = TrainingConfig(epochs=6, batch_size=16, learning_rate=3e-3, warmup_ratio=0.1,
                            dropout=0.0)
    loop = make_loop(tiny_encoder_dir, config)
    state = loop.run(seed=0)
    assert state.step == loop.total_steps == total_optimizer_steps(config, len(loop.sampler))
    assert len(state.history) == 6  # one evaluation per epoch (eval_every 0)
    final = loop.evaluate()["tasks"]
    assert final["cls"]["accuracy"] > 75.0  # majority is about 50
    assert final["reg"]["pearson"] > 50.0  # a constant predictor scores 0
    assert state.examples == 6 * 160 and state.tokens > 0


def test_same_seed_same_result(tiny_encoder_dir: Path) -> None:
    config = TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-3, dropout=0.1)
    first = make_loop(tiny_encoder_dir, config)
    first.run(seed=3)
    second = make_loop(tiny_encoder_dir, config)
    second.run(seed=3)
    for key, value in weights(first).items():
        assert torch.equal(value, weights(second)[key]), key


def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_encoder_dir: Path) -> None:
    """Stop after step 4, restore model/optimizer/schedule/RNG/position: same final weights."""
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-3, dropout=0.1,
                            eval_every=3)
    full = make_loop(tiny_encoder_dir, config)
    full_state = full.run(seed=1)

    saved: dict = {}

    def checkpoint(state: LoopState) -> None:
        if state.step == 4:
            saved.update(state=copy.deepcopy(state.to_json()), rng=capture_rng(),
                         backend=copy.deepcopy(first.backend.state_dict()))

    first = make_loop(tiny_encoder_dir, config,
                      hooks=LoopHooks(on_checkpoint=checkpoint, checkpoint_every=4))
    first.run(seed=1)
    resumed = make_loop(tiny_encoder_dir, config)
    resumed.backend.load_state_dict(saved["backend"])
    state = resumed.run(LoopState.from_json(saved["state"]), rng=saved["rng"])
    assert state.step == full.total_steps
    assert [h["step"] for h in state.history] == [h["step"] for h in full_state.history]
    assert [h["score"] for h in state.history] == pytest.approx(
        [h["score"] for h in full_state.history], abs=1e-4)
    for key, value in weights(full).items():
        assert torch.allclose(value, weights(resumed)[key], atol=1e-6), key


def test_gradient_accumulation_divides_optimizer_steps(tiny_encoder_dir: Path) -> None:
    config = TrainingConfig(epochs=1, batch_size=8, grad_accum=2, learning_rate=1e-3)
    loop = make_loop(tiny_encoder_dir, config)
    state = loop.run(seed=0)
    assert state.step == -(-len(loop.sampler) // 2)
    assert loop.backend.micro_steps == len(loop.sampler)


def test_early_stop_and_keep_best(tiny_encoder_dir: Path) -> None:
    config = TrainingConfig(epochs=5, batch_size=16, learning_rate=1e-3, eval_every=2,
                            early_stop_patience=2)
    scores = iter([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    best: dict = {}
    hooks = LoopHooks(on_best=lambda state, record: best.update(step=state.step))
    loop = make_loop(tiny_encoder_dir, config, hooks=hooks,
                     score=lambda result: next(scores))
    captured: dict = {}
    original = loop.hooks.on_best

    def on_best(state: LoopState, record: dict) -> None:
        captured.update(weights(loop))
        original(state, record)

    loop.hooks.on_best = on_best
    state = loop.run(seed=0)
    assert state.stopped_early and state.step == 6 and len(state.history) == 3
    assert state.best_step == 2 == best["step"]
    for key, value in weights(loop).items():  # the best weights were restored at the end
        assert torch.equal(value, captured[key]), key


def test_resumed_run_still_ends_on_the_best_weights(tiny_encoder_dir: Path) -> None:
    """Best at step 2, checkpoint at step 4, crash, resume: the final model must be the
    step-2 weights (carried by the checkpoint), not the last ones."""
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-3, eval_every=2)
    captured, saved = {}, {}

    def make(scores: list[float], hooks: LoopHooks | None = None) -> TrainingLoop:
        values = iter(scores)
        return make_loop(tiny_encoder_dir, config, hooks=hooks,
                         score=lambda result: next(values))

    def on_checkpoint(state: LoopState) -> None:
        if state.step == 4:
            best = first.best_weights if state.best_step not in (None, state.step) else None
            saved.update(state=copy.deepcopy(state.to_json()), rng=capture_rng(),
                         backend=copy.deepcopy(first.backend.state_dict()), best=best)

    first = make([9.0, 1.0] + [0.0] * 20, LoopHooks(on_checkpoint=on_checkpoint,
                                                     checkpoint_every=4))
    first.hooks.on_best = lambda state, record: captured.update(weights(first))
    first.run(seed=0)
    assert saved["best"] is not None and saved["state"]["best_step"] == 2
    resumed = make([0.0] * 20)
    resumed.backend.load_state_dict(saved["backend"])
    state = LoopState.from_json(saved["state"])
    resumed.restore_best_weights(state, saved["best"])
    final = resumed.run(state, rng=saved["rng"])
    assert final.best_step == 2 and final.step > 4
    for key, value in weights(resumed).items():
        assert torch.equal(value, captured[key]), key

    # Checkpoint taken at the best evaluation itself: the current weights are the best.
    at_best = make([0.0] * 20)
    at_best.backend.load_state_dict(saved["backend"])
    state.best_step = state.step
    at_best.restore_best_weights(state, None)
    assert all(torch.equal(v, at_best.best_weights[k]) for k, v in weights(at_best).items())


def test_bf16_autocast_trains_on_cpu(tiny_encoder_dir: Path) -> None:
    config = TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-3, precision="bf16")
    state = make_loop(tiny_encoder_dir, config).run(seed=0)
    assert all(np.isfinite(h["loss"]) for h in state.history)


def test_distillation_uses_teacher_targets(tiny_encoder_dir: Path) -> None:
    data = make_data()
    n_cls, n_reg = len(data.train["cls"]), len(data.train["reg"])
    # Teachers that insist on the wrong answer: KD must pull the student away from it.
    wrong = np.array([[1.0, 0.0] if y else [0.0, 1.0] for y in data.train["cls"]["label"]],
                     dtype=np.float32)
    teachers = {"cls": TeacherArrays(probs=wrong),
                "reg": TeacherArrays(score=np.zeros(n_reg, dtype=np.float32))}
    config = TrainingConfig(epochs=4, batch_size=16, learning_rate=3e-3, dropout=0.0)
    loop = make_loop(tiny_encoder_dir, config, data=LoopData(SPECS, data.train, data.dev,
                                                                teachers),
                     kd=KDConfig(soft_weight=1.0), keep_best_in_memory=False)
    loop.run(seed=0)
    assert loop.evaluate()["tasks"]["cls"]["accuracy"] < 40.0
    assert n_cls == 96


def test_align_by_uid_joins_on_uid_not_row_order() -> None:
    aligned = align_by_uid(["b", "a"], ["a", "b", "c"], "t",
                           probs=np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    assert aligned.probs.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    with pytest.raises(DataError, match="uid 'z'"):
        align_by_uid(["a", "z"], ["a"], "t", probs=np.ones((1, 2)))


def test_linear_warmup_then_decay() -> None:
    values = [linear_warmup_decay(s, 2, 10) for s in range(11)]
    assert values[:2] == [0.5, 1.0]
    assert values[2] == 1.0 and values[10] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(values[2:]))


# fp32: these tests compare gradients of differently shaped batches to 1e-6, which no
# mixed precision keeps (auto would be bf16 on a CPU with native bf16)
DP_CONFIG = TrainingConfig(batch_size=8, grad_accum=2, learning_rate=1e-3, dropout=0.0,
                           warmup_ratio=0.0, precision="fp32")


def _global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two micro-batches of 16 examples of task "cls" (token ids 5-24, no padding)."""
    generator = torch.Generator().manual_seed(7)
    return [(torch.randint(5, 25, (16, 12), generator=generator),
             torch.randint(0, 2, (16,), generator=generator)) for _ in range(2)]


def _train_micro_batches(backend: object, rows: slice, weight: float = 1.0
                         ) -> tuple[dict, dict]:
    """Forward/backward both micro-batches on ``rows``, the loss times ``weight`` (the
    sampler's data-parallel weight); (gradients before the step, weights after it)."""
    for ids, labels in _global_batches():
        inputs = {"input_ids": ids[rows], "attention_mask": torch.ones_like(ids[rows]),
                  "token_type_ids": torch.zeros_like(ids[rows])}
        loss = torch.nn.functional.cross_entropy(backend.forward("cls", inputs), labels[rows])
        backend.backward(loss * weight)
    grads = {n: None if p.grad is None else p.grad.clone()
             for n, p in backend.model.named_parameters()}
    assert backend.step()
    return grads, {k: v.clone() for k, v in backend.model.state_dict().items()}


def _data_parallel_rank(rank: int, encoder_dir: str, init_file: str, out: str,
                        split: tuple[int, int] = (8, 8), weighted: bool = True) -> None:
    import torch.distributed as dist

    from mtkd.training.backend import DataParallelBackend, from_rank0

    def train_and_save() -> None:
        model = build_mtdnn(Path(encoder_dir), list(SPECS.values()), dropout=0.0, seed=0)
        backend = DataParallelBackend(TorchBackend(model, DP_CONFIG, total_steps=4))
        start = 0 if rank == 0 else split[0]
        # The sampler's weight of a shard's batch: N x its examples / the step's examples.
        weight = 2 * split[rank] / sum(split) if weighted else 1.0
        grads, weights = _train_micro_batches(backend, slice(start, start + split[rank]),
                                              weight)
        agreed = from_rank0(float(rank + 1), backend.device)
        torch.save({"grads": grads, "weights": weights, "agreed": agreed},
                   Path(out) / f"rank{rank}.pt")

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        # The DDP reducer must be freed while its process group is still registered: freed
        # after destroy_process_group(), it destroys the group itself, joining gloo's
        # threads with the GIL held while one of them waits for the GIL (a deadlock seen
        # at process exit under load).
        train_and_save()
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_data_parallel_backend_matches_one_process_on_the_global_batch(
        tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """Two gloo ranks, each on half of every micro-batch, with accumulation over two: the
    averaged gradients equal one process's on the whole batches, the unused head gets none
    (as in one process), and the ranks' weights stay identical."""
    torch.multiprocessing.spawn(_data_parallel_rank, nprocs=2, join=True,
                                args=(str(tiny_encoder_dir), str(tmp_path / "init"),
                                      str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model = build_mtdnn(tiny_encoder_dir, list(SPECS.values()), dropout=0.0, seed=0)
    grads, _ = _train_micro_batches(TorchBackend(model, DP_CONFIG, total_steps=4),
                                    slice(0, 16))
    for name, grad in grads.items():
        if name.startswith("heads.reg"):
            assert grad is None and all(r["grads"][name] is None for r in ranks), name
            continue
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], grad, rtol=1e-4, atol=1e-6)
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
    assert [r["agreed"] for r in ranks] == [1.0, 1.0]


@pytest.mark.parametrize("weighted", [True, False])
def test_short_shard_batches_weigh_what_they_hold(tiny_encoder_dir: Path, tmp_path: Path,
                                                  weighted: bool) -> None:
    """Rank 0 holds 11 of a step's 16 examples, rank 1 the last 5 (a task's short batch):
    with the sampler's weights (2 x 11/16, 2 x 5/16) the ranks' averaged gradient is one
    process's on all 16; without them the 5 examples would count as much as the 11."""
    torch.multiprocessing.spawn(_data_parallel_rank, nprocs=2, join=True,
                                args=(str(tiny_encoder_dir), str(tmp_path / "init"),
                                      str(tmp_path), (11, 5), weighted))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model = build_mtdnn(tiny_encoder_dir, list(SPECS.values()), dropout=0.0, seed=0)
    grads, _ = _train_micro_batches(TorchBackend(model, DP_CONFIG, total_steps=4),
                                    slice(0, 16))
    name = "heads.cls.linear.weight" if "heads.cls.linear.weight" in grads else next(
        n for n in grads if n.startswith("heads.cls"))
    if weighted:
        for key, grad in grads.items():
            if grad is not None:
                torch.testing.assert_close(ranks[0]["grads"][key], grad, rtol=1e-4, atol=1e-6)
    else:
        assert not torch.allclose(ranks[0]["grads"][name], grads[name], rtol=1e-3, atol=1e-5)


class StepClock:
    """A fake clock that advances ``per_step`` seconds at every optimizer step."""

    def __init__(self, loop: TrainingLoop, per_step: float) -> None:
        self.now = 0.0
        step = loop.backend.step

        def timed_step() -> bool:
            stepped = step()
            if stepped:
                self.now += per_step
            return stepped

        loop.backend.step = timed_step

    def __call__(self) -> float:
        return self.now


def test_time_checkpoints_at_the_expected_steps(tiny_encoder_dir: Path) -> None:
    """25 s per step, a checkpoint every minute: steps 3, 6, ...; a step-triggered one
    (every 4) restarts the count; the end always checkpoints."""
    config = TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-3, eval_every=0)
    steps: list[int] = []
    hooks = LoopHooks(on_checkpoint=lambda state: steps.append(state.step),
                      checkpoint_minutes=1.0)
    loop = make_loop(tiny_encoder_dir, config, hooks=hooks)
    hooks.clock = StepClock(loop, 25.0)
    state = loop.run(seed=0)
    assert state.step == loop.total_steps == 10
    assert steps == [3, 6, 9, 10]

    steps.clear()
    hooks = LoopHooks(on_checkpoint=lambda state: steps.append(state.step),
                      checkpoint_minutes=1.0, checkpoint_every=4)
    loop = make_loop(tiny_encoder_dir, config, hooks=hooks)
    hooks.clock = StepClock(loop, 25.0)
    loop.run(seed=0)
    # 3 (time), 4 (every), 7 (75 s after step 4), 8 (every), 10 (end)
    assert steps == [3, 4, 7, 8, 10]

    # Off (0), or an evaluation that saves a checkpoint restarts the count.
    steps.clear()
    config = TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-3, eval_every=2)
    hooks = LoopHooks(on_checkpoint=lambda state: steps.append(state.step),
                      checkpoint_minutes=1.0, eval_checkpoints=True)
    loop = make_loop(tiny_encoder_dir, config, hooks=hooks)
    hooks.clock = StepClock(loop, 25.0)
    loop.run(seed=0)
    assert steps == [10]
    steps.clear()
    hooks = LoopHooks(on_checkpoint=lambda state: steps.append(state.step))
    loop = make_loop(tiny_encoder_dir, config, hooks=hooks)
    loop.run(seed=0)
    assert steps == [10]


def test_resume_from_a_time_checkpoint_matches_uninterrupted_run(tiny_encoder_dir: Path
                                                                 ) -> None:
    """A checkpoint taken by the clock (step 3 of 10, mid-epoch) resumes exactly."""
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-3, dropout=0.1,
                            eval_every=4)
    full = make_loop(tiny_encoder_dir, config)
    full.run(seed=1)

    saved: dict = {}

    def checkpoint(state: LoopState) -> None:
        if not saved:
            saved.update(state=copy.deepcopy(state.to_json()), rng=capture_rng(),
                         backend=copy.deepcopy(first.backend.state_dict()))

    hooks = LoopHooks(on_checkpoint=checkpoint, checkpoint_minutes=0.5)
    first = make_loop(tiny_encoder_dir, config, hooks=hooks)
    hooks.clock = StepClock(first, 11.0)
    first.run(seed=1)
    assert saved["state"]["step"] == 3 and saved["state"]["position"] == 3
    resumed = make_loop(tiny_encoder_dir, config)
    resumed.backend.load_state_dict(saved["backend"])
    state = resumed.run(LoopState.from_json(saved["state"]), rng=saved["rng"])
    assert state.step == full.total_steps
    for key, value in weights(full).items():
        assert torch.allclose(value, weights(resumed)[key], atol=1e-6), key


# ------------------------------------------------------------------------ checkpoint files


def _best_at_step_2(tiny_encoder_dir: Path, tmp_path: Path, save: Callable[..., None]
                    ) -> tuple[TrainingConfig, dict[str, torch.Tensor]]:
    """A run whose best evaluation is step 2 and which ``save``s a checkpoint at step 4
    (its loop, state); the weights of step 2."""
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-3, eval_every=2,
                            dropout=0.1)
    captured: dict[str, torch.Tensor] = {}
    scores = iter([9.0, 1.0] + [0.0] * 20)
    first = make_loop(tiny_encoder_dir, config, score=lambda result: next(scores),
                      hooks=LoopHooks(on_checkpoint=lambda state: state.step == 4 and save(
                          first, state), checkpoint_every=4))
    first.hooks.on_best = lambda state, record: captured.update(weights(first))
    first.run(seed=0)
    return config, captured


def _resume_ends_on(tiny_encoder_dir: Path, config: TrainingConfig, folder: Path,
                    expected: dict[str, torch.Tensor]) -> None:
    from mtkd.training.checkpoint import load_checkpoint
    from mtkd.training.recipe import run_training

    resumed = make_loop(tiny_encoder_dir, config, score=lambda result: 0.0)
    resume = load_checkpoint(folder, resumed.backend)
    assert resume.state.step == 4 and resume.state.best_step == 2
    assert resume.attempts == [{"pid": 1, "start_step": 0}]
    final = run_training(resumed, str(tiny_encoder_dir), seed=0, resume=resume).state
    assert final.best_step == 2 and final.step > 4
    for key, value in weights(resumed).items():
        assert torch.equal(value, expected[key]), key


def test_resume_from_checkpoint_files_ends_on_the_best_weights(tiny_encoder_dir: Path,
                                                               tmp_path: Path) -> None:
    """The one format through the files: backend state, RNG, loop state and the best
    weights written at step 4 bring a fresh loop to the same end as the uninterrupted
    run's (its best, step 2's, weights)."""
    from mtkd.training.checkpoint import BEST_FILE, META_FILE, save_checkpoint

    def save(loop: TrainingLoop, state: LoopState) -> None:
        save_checkpoint(tmp_path, loop.backend, state, attempts=[{"pid": 1, "start_step": 0}],
                        best=loop.best_weights)

    config, captured = _best_at_step_2(tiny_encoder_dir, tmp_path, save)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [BEST_FILE, META_FILE, "rng_rank0.pt", "torch_state.pt"])
    _resume_ends_on(tiny_encoder_dir, config, tmp_path, captured)


def test_checkpoints_of_the_earlier_teacher_format_still_resume(tiny_encoder_dir: Path,
                                                                tmp_path: Path) -> None:
    """What a teacher member wrote before the one format (backend.pt with backend state,
    rank 0's RNG and the best weights; state.json) resumes the same way."""
    import json

    def save(loop: TrainingLoop, state: LoopState) -> None:
        torch.save({"backend": loop.backend.state_dict(), "rng": capture_rng(),
                    "best": loop.best_weights}, tmp_path / "backend.pt")
        (tmp_path / "state.json").write_text(json.dumps(
            {"loop": state.to_json(), "attempts": [{"pid": 1, "start_step": 0}]}))

    config, captured = _best_at_step_2(tiny_encoder_dir, tmp_path, save)
    _resume_ends_on(tiny_encoder_dir, config, tmp_path, captured)


def test_each_rank_keeps_its_own_rng_and_rank0_writes_the_rest(tiny_encoder_dir: Path,
                                                               tmp_path: Path) -> None:
    from mtkd.training.checkpoint import load_checkpoint, save_checkpoint

    loop = make_loop(tiny_encoder_dir, TrainingConfig(epochs=1, batch_size=16))
    state = LoopState(step=3, epoch=0, position=3)
    torch.manual_seed(11)
    save_checkpoint(tmp_path, loop.backend, state, rank=1)
    assert [p.name for p in tmp_path.iterdir()] == ["rng_rank1.pt"]  # no backend, no loop
    torch.manual_seed(22)
    save_checkpoint(tmp_path, loop.backend, state, rank=0)
    torch.manual_seed(33)
    for rank, seed in ((0, 22), (1, 11)):
        resume = load_checkpoint(tmp_path, loop.backend, rank)
        assert torch.equal(resume.rng["torch"], torch.manual_seed(seed).get_state())
        assert resume.state.step == 3 and resume.best is None


def test_what_is_not_a_checkpoint_is_a_clear_error(tiny_encoder_dir: Path,
                                                   tmp_path: Path) -> None:
    import json

    from mtkd.training.checkpoint import (
        META_FILE,
        CheckpointError,
        load_checkpoint,
        save_checkpoint,
        verify_checkpoint,
    )

    loop = make_loop(tiny_encoder_dir, TrainingConfig(epochs=1, batch_size=16))
    with pytest.raises(CheckpointError, match=rf"{tmp_path} holds no checkpoint.*--force"):
        load_checkpoint(tmp_path, loop.backend)
    save_checkpoint(tmp_path, loop.backend, LoopState(step=5))
    assert verify_checkpoint(tmp_path) == 5
    meta = json.loads((tmp_path / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(CheckpointError, match="newer mtkd"):
        verify_checkpoint(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    data = (tmp_path / "torch_state.pt").read_bytes()
    (tmp_path / "torch_state.pt").write_bytes(data[: len(data) // 2])  # an upload cut short
    with pytest.raises((OSError, RuntimeError)):  # what the member's search skips
        verify_checkpoint(tmp_path)
