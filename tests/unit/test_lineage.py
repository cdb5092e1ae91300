"""Lineage: which artifacts each config key changes, from the declarations the code uses.

Every leaf key of the config is perturbed (a value derived from its type, not a hand-kept
list of keys); the lineages of every artifact of a small experiment are computed with the
functions the stages themselves call, and exactly the artifacts the declarations in
``mtkd.experiment`` say (directly, or through what they read) must change.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin

import pytest

from mtkd.config import ExperimentConfig, StageConfig, StageLoss, config_from_dict
from mtkd.data.stage import tokenized_lineage
from mtkd.experiment import (
    ARTIFACTS,
    KINDS,
    OPERATIONAL,
    config_leaves,
    lineage,
    role_of,
    stage_values,
)
from mtkd.pipeline import registered_stages
from mtkd.precision import DeviceInfo, resolve_precision
from mtkd.soft.stage import predictions_lineage, targets_lineage
from mtkd.student.stage import plan_runs, run_lineage
from mtkd.teachers.plan import init_member, member_lineage, plan_members

CPU = DeviceInfo(type="cpu", name="test cpu", capability="AVX2", native_bf16=False)


def base_config(**extra: Any) -> ExperimentConfig:
    data = {"name": "lin", "tasks": [{"name": "trec"}, {"name": "rotten_tomatoes"}],
            "teachers": {"size": 2, "variation": {"strategy": "grid", "seed": [1, 2]}},
            "student": {"baseline": True}, **extra}
    return config_from_dict(data)


def artifact_lineages(config: ExperimentConfig) -> dict[tuple[str, str], str]:
    """{(kind, instance): lineage} of every artifact, chained as the stages chain them:
    tokenized task -> member -> predictions -> soft targets -> student run -> report.
    Raw content and tokenizer fingerprints are fixed (they are data, not config)."""
    out: dict[tuple[str, str], str] = {}
    data = {t.name: tokenized_lineage(config, i, "tokenizer", {"train": "raw-" + t.name})
            for i, t in enumerate(config.tasks)}
    out.update({("tokenized_task", t): v for t, v in data.items()})
    init = init_member(config)
    if init is not None:
        data = {**data, init.name: member_lineage(init, config, data)}
        out[("member", init.name)] = data[init.name]
    members = plan_members(config)
    member_lin = {m.name: member_lineage(m, config, data) for m in members}
    out.update({("member", n): v for n, v in member_lin.items()})
    precision = resolve_precision(config.soft_targets.precision, CPU).precision
    predictions = {n: predictions_lineage(config, v, precision) for n, v in member_lin.items()}
    out.update({("predictions", n): v for n, v in predictions.items()})
    soft = {}
    for task in (t.name for t in config.tasks if t.teacher):
        covering = {m.name: predictions[m.name] for m in members if task in m.tasks}
        soft[task] = targets_lineage(config, task, covering, data[task])
        out[("soft_targets", task)] = soft[task]
    runs = {r.name: run_lineage(config, r, {t.name: data[t.name] for t in config.tasks}, soft)
            for r in plan_runs(config)}
    out.update({("student_run", n): v for n, v in runs.items()})
    out[("report", "report")] = lineage("report", config, inputs={
        "members": member_lin, "soft": soft, "runs": runs})
    return out


# ------------------------------------------------------------------ perturbing one key


def _field_type(config: ExperimentConfig, key: str) -> Any:
    """The annotated type of a dotted key (``tasks.x`` reads TaskConfig)."""
    owner: Any = config
    parts = key.split(".")
    for part in parts[:-1]:
        owner = owner.tasks[0] if part == "tasks" else getattr(owner, part)
    return typing.get_type_hints(type(owner))[parts[-1]]


SPECIAL = {  # keys whose values have a shape no type-driven rule can guess
    "tasks.name": "renamed", "tasks.files": {"train": "x.csv"},
    "tasks.columns": {"text": "sentence"}, "tasks.labels": ["a", "b"],
    "tasks.metrics": ["accuracy"], "tasks.glue_task": "sst2",
    "encoder.path": "/models/other", "student.encoder": "/models/small",
    "ray.address": "auto", "ray.env_vars": {"A": "1"},
    "teachers.variation.members": [{"seed": 7}],
    "teachers.variation.seed": [1, 2, 3],
    "teachers.variation.encoder": ["/models/a"],
    "student.seeds": [0, 1], "student.kd.hidden_teacher": "m001",
    "student.stages": [StageConfig("soft", epochs=1.0, loss=StageLoss(soft=1.0))],
    "student.kd.transfer_text.bundled": "rotten_tomatoes_plots",
    "student.kd.transfer_text.files": ["texts.txt"],
    "storage_path": "/elsewhere", "name": "other",
}
PRECISION_KEYS = {"teachers.training.precision", "soft_targets.precision",
                  "student.training.precision", "report.precision"}


def perturbed_value(key: str, value: Any, annotation: Any) -> Any:
    if key in SPECIAL:
        return SPECIAL[key]
    if key in PRECISION_KEYS:
        return "bf16"  # "fp32" may be what auto resolves to on this CPU
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal or any(get_origin(a) is Literal for a in args):
        options = [o for a in ([annotation] if get_origin(annotation) is Literal else args)
                   if get_origin(a) is Literal for o in get_args(a)]
        return next(o for o in options if o != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 + 0.3  # never equal to value (0.5 -> 0.55, 1 -> 0.8)
    if value is None:
        kind = next(iter(args), None)
        origin = get_origin(kind) or kind
        if origin is bool:
            return True
        if origin is int:
            return 3
        if origin is float:
            return 0.5
        if origin is list:
            return [1]
    if isinstance(value, list) and not value:
        inner = get_args(next(iter(args), annotation))
        return [0.2] if inner and inner[0] is float else [1]
    raise AssertionError(f"no perturbation rule for {key} = {value!r} ({annotation})")


def with_value(config: ExperimentConfig, key: str, value: Any) -> ExperimentConfig:
    """``config`` with one dotted key replaced (``tasks.x``: the first task's)."""
    def replace(obj: Any, parts: list[str]) -> Any:
        head, rest = parts[0], parts[1:]
        if head == "tasks":
            first = replace(obj.tasks[0], rest)
            return dataclasses.replace(obj, tasks=[first, *obj.tasks[1:]])
        if not rest:
            if head == "members" and value and isinstance(value[0], dict):
                from mtkd.config import MemberVariant

                return dataclasses.replace(obj, members=[MemberVariant(**v) for v in value])
            return dataclasses.replace(obj, **{head: value})
        return dataclasses.replace(obj, **{head: replace(getattr(obj, head), rest)})

    return replace(config, key.split("."))


def expected_changes(key: str, base: dict[tuple[str, str], str]) -> set[tuple[str, str]]:
    """From the declarations: the kinds covering ``key`` and every kind reading them,
    transitively; a per-task key changes its own task's artifact only."""
    direct = {k.name for k in ARTIFACTS if k.covers(key)}
    changed = set(direct)
    grew = True
    while grew:
        grew = False
        for kind in ARTIFACTS:
            if kind.name not in changed and set(kind.inputs) & changed:
                changed.add(kind.name)
                grew = True
    expected = set()
    for kind, instance in base:
        if kind not in changed:
            continue
        # A baseline reads no soft targets (student.stage.run_lineage): it changes only
        # through its own settings or the tokenized data.
        if (kind, instance) == ("student_run", "baseline") and not (
                "student_run" in direct or "tokenized_task" in direct):
            continue
        if (KINDS[kind].per_task and kind in direct and key.startswith("tasks.")
                and instance != "trec"):
            continue
        # A baseline never reads the distillation settings nor the stages
        # (student.stage.run_config).
        if (kind == "student_run" and instance == "baseline"
                and (key.startswith("student.kd.") or key == "student.stages")):
            continue
        expected.add((kind, instance))
    return expected


LEAVES = [key for key, _ in config_leaves(base_config(), 0)]
NON_PLAN = [k for k in LEAVES if not any(r.startswith("plan:") for r in role_of(k))
            and k != "tasks.name"]  # a task's name names its artifacts: tested below


def test_every_key_has_exactly_one_kind_of_role() -> None:
    for key in LEAVES:
        roles = role_of(key)
        assert roles, f"{key} is declared nowhere in mtkd.experiment"
        kinds = {r.split(":")[0] for r in roles}
        assert len(kinds) == 1, f"{key} has conflicting roles {roles}"


def test_every_declared_key_exists() -> None:
    declared = set(OPERATIONAL)
    for kind in ARTIFACTS:
        declared |= set(kind.content) | set(kind.plan) | set(kind.exclude)
    for prefix in declared:
        assert any(k == prefix or k.startswith(prefix + ".") for k in LEAVES), prefix


@pytest.mark.parametrize("key", NON_PLAN)
def test_perturbing_a_key_rebuilds_exactly_what_its_declarations_say(key: str) -> None:
    config = base_config()
    value = dict(config_leaves(config, 0))[key]
    changed_config = with_value(config, key, perturbed_value(key, value,
                                                            _field_type(config, key)))
    base, after = artifact_lineages(config), artifact_lineages(changed_config)
    assert set(after) == set(base), "a non-plan key must not change which artifacts exist"
    changed = {a for a in base if base[a] != after[a]}
    assert changed == expected_changes(key, base)
    # Stage level: a stage's manifest lineage moves iff the key is content of its kinds.
    for stage in [s.name for s in registered_stages()]:
        moved = stage_values(stage, config) != stage_values(stage, changed_config)
        assert moved == any(k.stage == stage and k.covers(key) for k in ARTIFACTS), stage


def test_renaming_a_task_makes_new_task_artifacts() -> None:
    config = base_config()
    base = artifact_lineages(config)
    renamed = artifact_lineages(with_value(config, "tasks.name", "questions"))
    assert ("tokenized_task", "questions") in renamed and ("tokenized_task", "trec") not in renamed
    assert base[("tokenized_task", "rotten_tomatoes")] == renamed[("tokenized_task",
                                                                   "rotten_tomatoes")]
    assert base[("member", "m000")] != renamed[("member", "m000")]


def test_operational_keys_rebuild_nothing() -> None:
    assert "student.checkpoint_every" in NON_PLAN and "student.keep_checkpoints" in NON_PLAN
    assert role_of("student.checkpoint_every") == ["operational"]
    assert role_of("student.keep_checkpoints") == ["operational"]


def test_baseline_reads_pooling_but_not_kd() -> None:
    """The issue's too-loose case: with student.distill false, encoder.pooling changes the
    baseline; the too-strict case: a kd setting does not."""
    config = base_config(student={"distill": False})
    base = artifact_lineages(config)
    pooled = artifact_lineages(with_value(config, "encoder.pooling", "mean"))
    assert base[("student_run", "baseline")] != pooled[("student_run", "baseline")]
    kd = artifact_lineages(with_value(config, "student.kd.soft_weight", 0.9))
    assert base[("student_run", "baseline")] == kd[("student_run", "baseline")]


def test_growing_the_ensemble_keeps_members_and_redistils_the_student() -> None:
    """size 2 -> 3 (the issue's scenario): m000 and m001 and their predictions are reused,
    m002 is new, every soft target and the student change; the baseline does not."""
    two = artifact_lineages(base_config())
    three = artifact_lineages(base_config(teachers={
        "size": 3, "variation": {"strategy": "grid", "seed": [1, 2, 3]}}))
    for name in ("m000", "m001"):
        assert two[("member", name)] == three[("member", name)]
        assert two[("predictions", name)] == three[("predictions", name)]
    assert ("member", "m002") in three and ("member", "m002") not in two
    for task in ("trec", "rotten_tomatoes"):
        assert two[("soft_targets", task)] != three[("soft_targets", task)]
    assert two[("student_run", "student")] != three[("student_run", "student")]
    assert two[("student_run", "baseline")] == three[("student_run", "baseline")]


def test_a_task_without_teacher_leaves_other_soft_targets_alone() -> None:
    config = base_config(teachers={"shape": "per_task", "size": 1})
    base = artifact_lineages(config)
    off = artifact_lineages(with_value(config, "tasks.teacher", False))
    assert ("member", "trec.m000") not in off and ("soft_targets", "trec") not in off
    assert base[("member", "rotten_tomatoes.m000")] == off[("member", "rotten_tomatoes.m000")]
    assert base[("soft_targets", "rotten_tomatoes")] == off[("soft_targets", "rotten_tomatoes")]
    assert base[("student_run", "student")] != off[("student_run", "student")]


def test_precision_enters_predictions_as_resolved() -> None:
    """auto and the precision it resolves to on this device give the same predictions."""
    config = base_config()
    resolved = resolve_precision("auto", CPU).precision
    same = with_value(config, "soft_targets.precision", resolved)
    assert artifact_lineages(config) == artifact_lineages(same)
    other = with_value(config, "soft_targets.precision", "bf16" if resolved != "bf16" else "fp32")
    assert artifact_lineages(config) != artifact_lineages(other)


def test_the_report_lineage_from_its_own_settings_equals_the_declared_one() -> None:
    """``mtkd report`` holds only report.*: its lineage (lineage_of over those values, as
    report/stage.py builds it) is the one the declarations give for the whole config."""
    from mtkd.experiment import content_values, lineage, lineage_of

    config = base_config(report={"speed_examples": 17, "plot": False})
    values = {f"report.{k}": v for k, v in dataclasses.asdict(config.report).items()}
    assert values == content_values("report", config)
    inputs = {"members": {"m000": "x"}}
    assert lineage_of("report", values, inputs) == lineage("report", config, inputs)


def test_a_later_key_at_its_old_value_leaves_lineages_as_before() -> None:
    """tasks[].pairwise_origin came after lineages were recorded: false (every earlier
    config's value) leaves it out of every lineage and manifest slice, so earlier
    experiments are reused; true enters its task's tokenized lineage."""
    from mtkd.experiment import LATER_KEYS, content_values, stage_values

    config = base_config()
    assert "tasks.pairwise_origin" in LATER_KEYS
    assert "tasks.pairwise_origin" not in content_values("tokenized_task", config, 0)
    assert "tasks.pairwise_origin" not in stage_values("prepare", config)
    flagged = with_value(config, "tasks.pairwise_origin", True)
    assert content_values("tokenized_task", flagged, 0)["tasks.pairwise_origin"] is True
    assert stage_values("prepare", flagged)["tasks.pairwise_origin"][0] is True
