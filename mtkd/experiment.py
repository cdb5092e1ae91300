"""The experiment model: stages, artifacts, where they live, and the one reuse rule.

An experiment is a chain of stages (prepare -> teachers -> soft -> student -> report), each
writing artifacts under the experiment's storage root. Every artifact records its
**lineage**: the hash of the config values that change its content (declared below, per
artifact kind) plus the lineages of the artifacts it reads. The one reuse rule
(:func:`reusable`): an artifact is reused if and only if its recorded lineage equals the
lineage it would be built from now.

Config keys fall into three roles, declared once here and checked for completeness by the
tests (every leaf of :class:`~mtkd.config.ExperimentConfig` has exactly one role):

* **content** of one or more artifact kinds: changing it rebuilds those artifacts and
  everything built from them;
* **plan**: it decides *which* artifacts exist (ensemble size, member variation, student
  seeds); each planned artifact's lineage carries its own parameters, so adding a member
  trains only the new one, while the soft targets (which read all members) change;
* **operational**: how work is done (resources, concurrency, checkpoint cadence and
  retention, retries, logging, where the experiment lives). Changing it resumes.

Stages see the experiment through :class:`StageContext`; the pipeline
(:mod:`mtkd.pipeline`) runs them and writes each stage's manifest last.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mtkd.config import ExperimentConfig, TaskConfig, stable_hash
from mtkd.errors import StorageError
from mtkd.records import Record
from mtkd.storage import Storage

R = TypeVar("R", bound=Record)
log = logging.getLogger("mtkd")

# ---------------------------------------------------------------------------------------
# Where every artifact lives, relative to the experiment's root.
# ---------------------------------------------------------------------------------------

CONFIG_FILE = "config.yaml"


def manifest_path(stage: str) -> str:
    """A stage's manifest, written last when the stage finishes."""
    return f"manifests/{stage}.json"


def task_data_dir(task: str, tokenization: str | None = None) -> str:
    """A tokenized task: ``<split>.parquet`` and ``meta.json`` (its record). ``tokenization``
    None is ``encoder.path``'s tokenizer; another tokenizer's (its fingerprint) lives in
    ``data/<task>/tok-<fingerprint[:10]>/`` (see :mod:`mtkd.tokenizations`)."""
    if tokenization is None:
        return f"data/{task}"
    from mtkd.tokenizations import tokenization_dir

    return f"data/{task}/{tokenization_dir(tokenization)}"


TASK_RECORD = "meta.json"


def member_dir(member: str) -> str:
    """A teacher member: ``model/`` and ``member.json`` (its record)."""
    return f"teachers/{member}"


def member_record(member: str) -> str:
    return f"{member_dir(member)}/member.json"


TEACHER_TUNE_RUNS = "teachers/_tune"
"""Ray Tune experiments of the teachers stage, named after the lineages they train."""
TEACHER_TRAIN_RUNS = "teachers/_train"
"""Ray Train runs of multi-worker members, named ``<member>-<lineage>``."""
TEACHERS_SUMMARY = "teachers/teachers.json"
ENSEMBLE_SUMMARY = "teachers/ensemble.json"


def predictions_dir(member: str) -> str:
    """One member's dev/train/test outputs: ``<task>.parquet`` and ``done.json``."""
    return f"soft_targets/_members/{member}"


def predictions_record(member: str) -> str:
    return f"{predictions_dir(member)}/done.json"


def soft_targets_file(task: str, split: str) -> str:
    return f"soft_targets/{task}/{split}.parquet"


def soft_targets_record(task: str) -> str:
    return f"soft_targets/{task}/targets.json"


def student_dir(run: str) -> str:
    """One student run: ``final/`` (the exported model), ``predictions/<split>.parquet``
    (per-example outputs), ``train_state.json``,
    ``student.json`` (its record)."""
    return f"student/{run}"


def student_record(run: str) -> str:
    return f"{student_dir(run)}/student.json"


STUDENT_TRAIN_RUNS = "student/_train"
"""Ray Train runs of the student, named ``<run>-<lineage>``."""
REPORT_DIR = "report"
REPORT_RECORD = "report/record.json"
"""The report's record, written after report.json, report.md and scores.png."""


SWEEP_DIR = "sweep"
"""An ensemble-size sweep's own outputs (:mod:`mtkd.sweep`): ``sweep.json``, ``sweep.md``,
``sweep.png``, and one experiment view per size, ``size-<k>/``."""


def size_view_dir(size: int) -> str:
    """Where size ``size`` of a sweep keeps what is its own (manifests, config.yaml, soft
    targets, ``teachers/ensemble.json``, KD students, report)."""
    return f"{SWEEP_DIR}/size-{size}"


def shared_across_sizes(rel: str) -> bool:
    """Whether path ``rel`` of a sweep size's view lives in the parent experiment instead:
    tokenized data, teacher members (with their Tune/Train runs), member predictions, the
    no-KD baseline runs (they read no soft targets), Ray Train runs and TensorBoard curves
    (both named after lineages). The files directly in ``teachers/`` (teachers.json,
    ensemble.json: which members form *this* ensemble) stay the size's own."""
    parts = rel.split("/")
    head, second = parts[0], parts[1] if len(parts) > 1 else ""
    if head in ("data", "tensorboard"):
        return True
    if head == "teachers":
        return bool(second) and not second.startswith(".") and not second.endswith(".json")
    if head == "soft_targets":
        return second == "_members"
    if head == "student":
        return second == "_train" or second.startswith("baseline")
    return False


def experiment_store(config: ExperimentConfig, *, storage: str | None = None,
                     check: bool = True) -> Storage:
    """The experiment's storage: ``<storage_path>/<name>``, or for one size of a sweep
    (``sweep_view``) the view ``<storage_path>/<name>/sweep/size-<teachers.size>`` that shares
    :func:`shared_across_sizes` paths with ``<storage_path>/<name>``.

    ``storage``: the absolute uri of storage_path (workers get it: Tune runs trials in
    their own working directories); ``check``: probe access first (the driver does, once).
    Raises StorageError when unreachable.
    """
    root = Storage.from_uri(storage or config.storage_path)
    if check:
        root.check_access()
    store = root.child(config.name)
    if config.sweep_view:
        return store.view(size_view_dir(config.teachers.size), shared_across_sizes)
    return store


# ---------------------------------------------------------------------------------------
# Which config keys change which artifact.
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact and what its content depends on.

    ``content``: config keys (dotted; a key names itself and everything below it) whose
    values enter the lineage, minus ``exclude``, the kind's ``plan`` keys (which decide
    which artifacts of this kind exist) and the :data:`OPERATIONAL` keys. ``inputs``: the
    kinds whose lineages it reads.
    """

    name: str
    stage: str
    content: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    plan: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    per_task: bool = False
    """One artifact per task, from that task's ``tasks[]`` entry only."""

    def covers(self, key: str) -> bool:
        return (_matches(key, self.content) and not _matches(key, self.exclude)
                and not _matches(key, self.plan) and not _matches(key, OPERATIONAL))


OPERATIONAL: tuple[str, ...] = (
    "name", "storage_path", "sweep_view", "ray",
    "teachers.resources_per_member", "teachers.max_concurrent", "teachers.max_failures",
    "teachers.verbose", "teachers.checkpoint_minutes", "teachers.reuse_actors",
    "soft_targets.batch_size", "soft_targets.num_actors", "soft_targets.resources_per_actor",
    "student.resources_per_worker", "student.use_gpu", "student.checkpoint_every",
    "student.keep_checkpoints", "student.max_failures", "student.checkpoint_minutes",
    "student.checkpoint_upload", "student.step_timing",
    "tracking",
)
"""Keys that change how work is done, not what it produces. ``use_gpu`` and the GPU
requests belong here: the precision actually used is recorded with each artifact."""

ARTIFACTS: tuple[ArtifactKind, ...] = (
    ArtifactKind("tokenized_task", "prepare", content=("tasks", "encoder.path", "seed"),
                 exclude=("tasks.teacher",), per_task=True),
    ArtifactKind("member", "teachers",
                 content=("teachers.training", "teachers.workers_per_member",
                          "teachers.early_stopping", "heads", "encoder", "sampling", "seed"),
                 inputs=("tokenized_task",),
                 plan=("teachers.size", "teachers.shape", "teachers.variation",
                       "teachers.init_from_multitask", "tasks.teacher",
                       # how many members must finish: the stage re-runs (retrying
                       # failed members) when it changes; finished members are reused
                       "teachers.min_members")),
    ArtifactKind("predictions", "soft", content=("soft_targets.precision",),
                 inputs=("member",)),
    # the members' and the ensemble's dev/test scores (ensemble.json, targets.json's
    # metrics): the precision every model is scored at, and the outputs scored
    ArtifactKind("scores", "soft", content=("report.precision",), inputs=("predictions",)),
    ArtifactKind("soft_targets", "soft",
                 content=("soft_targets.aggregation", "soft_targets.temperature"),
                 inputs=("predictions", "tokenized_task")),
    # the student runs' dev/test scores (student.json's metrics): the precision they are
    # scored at; a change re-scores the saved models, it never retrains them
    ArtifactKind("student_scores", "student", content=("report.precision",),
                 inputs=("student_run",)),
    # unlabelled transfer text (student.kd.transfer_text), tokenized with the student's
    # tokenizer: its settings, the tokenizer and the raw texts' content
    ArtifactKind("transfer_text", "prepare", content=("student.kd.transfer_text",)),
    ArtifactKind("student_run", "student",
                 content=("student", "heads", "encoder", "sampling", "seed"),
                 inputs=("tokenized_task", "soft_targets", "transfer_text"),
                 plan=("student.seeds", "student.baseline", "student.distill")),
    ArtifactKind("report", "report", content=("report",),
                 inputs=("member", "soft_targets", "student_run")),
)
KINDS = {kind.name: kind for kind in ARTIFACTS}

LATER_KEYS: dict[str, Any] = {
    "tasks.pairwise_origin": False,
    # student shapes and representation distillation (issue 18)
    "student.layer_selection": "first", "student.hidden_size": None,
    "student.kd.hidden_weight": 0.0, "student.kd.hidden_teacher": "best",
    "student.kd.hidden_layers": None,
    # staged student training (issue 18 item 3): none, one stage with kd's weights
    "student.stages": [],
    # task transfer (issue 18 item 4)
    "student.kd.transfer_text.bundled": None, "student.kd.transfer_text.files": [],
    "student.kd.transfer_text.max_length": 128,
    "student.kd.transfer_text.max_examples": None,
}
"""Keys added after lineages were first recorded, with the value every earlier config
implicitly had: such a key enters a lineage only when set to something else, so artifacts
built before it existed keep their lineages (and stay reusable). A per-task key counts as
unset when every task's value is the old one."""


def _later_unset(key: str, value: Any) -> bool:
    if key not in LATER_KEYS:
        return False
    old = LATER_KEYS[key]
    return value == old or (isinstance(value, list) and all(v == old for v in value))


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_leaves(config: ExperimentConfig, task_index: int | None = None
                  ) -> Iterator[tuple[str, Any]]:
    """Every leaf of the config as (dotted key, value). Lists and dicts are leaves, except
    ``tasks``: with ``task_index`` its entry's fields appear as ``tasks.<field>``; without,
    every task's entry does, as ``tasks.<field>`` (value: the list over tasks)."""

    def walk(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                yield from walk(f"{prefix}{f.name}.", getattr(value, f.name))
        else:
            yield prefix[:-1], _plain(value)

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name != "tasks":
            yield from walk(f"{f.name}.", value)
            continue
        chosen = value if task_index is None else [value[task_index]]
        for task_field in dataclasses.fields(TaskConfig):
            values = [_plain(getattr(t, task_field.name)) for t in chosen]
            yield f"tasks.{task_field.name}", values[0] if task_index is not None else values


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def role_of(key: str) -> list[str]:
    """Every role a leaf key has: ``content:<kind>``, ``plan:<kind>``, ``operational``."""
    roles = [f"content:{k.name}" for k in ARTIFACTS if k.covers(key)]
    roles += [f"plan:{k.name}" for k in ARTIFACTS if _matches(key, k.plan)]
    if _matches(key, OPERATIONAL):
        roles.append("operational")
    return roles


def content_values(kind: str, config: ExperimentConfig, task_index: int | None = None
                   ) -> dict[str, Any]:
    """The config values that enter a ``kind`` artifact's lineage. ``config`` is the
    *effective* config the artifact is built from (a member's own training values, the
    precision actually resolved, ...); per-task kinds read one task's entry."""
    declared = KINDS[kind]
    index = task_index if declared.per_task else None
    return {key: value for key, value in config_leaves(config, index)
            if declared.covers(key) and (declared.per_task or not key.startswith("tasks."))
            and not _later_unset(key, value)}


def lineage(kind: str, config: ExperimentConfig, inputs: Mapping[str, Any] | None = None,
            instance: Mapping[str, Any] | None = None, task_index: int | None = None) -> str:
    """The lineage of one ``kind`` artifact: its declared config values, the lineages (or
    content fingerprints) of what it reads, and the parameters of this instance (a
    member's variant, a student run's seed)."""
    return lineage_of(kind, content_values(kind, config, task_index), inputs, instance)


def lineage_of(kind: str, values: Mapping[str, Any], inputs: Mapping[str, Any] | None = None,
               instance: Mapping[str, Any] | None = None) -> str:
    """:func:`lineage` from the declared values themselves ({dotted key: value}), for a
    builder that holds only its own part of the config (``mtkd report``)."""
    return stable_hash({"kind": kind, "config": dict(values), "inputs": dict(inputs or {}),
                        "instance": dict(instance or {})})


def stage_values(stage: str, config: ExperimentConfig) -> dict[str, Any]:
    """Every content and plan value of the stage's kinds (all tasks): what the stage's
    manifest lineage hashes besides the outputs of earlier stages."""
    kinds = [k for k in ARTIFACTS if k.stage == stage]
    return {key: value for key, value in config_leaves(config)
            if any(k.covers(key) or _matches(key, k.plan) for k in kinds)
            and not _later_unset(key, value)}


# ---------------------------------------------------------------------------------------
# The one reuse rule.
# ---------------------------------------------------------------------------------------

def reusable(store: Storage, record: str, expected: str, kind: type[R]) -> R | None:
    """The artifact's record (as a ``kind`` record) if it was built with lineage
    ``expected``, else None.

    ``record`` is written last, atomically, when the artifact is complete, so a record
    that exists describes a whole artifact. A record that does not parse (an older mtkd's,
    a damaged file) counts as absent: the artifact is rebuilt."""
    if not store.exists(record):
        return None
    try:
        found = kind.from_json(store.read_json(record))
    except (StorageError, TypeError, KeyError, ValueError, AttributeError) as exc:
        log.warning("%s is unreadable (%s); rebuilding it", store.uri_of(record), exc)
        return None
    return found if found.lineage == expected else None


# ---------------------------------------------------------------------------------------
# Stages.
# ---------------------------------------------------------------------------------------

@dataclass
class StageContext:
    """What a stage gets: the validated config and the experiment's storage root."""

    config: ExperimentConfig
    store: Storage
    checked: Any = None
    """What the stage's ``check`` returned (None without one), e.g. prepare's loaded
    tasks, so the stage does not redo the work."""
    rebuild: bool = False
    """``--force``: build every artifact of the stage again, from scratch, instead of
    reusing those whose lineage matches (and without resuming their old checkpoints)."""


def _declared_values(name: str) -> Callable[[ExperimentConfig], Any]:
    return lambda config: stage_values(name, config)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    ``config_slice`` picks the config values its result depends on (for registered
    stages: :func:`stage_values`, from the declarations above); a change there (or in the
    output of any earlier stage) re-runs the stage, which then reuses each artifact whose
    lineage still matches.
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    config_slice: Callable[[ExperimentConfig], Any]
    description: str = ""
    enabled: Callable[[ExperimentConfig], bool] = lambda config: True
    """Whether the config needs this stage at all (e.g. no teachers when not distilling)."""
    always_run: bool = False
    """Run even when the manifest matches: for stages whose inputs live outside the
    config (user data files). Such a stage reuses its own work internally and reports
    an ``output_fingerprint``, so later stages re-run only if its output changed."""
    check: Callable[[StageContext], Any] | None = None
    """Checks run for a selected stage before anything is written under the experiment
    (not even config.yaml): raising MtkdError refuses the run with nothing written. The
    result is handed to ``run`` as ``ctx.checked``."""

    @classmethod
    def declared(cls, name: str, run: Callable[[StageContext], dict[str, Any]],
                 description: str, **kwargs: Any) -> Stage:
        """A stage whose config slice is what :data:`ARTIFACTS` declares for it."""
        return cls(name, run, _declared_values(name), description, **kwargs)


def read_manifest(store: Storage, stage: str) -> dict[str, Any] | None:
    """The stage's manifest, or None when the stage never finished."""
    path = manifest_path(stage)
    return store.read_json(path) if store.exists(path) else None


def outputs_fingerprint(lineages: Mapping[str, str]) -> str:
    """A stage's output fingerprint from the lineages of the artifacts it produced."""
    return stable_hash(dict(sorted(lineages.items())))
