"""Config loading, overrides, validation messages, redaction and the reference doc."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from mtkd.config import (
    ExperimentConfig,
    config_from_dict,
    config_to_yaml,
    load_config,
    stable_hash,
)
from mtkd.config import schema as schema_module
from mtkd.config.reference import field_docs, render_reference
from mtkd.errors import ConfigError, MtkdError

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))


def minimal(**extra) -> dict:
    data = {"name": "exp", "tasks": [{"name": "rotten_tomatoes"}]}
    data.update(extra)
    return data


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def problems_of(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return {p.path: p.message + " | " + p.fix for p in info.value.problems}


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    config = load_config(path)
    assert config.name
    assert config.tasks


def test_quickstart_is_shipped() -> None:
    assert REPO / "jobs" / "configs" / "quickstart.yaml" in SHIPPED_CONFIGS


def test_defaults_fill_missing_sections() -> None:
    config = config_from_dict(minimal())
    assert config.storage_path == "./runs"
    assert config.teachers.size == 3
    assert config.student.deepspeed.zero_stage == "auto" and config.student.zero_stage == 0
    assert config.student.deepspeed.mixed_precision == "autocast"
    assert config.tasks[0].source == "bundled"
    # Every precision setting is decided by the hardware unless the user says otherwise.
    assert {config.teachers.training.precision, config.soft_targets.precision,
            config.student.training.precision, config.report.precision} == {"auto"}


def test_overrides_parse_yaml_scalars_and_index_lists(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(minimal()))
    config = load_config(path, [
        "teachers.size=5", "student.distill=false", "tasks.0.max_length=48",
        "teachers.variation.seed=[7, 8]", "ray.address=auto", "student.num_layers=null",
        "soft_targets.temperature=2",
    ])
    assert config.teachers.size == 5
    assert config.student.distill is False
    assert config.tasks[0].max_length == 48
    assert config.teachers.variation.seed == [7, 8]
    assert config.ray.address == "auto"
    assert config.student.num_layers is None
    assert config.soft_targets.temperature == 2.0 and isinstance(
        config.soft_targets.temperature, float)


def test_override_creates_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(minimal()))
    assert load_config(path, ["student.kd.soft_weight=0.25"]).student.kd.soft_weight == 0.25


def test_bad_overrides_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(minimal()))
    with pytest.raises(ConfigError) as info:
        load_config(path, ["no_equals_sign", "tasks.5.name=x", "name.sub=1"])
    paths = [p.path for p in info.value.problems]
    assert paths == ["no_equals_sign", "tasks.5", "name.sub"]


def test_override_unknown_key_gets_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(minimal()))
    with pytest.raises(ConfigError) as info:
        load_config(path, ["teachers.sizee=4"])
    assert "did you mean 'size'" in str(info.value)


def test_unknown_wrong_type_and_out_of_range_all_reported_with_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join([
        "name: exp",
        "tasks:",
        "  - name: rotten_tomatoes",
        "    max_lenght: 64",
        "teachers:",
        "  size: three",
        "student:",
        "  kd:",
        "    soft_weight: 1.5",
    ]))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = {p.path: p for p in info.value.problems}
    assert set(found) == {"tasks.0.max_lenght", "teachers.size", "student.kd.soft_weight"}
    assert "did you mean 'max_length'" in found["tasks.0.max_lenght"].fix
    assert found["tasks.0.max_lenght"].where.endswith("exp.yaml:4")
    assert "expected an integer" in found["teachers.size"].message
    assert found["teachers.size"].where.endswith("exp.yaml:6")
    assert "[0.0, 1.0]" in found["student.kd.soft_weight"].message
    assert found["student.kd.soft_weight"].where.endswith("exp.yaml:9")
    text = str(info.value)
    assert "3 problem(s)" in text and text.count("fix:") == 3


def test_literal_typo_suggests_valid_choice() -> None:
    found = problems_of(minimal(soft_targets={"aggregation": "mean_probs"}))
    assert "did you mean 'mean_prob'" in found["soft_targets.aggregation"]
    found = problems_of(minimal(student={"deepspeed": {"zero_stage": 4,
                                                       "mixed_precision": "autocasts"}}))
    assert "one of 0, 1, 2, 3, 'auto'" in found["student.deepspeed.zero_stage"]
    assert "did you mean 'autocast'" in found["student.deepspeed.mixed_precision"]


def test_bool_is_not_an_integer_and_int_is_a_float() -> None:
    found = problems_of(minimal(teachers={"size": True}))
    assert "expected an integer" in found["teachers.size"]
    config = config_from_dict(minimal(student={"kd": {"soft_weight": 1}}))
    assert config.student.kd.soft_weight == 1.0


def test_list_and_mapping_types_checked_per_item() -> None:
    found = problems_of(minimal(teachers={"variation": {"seed": [1, "two"]}},
                                ray={"env_vars": {"A": 3}}))
    assert set(found) == {"teachers.variation.seed.1", "ray.env_vars.A"}


@pytest.mark.parametrize(("data", "path", "needle"), [
    (minimal(teachers={"size": 2, "min_members": 3}), "teachers.min_members", "exceeds"),
    (minimal(tasks=[{"name": "trec"}, {"name": "trec"}]), "tasks.1.name", "listed twice"),
    (minimal(tasks=[{"name": "rotten_tomato"}]), "tasks.0.name",
     "did you mean 'rotten_tomatoes'"),
    (minimal(tasks=[{"name": "mine", "source": "files", "type": "regression",
                     "files": {"train": "t.csv"}, "metrics": ["auc"]}]), "tasks.0.metrics.0",
     "unknown metric"),
    (minimal(student={"training": {"precision": "fp16"}}), "student.training.precision",
     "student.use_gpu: true"),
    (minimal(teachers={"training": {"precision": "fp16"}}), "teachers.training.precision",
     "teachers.resources_per_member.gpu: 1"),
    (minimal(soft_targets={"precision": "fp16"}), "soft_targets.precision",
     "soft_targets.resources_per_actor.gpu: 1"),
    # the driver's own evaluations run on its CPU: no GPU to give (found after training
    # before, by a new user)
    (minimal(report={"precision": "fp16"}), "report.precision", "auto (the best precision"),
    (minimal(tasks=[{"name": "trec", "teacher": False}]), "student.distill", "no task has"),
    (minimal(storage_path="s3://AKIA:secret@bucket/x"), "storage_path", "credentials"),
    (minimal(storage_path="gs://bucket"), "storage_path", "not supported"),
    (minimal(name="my exp/1"), "name", "not a valid"),
    (minimal(tasks=[]), "tasks", "is empty"),
    (minimal(tasks=[{"name": "mine", "source": "files"}]), "tasks.0.type", "required"),
    # pair accuracy needs candidates: a pairwise task is already scored over its pairs
    (minimal(tasks=[{"name": "boolq", "pairwise_origin": True}]), "tasks.0.pairwise_origin",
     "ranking tasks"),
    (minimal(tasks=[{"name": "q", "source": "files", "type": "pair_classification",
                     "files": {"train": "t.csv"}, "labels": [0, 1],
                     "pairwise_origin": True}]), "tasks.0.pairwise_origin", "type: ranking"),
    (minimal(sampling={"strategy": "capped"}), "sampling.cap", "required"),
    (minimal(teachers={"variation": {"strategy": "list"}}), "teachers.variation.members",
     "empty"),
    (minimal(soft_targets={"resources_per_actor": {"cpu": 0}}),
     "soft_targets.resources_per_actor", "neither CPU nor GPU"),
    (minimal(teachers={"training": {"learning_rate": 3}}), "teachers.training.learning_rate",
     "(0, 1)"),
    (minimal(teachers={"workers_per_member": 0}), "teachers.workers_per_member", ">= 1"),
    (minimal(teachers={"workers_per_member": 2, "resources_per_member": {"gpu": 0.5}}),
     "teachers.resources_per_member.gpu", "whole number of GPUs"),
    (minimal(teachers={"checkpoint_minutes": -1}), "teachers.checkpoint_minutes", ">= 0"),
    (minimal(student={"checkpoint_minutes": -0.5}), "student.checkpoint_minutes", ">= 0"),
    (minimal(tracking={"tensorboard": "yes please"}), "tracking.tensorboard", "true or false"),
])
def test_value_rules(data: dict, path: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    messages = [f"{p.message} | {p.fix}" for p in info.value.problems if p.path == path]
    assert any(needle in m for m in messages), info.value.problems


@pytest.mark.parametrize(("made_at", "tau", "loss", "distill", "ok"), [
    (1.0, 1.0, "ce", True, True), (1.0, 3.0, "ce", True, True),   # softened in the loss
    (2.0, 2.0, "kl", True, True),                                 # made at tau, as stored
    (2.0, 1.0, "ce", True, False), (2.0, 3.0, "kl", True, False),  # contradictory
    (2.0, 1.0, "mse_logits", True, True),                         # no temperature used
    (2.0, 1.0, "ce", False, True),                                # no distillation
])
def test_one_meaning_of_temperature(made_at: float, tau: float, loss: str, distill: bool,
                                    ok: bool) -> None:
    data = minimal(soft_targets={"temperature": made_at},
                   student={"distill": distill, "kd": {"temperature": tau, "soft_loss": loss}})
    if ok:
        config_from_dict(data)
        return
    found = problems_of(data)
    assert set(found) == {"soft_targets.temperature"}
    message = found["soft_targets.temperature"]
    assert "student.kd.temperature" in message and f"{made_at}" in message, message


def test_fp16_allowed_on_gpu() -> None:
    config = config_from_dict(minimal(student={"use_gpu": True,
                                               "training": {"precision": "fp16"}}))
    assert config.student.training.precision == "fp16"


def test_multi_worker_members_are_allowed() -> None:
    config = config_from_dict(minimal(teachers={"workers_per_member": 4,
                                                "resources_per_member": {"gpu": 1}}))
    assert config.teachers.workers_per_member == 4
    assert config.teachers.resources_per_member.gpu == 1.0


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: exp\ntasks: [\n  - oops: : :\n")
    with pytest.raises(MtkdError) as info:
        load_config(path)
    assert f"{path}:" in str(info.value) and "invalid YAML" in str(info.value)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(MtkdError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_saved_config_redacts_secret_env_vars_and_round_trips() -> None:
    config = config_from_dict(minimal(ray={"env_vars": {
        "AWS_SECRET_ACCESS_KEY": "hunter2", "HF_TOKEN": "tok123", "OMP_NUM_THREADS": "1"}}))
    text = config_to_yaml(config)
    assert "hunter2" not in text and "tok123" not in text
    assert "OMP_NUM_THREADS: '1'" in text
    reloaded = config_from_dict(yaml.safe_load(text))
    assert reloaded.tasks == config.tasks and reloaded.student == config.student


def test_stable_hash_is_deterministic_and_sensitive() -> None:
    a = config_from_dict(minimal())
    b = config_from_dict(minimal())
    c = config_from_dict(minimal(seed=1))
    assert stable_hash(a) == stable_hash(b)
    assert stable_hash(a) != stable_hash(c)


def _all_schema_dataclasses() -> list[type]:
    return [obj for obj in vars(schema_module).values()
            if dataclasses.is_dataclass(obj) and obj.__module__ == schema_module.__name__]


@pytest.mark.parametrize("cls", _all_schema_dataclasses(), ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls: type) -> None:
    docs = field_docs(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}
    assert all(docs.values()), [k for k, v in docs.items() if not v]
    typing.get_type_hints(cls)  # every annotation resolves


def test_config_reference_doc_is_current() -> None:
    committed = (REPO / "docs" / "CONFIG.md").read_text()
    assert committed == render_reference(), (
        "docs/CONFIG.md is stale: run `python -m mtkd.config.reference > docs/CONFIG.md`")


def test_experiment_config_default_construction_is_invalid_without_name() -> None:
    found = problems_of({"tasks": [{"name": "rotten_tomatoes"}]})
    assert "name" in found
    assert isinstance(ExperimentConfig(), ExperimentConfig)


def test_bundled_task_names_match_the_registry() -> None:
    from mtkd.config.schema import BUNDLED_TASK_NAMES
    from mtkd.tasks.bundled import BUNDLED

    assert set(BUNDLED_TASK_NAMES) == set(BUNDLED)


@pytest.mark.parametrize(("extra", "key"), [
    ({"labels": ["pos", "neg"]}, "tasks.0.labels"),
    ({"type": "regression"}, "tasks.0.type"),
    ({"files": {"train": "x.csv"}}, "tasks.0.files"),
    ({"glue_task": "sst2"}, "tasks.0.glue_task"),
])
def test_file_settings_on_a_bundled_task_are_refused_not_ignored(extra: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"name": "x", "tasks": [{"name": "rotten_tomatoes", **extra}]})
    assert [p.path for p in error.value.problems] == [key]
    assert "bundled task" in str(error.value)
