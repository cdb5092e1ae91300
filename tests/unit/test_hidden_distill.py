"""Representation distillation (issue 18, item 2): the loss against numpy, the layer map,
the projection learns, the wrapper inside the training loop and DeepSpeed, export without
the projection, the choice of the representation teacher and validate's refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny import FOUR_TASKS, SPECIAL, WORDS, make_tiny_bert
from transformers import BertTokenizer

from mtkd.config import config_from_dict
from mtkd.errors import ConfigError, MtkdError
from mtkd.losses import WithAuxLoss, hidden_state_loss
from mtkd.model.mtdnn import build_mtdnn
from mtkd.storage import Storage
from mtkd.student.hidden import (
    PROJECTION,
    RepresentationDistillation,
    layer_map,
    representation_teacher,
    student_weights,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hidden")
    other = make_tiny_bert(root / "other_tok", hidden=64, layers=2)
    (other / "vocab.txt").write_text("\n".join(SPECIAL + WORDS[::-1]) + "\n")
    BertTokenizer(str(other / "vocab.txt")).save_pretrained(other)
    return {"student": make_tiny_bert(root / "student", hidden=32, layers=2, seed=1),
            "teacher": make_tiny_bert(root / "teacher", hidden=64, layers=4, seed=2),
            "other_tokenizer": other}


def test_hidden_state_loss_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(3, 5, 4, generator=gen) for _ in range(2)]
    teacher = [torch.randn(3, 5, 6, generator=gen) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    proj = torch.nn.Linear(4, 6)
    got = hidden_state_loss(student, teacher, mask, proj)
    w, b = proj.weight.detach().numpy(), proj.bias.detach().numpy()
    real = mask.numpy().astype(bool)
    per_layer = []
    for hs, ht in zip(student, teacher, strict=True):
        mapped = hs.numpy() @ w.T + b
        per_layer.append(((mapped - ht.numpy())[real] ** 2).mean())  # tokens x dims
    assert float(got.detach()) == pytest.approx(float(np.mean(per_layer)), rel=1e-5)
    # no projection: the widths must agree
    assert float(hidden_state_loss(teacher, teacher, mask)) == 0.0
    with pytest.raises(ValueError, match="do not match"):
        hidden_state_loss(student, teacher, mask)


def test_layer_map_is_uniform_or_given() -> None:
    assert layer_map(3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert layer_map(6, 12) == [(i, 2 * i) for i in range(1, 7)]
    assert layer_map(4, 6) == [(1, 2), (2, 3), (3, 5), (4, 6)]  # 1.5 and 4.5 round up
    assert layer_map(2, 4, [0, 3]) == [(1, 0), (2, 3)]
    with pytest.raises(MtkdError, match=r"student\.kd\.hidden_layers"):
        layer_map(2, 4, [1, 5])
    with pytest.raises(MtkdError, match=r"student\.kd\.hidden_layers"):
        layer_map(2, 4, [1])


def wrapped(encoders: dict[str, Path], weight: float = 1.0) -> RepresentationDistillation:
    torch.manual_seed(0)
    student = build_mtdnn(encoders["student"], FOUR_TASKS, dropout=0.0)
    teacher = build_mtdnn(encoders["teacher"], FOUR_TASKS, dropout=0.0)
    return RepresentationDistillation(student, teacher, weight)


def batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 25, (n, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[: n // 2, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_the_projection_learns(encoders: dict[str, Path]) -> None:
    """Only the projection trains (student and teacher frozen): the loss falls, the
    teacher never changes."""
    model = wrapped(encoders)
    model.encoder.requires_grad_(False)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    projection = getattr(model, PROJECTION)
    opt = torch.optim.Adam(projection.parameters(), lr=5e-2)
    inputs, losses = batch(), []
    for _ in range(25):
        out = model("sent", **inputs)
        assert isinstance(out, WithAuxLoss) and out.outputs.shape == (8, 2)
        opt.zero_grad()
        out.aux_loss.backward()
        opt.step()
        losses.append(float(out.aux_loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, teacher_before[k]) for k, v in model.teacher.state_dict().items())
    assert all(p.grad is None for p in model.teacher.parameters())


def test_wrapper_is_the_student_in_eval_and_by_name(encoders: dict[str, Path]) -> None:
    model = wrapped(encoders)
    names = set(model.state_dict())
    assert {n for n in names if n.startswith(PROJECTION)} == {f"{PROJECTION}.weight",
                                                              f"{PROJECTION}.bias"}
    assert set(student_weights(model.state_dict())) == set(model.student.state_dict())
    model.eval()
    inputs = batch()
    with torch.no_grad():
        assert torch.equal(model("nli", **inputs), model.student("nli", **inputs))
    # ranking: the teacher reads the same real candidates as the student
    model.train()
    ids = torch.randint(5, 25, (2, 3, 10))
    cand = torch.tensor([[True, True, False], [True, False, False]])
    out = model("qa", ids, torch.ones_like(ids), None, cand)
    assert out.outputs.shape == (2, 3) and torch.isfinite(out.aux_loss)


def test_equal_widths_need_no_projection(encoders: dict[str, Path]) -> None:
    student = build_mtdnn(encoders["teacher"], FOUR_TASKS, num_layers=2)
    teacher = build_mtdnn(encoders["teacher"], FOUR_TASKS)
    model = RepresentationDistillation(student, teacher, 0.5)
    assert not hasattr(model, PROJECTION) and model.pairs == [(1, 2), (2, 4)]
    # the student's layers 1-2 are the teacher's 1-2, so layers 1 -> 2 differ, 2 -> 4 too
    out = model("sent", **batch())
    assert float(out.aux_loss.detach()) > 0


def test_training_loop_adds_the_hidden_term(encoders: dict[str, Path]) -> None:
    """The loop's loss is the task loss plus weight x hidden loss (recomputed here)."""
    from tiny import synthetic_task

    from mtkd.config import KDConfig, TrainingConfig
    from mtkd.data.sampler import MultiTaskBatchSampler
    from mtkd.training.backend import TorchBackend
    from mtkd.training.loop import LoopData, TrainingLoop

    specs = {"sent": FOUR_TASKS[0]}
    train = {"sent": synthetic_task(32, 0)}
    config = TrainingConfig(batch_size=8, epochs=1, learning_rate=0.0, warmup_ratio=0.0,
                            dropout=0.0, eval_every=0, precision="fp32")
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        student = build_mtdnn(encoders["student"], [specs["sent"]], dropout=0.0)
        teacher = build_mtdnn(encoders["teacher"], [specs["sent"]], dropout=0.0)
        model = RepresentationDistillation(student, teacher, weight)
        sampler = MultiTaskBatchSampler({"sent": train["sent"]["length"]}, 8, seed=0)
        backend = TorchBackend(model, config, 4)
        loop = TrainingLoop(backend, LoopData(specs, train, {}), config, sampler=sampler,
                            kd=KDConfig(), record_steps=True)
        state = loop.run()
        losses = [row[3] for row in state.step_log]
        if weight == 0.0:
            plain = losses
        else:
            assert all(b > a for a, b in zip(plain, losses, strict=True))  # lr 0: same model


def test_deepspeed_trains_student_and_projection_and_exports_the_student(
        encoders: dict[str, Path], tmp_path: Path, process_group: None) -> None:
    """ZeRO-0 in one process: the engine's module is the wrapper; a step moves the student
    and the projection, never the teacher; the checkpoint consolidates into the student."""
    from mtkd.precision import DeviceInfo, Resolved
    from mtkd.student.deepspeed_backend import DeepSpeedBackend
    from mtkd.student.stage import consolidate

    config = config_from_dict({
        "name": "t", "tasks": [{"name": "rotten_tomatoes"}],
        "student": {"training": {"precision": "fp32", "batch_size": 8, "learning_rate": 1e-2,
                                 "warmup_ratio": 0.0, "dropout": 0.0},
                    "kd": {"hidden_weight": 1.0}}}).student
    model = wrapped(encoders)
    teacher = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cpu = DeviceInfo(type="cpu", name="cpu", capability="AVX2", native_bf16=False)
    backend = DeepSpeedBackend(model, config, 10, 1, device="cpu",
                               resolved=Resolved("fp32", "fp32", cpu))
    for step in range(3):
        out = backend.forward("sent", batch(seed=step))
        assert isinstance(out, WithAuxLoss)
        backend.backward(torch.nn.functional.cross_entropy(
            out.outputs, torch.zeros(8, dtype=torch.long)) + out.aux_loss)
        assert backend.step()
    after = model.state_dict()
    assert not torch.equal(after[f"{PROJECTION}.weight"], before[f"{PROJECTION}.weight"])
    assert not torch.equal(after["encoder.embeddings.word_embeddings.weight"],
                           before["encoder.embeddings.word_embeddings.weight"])
    assert all(torch.equal(v, teacher[k]) for k, v in model.teacher.state_dict().items())
    backend.save_state(tmp_path / "ckpt", 0)
    weights = student_weights(consolidate(tmp_path / "ckpt", 0))
    fresh = build_mtdnn(encoders["student"], FOUR_TASKS)
    fresh.load_state_dict(weights)  # strict: exactly the student's keys
    assert torch.equal(fresh.encoder.embeddings.word_embeddings.weight,
                       after["encoder.embeddings.word_embeddings.weight"])


def _teachers_json(tmp_path: Path, members: list[dict]) -> Storage:
    store = Storage.from_uri(str(tmp_path / "exp"))
    store.write_json_atomic("teachers/teachers.json", {"members": members})
    return store


def test_best_representation_teacher_reads_the_students_tokenization(tmp_path: Path) -> None:
    store = _teachers_json(tmp_path, [
        {"name": "m000", "average": 80.0, "tokenization": None, "lineage": "a"},
        {"name": "m001", "average": 90.0, "tokenization": "other", "lineage": "b"},
        {"name": "m002", "average": 85.0, "tokenization": None, "lineage": "c"},
        {"name": "m003", "average": 85.0, "tokenization": None, "lineage": "d"}])
    assert representation_teacher(store, "best", None)["name"] == "m002"
    assert representation_teacher(store, "best", "other")["name"] == "m001"
    assert representation_teacher(store, "m000", None)["lineage"] == "a"
    with pytest.raises(MtkdError, match="another tokenization"):
        representation_teacher(store, "m001", None)
    with pytest.raises(MtkdError, match="not a finished member"):
        representation_teacher(store, "m009", None)
    with pytest.raises(MtkdError, match="no finished member"):
        representation_teacher(store, "best", "third")


def test_run_lineage_follows_weight_and_teacher() -> None:
    from mtkd.student.stage import plan_runs, run_lineage

    base = config_from_dict({"name": "x", "tasks": [{"name": "trec"}]})
    run = plan_runs(base)[0]
    plain = run_lineage(base, run, {"trec": "d"}, {"trec": "s"})
    weighted = config_from_dict({"name": "x", "tasks": [{"name": "trec"}],
                                 "student": {"kd": {"hidden_weight": 0.5}}})
    assert run_lineage(weighted, run, {"trec": "d"}, {"trec": "s"}) != plain
    assert (run_lineage(weighted, run, {"trec": "d"}, {"trec": "s"}, "m1")
            != run_lineage(weighted, run, {"trec": "d"}, {"trec": "s"}, "m2"))
    shaped = config_from_dict({"name": "x", "tasks": [{"name": "trec"}],
                               "student": {"hidden_size": 256}})
    assert run_lineage(shaped, run, {"trec": "d"}, {"trec": "s"}) != plain


def _problems(data: dict) -> str:
    """What check_encoders (the validate-time checks) says about ``data``: '' when fine."""
    from mtkd.encoder_checks import check_encoders

    try:
        check_encoders(config_from_dict(data), "exp.yaml", local_only=True)
    except ConfigError as exc:
        return str(exc)
    return ""


def test_validate_refuses_a_teacher_with_another_tokenizer(encoders: dict[str, Path],
                                                           tmp_path: Path) -> None:
    shutil.copytree(encoders["other_tokenizer"], tmp_path / "enc")
    data = {"name": "exp", "storage_path": str(tmp_path / "runs"),
            "encoder": {"path": str(encoders["teacher"])},
            "tasks": [{"name": "rotten_tomatoes", "max_length": 32}],
            "teachers": {"size": 2, "variation": {
                "strategy": "list", "members": [{"seed": 1},
                                                {"encoder": str(tmp_path / "enc")}]}},
            "student": {"encoder": str(encoders["student"]), "num_layers": 2,
                        "kd": {"hidden_weight": 1.0, "hidden_teacher": "m001"}}}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "mtkd", "validate", str(path)], cwd=REPO,
                            text=True, capture_output=True, timeout=300)
    assert result.returncode == 2
    assert "student.kd.hidden_teacher" in result.stderr and "m001" in result.stderr
    data["student"]["kd"]["hidden_teacher"] = "m000"  # encoder.path's tokenizer: the same
    assert _problems(data) == ""
    data["student"]["kd"]["hidden_teacher"] = "best"  # m000 qualifies
    assert _problems(data) == ""
    data["teachers"]["variation"]["members"][0] = {"encoder": str(tmp_path / "enc")}
    assert "student.kd.hidden_teacher" in _problems(data)  # best: no member qualifies
    data["student"]["kd"]["hidden_teacher"] = "m007"
    assert "not a planned member" in _problems(data)
    data["student"]["kd"] = {"hidden_weight": 1.0, "hidden_layers": [1, 2, 3]}
    assert "student.kd.hidden_layers" in _problems(data)
    data["student"]["kd"] = {"hidden_weight": 1.0}
    data["student"]["distill"] = False
    with pytest.raises(ConfigError, match=r"student\.kd\.hidden_weight"):
        config_from_dict(data)
    assert json.dumps(data)  # plain data throughout
