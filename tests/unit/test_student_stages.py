"""Staged student training with gradual unfreezing (issue 18, item 3): the schedule in the
config, the unfreezing table, the loss weights per stage, frozen parameters untouched by a
step (weight decay included), and bit-exact resume inside a stage and exactly at a stage
boundary through the one checkpoint format (DeepSpeed in one process, as Ray Train runs a
one-worker student)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import make_tiny_bert, synthetic_task

from mtkd.config import (
    KDConfig,
    StageConfig,
    StageLoss,
    TrainingConfig,
    UnfreezeConfig,
    config_from_dict,
)
from mtkd.data.sampler import MultiTaskBatchSampler
from mtkd.errors import ConfigError
from mtkd.losses import TeacherTargets, hard_loss, soft_loss, task_loss
from mtkd.model.infer import model_inputs
from mtkd.model.mtdnn import build_mtdnn
from mtkd.tasks.spec import TaskSpec
from mtkd.training.backend import TorchBackend
from mtkd.training.data import CollateFn, MultiTaskRows, TeacherArrays, epoch_loader
from mtkd.training.loop import LoopData, LoopHooks, LoopState, TrainingLoop
from mtkd.training.stages import StagePlan, parameter_unit

SPECS = {"cls": TaskSpec("cls", "classification", ("neg", "pos"), ("accuracy",), 16),
         "reg": TaskSpec("reg", "regression", (), ("pearson",), 16)}
BASE = {"name": "t", "tasks": [{"name": "rotten_tomatoes"}]}
SOFT = {"name": "soft", "epochs": 1, "loss": {"soft": 1}}


def stage(name: str, steps: int | None = None, epochs: float | None = None,
          unfreeze: UnfreezeConfig | None = None, **loss: float) -> StageConfig:
    return StageConfig(name, epochs, steps, StageLoss(**loss), unfreeze)


# ------------------------------------------------------------------------ config


def problem_keys(stages: list, **student: object) -> set[str]:
    try:
        config_from_dict({**BASE, "student": {"stages": stages, **student}})
    except ConfigError as err:
        assert all(p.fix for p in err.problems)
        return {p.path for p in err.problems}
    return set()


BAD_SCHEDULES = [
    ([{"name": " ", "epochs": 1, "loss": {"hard": 1}}], {}, "student.stages.0.name"),
    ([{"name": "a", "loss": {"hard": 1}}], {}, "student.stages.0.epochs"),  # no length
    ([{"name": "a", "epochs": 1, "steps": 3, "loss": {"hard": 1}}], {},
     "student.stages.0.epochs"),  # two lengths
    ([{"name": "a", "epochs": 0, "loss": {"hard": 1}}], {}, "student.stages.0.epochs"),
    ([{"name": "a", "steps": 0, "loss": {"hard": 1}}], {}, "student.stages.0.steps"),
    ([{"name": "a", "epochs": 1, "loss": {}}], {}, "student.stages.0.loss"),  # learns nothing
    ([{"name": "a", "epochs": 1, "loss": {"soft": -1, "hard": 1}}], {},
     "student.stages.0.loss.soft"),
    ([{"name": "a", "epochs": 1, "loss": {"hard": 1}, "unfreeze": {"start_layers": 0}}], {},
     "student.stages.0.unfreeze.start_layers"),
    ([{"name": "a", "epochs": 1, "loss": {"hard": 1}, "unfreeze": {"every_epochs": 0}}], {},
     "student.stages.0.unfreeze.every_epochs"),
    ([{"name": "a", "epochs": 1, "loss": {"hard": 1}, "unfreeze": {"every_steps": 0}}], {},
     "student.stages.0.unfreeze.every_steps"),
    ([{"name": "a", "epochs": 1, "loss": {"hard": 1},
       "unfreeze": {"every_epochs": 1, "every_steps": 2}}], {},
     "student.stages.0.unfreeze.every_steps"),
    ([{"name": "a", "epochs": 1, "loss": {"hard": 1}, "unfreez": {}}], {},
     "student.stages.0.unfreez"),  # unknown key
    ([SOFT, SOFT], {}, "student.stages.1.name"),  # names must differ
    ([SOFT], {"distill": False}, "student.stages"),  # the no-KD run has no stages
    ([SOFT], {"kd": {"hidden_weight": 1.0}}, "student.kd.hidden_weight"),  # stages weigh it
    ({"name": "a"}, {}, "student.stages"),  # not a list
]


@pytest.mark.parametrize(("stages", "student", "key"), BAD_SCHEDULES)
def test_bad_schedules_are_refused_naming_the_key(stages: list, student: dict,
                                                  key: str) -> None:
    assert problem_keys(stages, **student) == {key}


def test_a_good_schedule_loads_and_decides_the_representation_teacher() -> None:
    stages = [{"name": "representation", "steps": 10, "loss": {"hidden": 1},
               "unfreeze": {"start_layers": 1, "every_epochs": 0.5}},
              {"name": "soft", "epochs": 1, "loss": {"soft": 1}},
              {"name": "hard", "epochs": 0.5, "loss": {"hard": 1}}]
    student = config_from_dict({**BASE, "student": {"stages": stages}}).student
    assert [s.name for s in student.stages] == ["representation", "soft", "hard"]
    assert student.stages[0].unfreeze == UnfreezeConfig(1, 0.5, None)
    assert student.hidden_distillation  # a stage's loss.hidden, not kd.hidden_weight
    assert not config_from_dict({**BASE, "student": {"stages": stages[1:]}}
                                ).student.hidden_distillation
    assert config_from_dict({**BASE, "student": {"kd": {"hidden_weight": 0.5}}}
                            ).student.hidden_distillation


def test_stages_enter_the_distilled_runs_lineage_only() -> None:
    """No stages: the key stays out of the lineage (earlier runs are reused); stages: in
    the KD run's lineage, not the baseline's (it trains without stages)."""
    from mtkd.experiment import content_values
    from mtkd.student.stage import StudentRun, run_config, run_lineage

    plain = config_from_dict(BASE)
    staged = config_from_dict({**BASE, "student": {"stages": [SOFT], "baseline": True}})
    assert "student.stages" not in content_values("student_run", plain)
    assert content_values("student_run", staged)["student.stages"][0]["name"] == "soft"
    kd, baseline = StudentRun("student", 0, True), StudentRun("baseline", 0, False)
    assert run_config(staged, baseline).student.stages == []
    data = {"rotten_tomatoes": "x"}
    assert run_lineage(plain, baseline, data, None) == run_lineage(staged, baseline, data, None)
    assert run_lineage(plain, kd, data, {"rotten_tomatoes": "s"}) != run_lineage(
        staged, kd, data, {"rotten_tomatoes": "s"})


# ------------------------------------------------------------------------ the schedule


def test_parameter_units() -> None:
    assert parameter_unit("encoder.embeddings.word_embeddings.weight") == "embeddings"
    assert parameter_unit("encoder.encoder.layer.0.attention.self.query.weight") == "layer.1"
    assert parameter_unit("encoder.encoder.layer.11.output.LayerNorm.bias") == "layer.12"
    assert parameter_unit("encoder.encoder.rel_embeddings.weight") == "embeddings"  # DeBERTa
    assert parameter_unit("heads.cls.proj.weight") == "heads"
    assert parameter_unit("hidden_projection.weight") == "projection"
    with pytest.raises(ValueError, match="no freezing unit"):
        parameter_unit("teacher.weight")


THREE_STAGES = [
    stage("representation", steps=4, unfreeze=UnfreezeConfig(1, None, 2), hidden=1.0),
    stage("soft", epochs=0.5, unfreeze=UnfreezeConfig(2, 0.2, None), soft=1.0),
    stage("hard", steps=3, hard=1.0),
]
L1, L2, L3, EMB, HEADS, PROJ = "layer.1", "layer.2", "layer.3", "embeddings", "heads", "projection"
# Completed steps -> (stage, trainable units from the top, frozen units), by hand: 10
# batches per epoch; representation 4 steps, one more layer every 2; soft ceil(0.5 x 10) = 5
# steps from 2 layers, one more every ceil(0.2 x 10) = 2 (the embeddings after layer 1);
# hard 3 steps, everything. Heads are frozen where soft = hard = 0, the projection where
# hidden = 0.
TABLE = [
    (0, 1, {L1, L2, EMB, HEADS}), (0, 1, {L1, L2, EMB, HEADS}),
    (0, 2, {L1, EMB, HEADS}), (0, 2, {L1, EMB, HEADS}),
    (1, 2, {L1, EMB, PROJ}), (1, 2, {L1, EMB, PROJ}),
    (1, 3, {EMB, PROJ}), (1, 3, {EMB, PROJ}),
    (1, 4, {PROJ}),
    (2, 4, {PROJ}), (2, 4, {PROJ}), (2, 4, {PROJ}),
]


def test_unfreezing_table_step_by_step() -> None:
    plan = StagePlan(THREE_STAGES, batches_per_epoch=10, grad_accum=1, layers=3)
    assert plan.bounds == [(0, 4), (4, 9), (9, 12)] and plan.total_steps == 12
    got = [(p.index, p.trainable, set(p.frozen)) for p in map(plan.at, range(12))]
    assert got == TABLE
    assert plan.at(0).trainable_text() == "trainable layer 3"
    assert plan.at(2).trainable_text() == "trainable layers 3-2"
    assert plan.at(8).trainable_text() == "trainable layers 3-1 and embeddings"
    assert plan.at(4).describe() == ("stage 2/3 soft: epochs 0.5 (steps 5-9), loss hidden 0 "
                                     "soft 1 hard 0, trainable layers 3-2")


def test_epochs_count_optimizer_steps_and_max_steps_caps_the_run() -> None:
    # grad_accum 2: 10 batches are 5 steps; soft is ceil(0.5 x 10 / 2) = 3 steps
    plan = StagePlan(THREE_STAGES, batches_per_epoch=10, grad_accum=2, layers=3)
    assert plan.bounds == [(0, 4), (4, 7), (7, 10)]
    assert [plan.at(s).trainable for s in range(4, 7)] == [2, 3, 4]  # every ceil(2/2) = 1
    assert StagePlan(THREE_STAGES, 10, 2, 3, max_steps=6).total_steps == 6
    many = StagePlan([stage("a", steps=2, unfreeze=UnfreezeConfig(9), hard=1.0)], 10, 1, 3)
    assert many.at(0).trainable == 4 and many.at(0).frozen == {PROJ}  # clamped: everything


def test_stage_loss_weights() -> None:
    """A stage's weights replace kd.soft_weight: w_hard x hard + w_soft x soft with a
    teacher, (w_hard + w_soft) x hard without; no weights: the single-stage mix."""
    spec = SPECS["cls"]
    gen = torch.Generator().manual_seed(0)
    outputs, labels = torch.randn(6, 2, generator=gen), torch.tensor([0, 1, 1, 0, -1, 1])
    teacher = TeacherTargets(probs=torch.softmax(torch.randn(6, 2, generator=gen), -1))
    kd = KDConfig(soft_weight=0.3, temperature=2.0)
    hard = float(hard_loss(spec, outputs, labels))
    soft = float(soft_loss(spec, outputs, teacher, "ce", 2.0))
    assert hard > 0 and soft > 0
    weights = StageLoss(hidden=5.0, soft=2.0, hard=0.25)
    assert float(task_loss(spec, outputs, labels, teacher, kd, weights).total) == \
        pytest.approx(0.25 * hard + 2.0 * soft, rel=1e-6)
    assert float(task_loss(spec, outputs, labels, None, kd, weights).total) == \
        pytest.approx(2.25 * hard, rel=1e-6)
    assert float(task_loss(spec, outputs, labels, teacher, kd).total) == \
        pytest.approx(0.7 * hard + 0.3 * soft, rel=1e-6)
    assert float(task_loss(spec, outputs, labels, None, kd).total) == pytest.approx(hard)


# ------------------------------------------------------------------------ the loop


def train_data(teachers: bool = True) -> LoopData:
    train = {"cls": synthetic_task(96, 0, prefix="c"),
             "reg": synthetic_task(64, 1, regression=True, prefix="r")}
    dev = {"cls": synthetic_task(24, 2, prefix="cd"),
           "reg": synthetic_task(16, 3, regression=True, prefix="rd")}
    arrays = {}
    if teachers:  # random soft targets for cls only: reg falls back to its labels
        rng = np.random.default_rng(7)
        probs = rng.dirichlet([1.0, 1.0], size=96).astype(np.float32)
        arrays = {"cls": TeacherArrays(probs=probs)}
    return LoopData(SPECS, train, dev, arrays)


def test_each_stage_trains_on_its_own_loss_weights(tiny_encoder_dir: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Learning rate 0 keeps the model fixed, so every step's recorded loss can be
    recomputed here from the same batches with the stage's weights."""
    config = TrainingConfig(batch_size=16, learning_rate=0.0, warmup_ratio=0.0,
                            dropout=0.0, precision="fp32")
    stages = [stage("hard", steps=3, hard=1.0), stage("mixed", steps=4, soft=1.0, hard=0.5)]
    data = train_data()
    model = build_mtdnn(tiny_encoder_dir, list(SPECS.values()), dropout=0.0, seed=0)
    sampler = MultiTaskBatchSampler({t: d["length"] for t, d in data.train.items()}, 16, seed=0)
    plan = StagePlan(stages, len(sampler), 1, 2)
    backend = TorchBackend(model, config, plan.total_steps, freezable=True)
    loop = TrainingLoop(backend, data, config, sampler=sampler, kd=KDConfig(),
                        record_steps=True, stages=plan, keep_best_in_memory=False)
    with caplog.at_level(logging.INFO, logger="mtkd"):
        state = loop.run(seed=0)
    assert state.step == 7 and "stage 2/2 mixed: steps 4 (steps 4-7)" in caplog.text

    model.eval()
    loader = epoch_loader(MultiTaskRows(data.train), sampler, CollateFn(SPECS, 0), 0)
    expected = []
    with torch.no_grad():
        for step, batch in zip(range(7), loader, strict=False):
            task = batch["task"]
            out = model(task, **model_inputs(batch, torch.device("cpu")))
            hard = float(hard_loss(SPECS[task], out, batch["labels"]))
            if step < 3:
                expected.append(hard)
            elif task == "cls":
                probs = torch.from_numpy(data.teachers["cls"].probs[batch["indices"]])
                soft = float(soft_loss(SPECS[task], out, TeacherTargets(probs=probs)))
                expected.append(0.5 * hard + soft)
            else:
                expected.append(1.5 * hard)
    assert [row[3] for row in state.step_log] == pytest.approx(expected, rel=1e-5)


UNFREEZING = [stage("top", steps=2, unfreeze=UnfreezeConfig(1, None, 1), hard=1.0),
              stage("all", steps=1, hard=1.0)]
# trainable encoder units at steps 1, 2, 3 of a 3-layer student (hand-computed)
TRAINABLE = [{L3}, {L3, L2}, {L3, L2, L1, EMB}]


def student_config(zero: int, weight_decay: float = 0.5) -> object:
    return config_from_dict({**BASE, "student": {
        "deepspeed": {"zero_stage": zero},
        "training": {"precision": "fp32", "batch_size": 16, "learning_rate": 1e-2,
                     "weight_decay": weight_decay, "warmup_ratio": 0.0, "dropout": 0.1,
                     "grad_clip": 1.0}}}).student


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("three"), hidden=32, layers=3, seed=1)


@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("teacher"), hidden=48, layers=4, seed=2)


def make_backend(kind: str, model: torch.nn.Module, total: int) -> object:
    if kind == "torch":
        return TorchBackend(model, student_config(0).training, total, freezable=True)
    from mtkd.student.deepspeed_backend import DeepSpeedBackend

    return DeepSpeedBackend(model, student_config(int(kind[-1])), total, 1, device="cpu",
                            freezable=True)


@pytest.mark.parametrize("kind", ["torch", "ds0", "ds2"])
def test_frozen_layers_are_untouched_by_a_step_weight_decay_included(
        three_layers: Path, process_group: None, kind: str) -> None:
    """Weight decay 0.5: any AdamW step on a frozen parameter would move it. After every
    step exactly the trainable units' encoder parameters changed (TorchBackend, DeepSpeed
    ZeRO-0 and ZeRO-2)."""
    data = train_data(teachers=False)
    model = build_mtdnn(three_layers, list(SPECS.values()), dropout=0.1, seed=0)
    sampler = MultiTaskBatchSampler({t: d["length"] for t, d in data.train.items()}, 16, seed=0)
    plan = StagePlan(UNFREEZING, len(sampler), 1, 3)
    backend = make_backend(kind, model, plan.total_steps)
    snapshots = [{n: p.detach().clone() for n, p in backend.model.named_parameters()}]
    changed: list[set[str]] = []

    def on_step(state: LoopState, scalars: dict) -> None:
        now = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
        changed.append({parameter_unit(n) for n, v in now.items() if n.startswith("encoder.")
                        and not torch.equal(v, snapshots[-1][n])})
        unchanged_trainable = [n for n, v in now.items() if n.startswith("encoder.")
                               and parameter_unit(n) in TRAINABLE[state.step - 1]
                               and torch.equal(v, snapshots[-1][n])]
        assert not unchanged_trainable, unchanged_trainable
        snapshots.append(now)

    loop = TrainingLoop(backend, LoopData(SPECS, data.train, {}), student_config(0).training,
                        sampler=sampler, stages=plan, hooks=LoopHooks(on_step=on_step))
    loop.run(seed=0)
    assert changed == TRAINABLE
    if kind == "torch":  # no AdamW state at all for a parameter never trainable so far
        embeddings = dict(model.named_parameters())["encoder.embeddings.word_embeddings.weight"]
        assert int(backend.optimizer.state[embeddings]["step"]) == 1


# ------------------------------------------------------------------------ exact resume

RESUME_STAGES = THREE_STAGES  # 12 steps: boundaries after steps 4 and 9


class Killed(Exception):
    pass


def staged_loop(kind: str, student_dir: Path, teacher_dir: Path, seed: int,
                hooks: LoopHooks | None = None) -> TrainingLoop:
    """A 3-layer student with representation distillation from a wider 4-layer teacher
    (a projection), random soft targets for cls, the three stages, dropout 0.1."""
    from mtkd.student.hidden import RepresentationDistillation

    data = train_data()
    data = LoopData(SPECS, data.train, {}, data.teachers)  # no evaluation: faster
    torch.manual_seed(seed)  # the projection's initialisation
    student = build_mtdnn(student_dir, list(SPECS.values()), dropout=0.1, seed=seed)
    teacher = build_mtdnn(teacher_dir, list(SPECS.values()), dropout=0.0, seed=0)
    model = RepresentationDistillation(student, teacher, 0.0, precision="fp32")
    sampler = MultiTaskBatchSampler({t: d["length"] for t, d in data.train.items()}, 16, seed=0)
    plan = StagePlan(RESUME_STAGES, len(sampler), 1, 3)
    backend = make_backend(kind, model, plan.total_steps)
    return TrainingLoop(backend, data, student_config(0).training, sampler=sampler,
                        kd=KDConfig(), hooks=hooks, record_steps=True, stages=plan,
                        keep_best_in_memory=False)


_STRAIGHT: dict[str, tuple[dict[str, torch.Tensor], list]] = {}


def straight_run(kind: str, student_dir: Path, teacher_dir: Path
                 ) -> tuple[dict[str, torch.Tensor], list]:
    if kind not in _STRAIGHT:
        loop = staged_loop(kind, student_dir, teacher_dir, seed=0)
        state = loop.run(seed=1)
        assert state.step == 12
        _STRAIGHT[kind] = ({k: v.clone() for k, v in loop.backend.model.state_dict().items()},
                           state.step_log)
    return _STRAIGHT[kind]


@pytest.mark.parametrize(("kind", "kill_at"), [("ds0", 4), ("ds0", 6), ("ds2", 9),
                                               ("torch", 4)])
def test_kill_and_resume_is_bit_exact_inside_a_stage_and_at_a_boundary(
        three_layers: Path, wide_teacher: Path, process_group: None, tmp_path: Path,
        kind: str, kill_at: int) -> None:
    """Train 12 steps straight; then train again, save a checkpoint after step ``kill_at``
    (4 and 9: the last steps of stages 1 and 2, so the resumed run starts a new stage;
    6: inside stage 2, between two unfreezings) and stop; build a fresh model, backend and
    loop, load the checkpoint files, continue: every weight and every step's loss equal
    the straight run's bit for bit."""
    from mtkd.training.checkpoint import load_checkpoint, save_checkpoint

    expected, expected_log = straight_run(kind, three_layers, wide_teacher)

    def kill(state: LoopState) -> None:
        if state.step == kill_at:
            save_checkpoint(tmp_path, first.backend, state)
            raise Killed

    first = staged_loop(kind, three_layers, wide_teacher, seed=0,
                        hooks=LoopHooks(on_checkpoint=kill, checkpoint_every=1))
    with pytest.raises(Killed):
        first.run(seed=1)
    resumed = staged_loop(kind, three_layers, wide_teacher, seed=5)  # other initial weights
    resume = load_checkpoint(tmp_path, resumed.backend)
    assert resume.state.step == kill_at
    final = resumed.run(resume.state, rng=resume.rng)
    assert final.step_log == expected_log
    got = resumed.backend.model.state_dict()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
