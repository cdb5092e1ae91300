"""``mtkd estimate``: GPU-hours and dollars computed from a config's sizes, checked against a
hand computation; the paper-scale config validates offline and is costed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtkd.cli import main
from mtkd.config import config_from_dict, load_config
from mtkd.errors import MtkdError
from mtkd.estimate import GLUE_TRAIN_SIZES, encoder_dims, estimate

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "jobs" / "configs" / "paper-glue.yaml"

SMALL = {
    "name": "small", "storage_path": "./runs",
    "encoder": {"path": "google-bert/bert-base-uncased"},
    "tasks": [{"name": "sst2", "source": "glue", "glue_task": "sst2", "max_length": 128,
               "max_train_examples": 1000},
              {"name": "rte", "source": "glue", "glue_task": "rte", "max_length": 64}],
    "teachers": {"shape": "multitask", "size": 2, "resources_per_member": {"gpu": 1},
                 "training": {"epochs": 2, "batch_size": 32}},
    "student": {"num_layers": 6, "num_workers": 2, "use_gpu": True, "seeds": [0],
                "training": {"epochs": 1, "batch_size": 16}},
}


def test_small_config_matches_a_hand_computation() -> None:
    result = estimate(config_from_dict(SMALL), rate=150.0, inference_factor=4.9, gpus=8,
                      instance="p3.2xlarge")
    # examples: sst2 capped at 1000; rte's published train size, 2,490
    assert result.examples == {"sst2": 1000, "rte": 2490}
    # BERT-base (12 x 768) runs 24*1024^2 / (12*768^2) = 32/9 times BERT-large's 150/s at
    # 128 tokens, twice that at 64 tokens; the 6-layer student twice the teacher's rate.
    base128, base64 = 150 * 32 / 9, 150 * 64 / 9
    member_s = 1000 * 2 / base128 + 2490 * 2 / base64
    soft_s = 2 * (1000 / (base128 * 4.9) + 2490 / (base64 * 4.9))
    student_s = 1000 / (2 * base128) + 2490 / (2 * base64)
    teachers, soft, student = result.stages
    assert (teachers.models, soft.models, student.models) == (2, 2, 1)
    # steps: ceil(1000/32) + ceil(2490/32) = 32 + 78 per epoch; the student's global batch
    # is 16 x 2 workers = 32 too
    assert teachers.steps == 2 * (32 + 78) * 2 and student.steps == 32 + 78
    assert teachers.examples == pytest.approx(2 * 2 * 3490)
    assert teachers.gpu_hours == pytest.approx(2 * member_s / 3600)
    assert soft.gpu_hours == pytest.approx(soft_s / 3600)
    assert student.gpu_hours == pytest.approx(student_s / 3600)
    assert (teachers.gpus, soft.gpus, student.gpus) == (2, 2, 2)
    gpu_h = (2 * member_s + soft_s + student_s) / 3600
    wall = gpu_h / 2
    assert result.gpu_hours == pytest.approx(gpu_h)
    assert result.wall_hours == pytest.approx(wall)
    # p3.2xlarge: $3.06 per GPU-hour; the m5.2xlarge head $0.384 per hour of wall time
    assert result.usd == pytest.approx(gpu_h * 3.06 + wall * 0.384)


def test_rate_and_price_are_parameters() -> None:
    config = config_from_dict(SMALL)
    slow = estimate(config, rate=75.0)
    fast = estimate(config, rate=150.0)
    assert slow.gpu_hours == pytest.approx(2 * fast.gpu_hours)
    unpriced = estimate(config, instance="g6.2xlarge")  # no verified price
    assert unpriced.usd is None
    priced = estimate(config, instance="g6.2xlarge", usd_per_gpu_hour=1.0)
    assert priced.usd == pytest.approx(fast.gpu_hours + fast.wall_hours * 0.384)


def test_sizes_without_a_source_are_errors() -> None:
    files = {**SMALL, "tasks": [{"name": "mine", "source": "files",
                                 "type": "classification", "labels": ["a", "b"],
                                 "files": {"train": "t.csv", "dev": "d.csv"}}]}
    with pytest.raises(MtkdError, match=r"tasks\.0 \(mine\).*max_train_examples"):
        estimate(config_from_dict(files))
    assert estimate(config_from_dict(files), examples={"mine": 640}).examples == {"mine": 640}
    with pytest.raises(MtkdError, match="not a task of this config"):
        estimate(config_from_dict(SMALL), examples={"mnli": 5})
    with pytest.raises(MtkdError, match="size is unknown"):
        encoder_dims("someone/mystery-encoder")
    assert encoder_dims("google-bert/bert-large-uncased") == (24, 1024)


def test_local_encoder_sizes_come_from_its_config(tiny_encoder_dir: Path) -> None:
    config = json.loads((tiny_encoder_dir / "config.json").read_text())
    assert encoder_dims(str(tiny_encoder_dir)) == (config["num_hidden_layers"],
                                                   config["hidden_size"])


def test_cli_prints_the_estimate_and_exits_2_on_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    assert main(["estimate", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["usd"] == pytest.approx(estimate(config_from_dict(SMALL)).usd)
    assert main(["estimate", str(path), "--examples", "rte"]) == 2
    assert "TASK=N" in capsys.readouterr().err


def test_paper_config_is_costed_from_glue_sizes() -> None:
    config = load_config(PAPER)
    result = estimate(config)
    assert result.examples == {t.name: GLUE_TRAIN_SIZES[t.glue_task] for t in config.tasks}
    teachers, soft, student = result.stages
    with_teacher = [t.name for t in config.tasks if t.teacher]
    assert teachers.models == len(with_teacher) * config.teachers.size + 1  # + the shared MT-DNN
    assert soft.models == len(with_teacher) * config.teachers.size
    assert student.models == 2  # the distilled student and the baseline
    assert config.student.num_workers * config.student.resources_per_worker.gpu == 8
    assert result.usd is not None and result.usd > 0


def test_paper_config_validates_offline(tmp_path: Path) -> None:
    """Hub ids need no network to validate: without offline mode they are named as not
    checked (exit 0); with HF_HUB_OFFLINE=1 and an empty cache, the clear error (exit 2)."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_OFFLINE", None)
    ok = subprocess.run([sys.executable, "-m", "mtkd", "validate", str(PAPER)], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "not checked here" in ok.stdout and "OK:" in ok.stdout
    offline = subprocess.run([sys.executable, "-m", "mtkd", "validate", str(PAPER)],
                             env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                             text=True, timeout=120)
    assert offline.returncode == 2
    assert "encoder.path" in offline.stderr and "HF_HUB_OFFLINE" in offline.stderr


def test_wall_time_waits_for_the_shared_model_and_the_longest_member() -> None:
    """per_task + init_from_multitask: the shared model trains first, alone; then the
    task members side by side, never faster than the longest of them."""
    data = {**SMALL, "teachers": {**SMALL["teachers"], "shape": "per_task", "size": 1,
                                  "init_from_multitask": True}}
    result = estimate(config_from_dict(data), rate=150.0, gpus=8)
    base128, base64 = 150 * 32 / 9, 150 * 64 / 9
    init_s = 1000 * 2 / base128 + 2490 * 2 / base64          # both tasks, 1 GPU
    sst2_s, rte_s = 1000 * 2 / base128, 2490 * 2 / base64   # one member per task
    teachers = result.stages[0]
    assert teachers.models == 3
    assert teachers.gpu_hours == pytest.approx((init_s + sst2_s + rte_s) / 3600)
    assert teachers.wall_hours == pytest.approx((init_s + max(rte_s, sst2_s)) / 3600)


def test_no_distillation_costs_no_teachers() -> None:
    data = {**SMALL, "student": {**SMALL["student"], "distill": False}}
    result = estimate(config_from_dict(data), rate=150.0)
    assert [s.name for s in result.stages] == ["student"]
    assert result.stages[0].models == 1  # the baseline, one seed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rate": float("nan")}, "finite numbers > 0"),
    ({"inference_factor": float("nan")}, "finite numbers > 0"),
    ({"usd_per_gpu_hour": float("inf")}, "finite numbers > 0"),
    ({"rate": 0.0}, "finite numbers > 0"),
    ({"instance": "m5.2xlarge"}, "not a GPU instance type"),
])
def test_bad_parameters_are_user_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(MtkdError, match=message):
        estimate(config_from_dict(SMALL), **kwargs)


@pytest.mark.parametrize("names", [("sst2", "rte"), ("a", "a_very_long_task_name_indeed"),
                                   ("x" * 40, "y")])
def test_the_examples_table_aligns_whatever_the_task_names(names: tuple[str, str]) -> None:
    from mtkd.estimate import render

    tasks = [{**task, "name": name} for task, name in zip(SMALL["tasks"], names, strict=True)]
    text = render(estimate(config_from_dict({**SMALL, "tasks": tasks}), rate=150.0,
                           inference_factor=4.9, gpus=8, instance="p3.2xlarge"))
    rows = [line for line in text.splitlines() if line.startswith("  ") and "(" in line]
    assert [row.split()[0] for row in rows] == list(names)
    # the counts end in one column, and the sources start in one column
    assert len({row.index("(") for row in rows}) == 1
    assert len({row.index("(") - len(row.split("(")[0].rstrip()) for row in rows}) == 1
