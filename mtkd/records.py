"""Typed records: what each artifact's record file says about it.

A record is written last and atomically when its artifact is complete (see
:func:`mtkd.experiment.reusable`); it carries the artifact's ``lineage`` (what it was built
from) and its ``content`` fingerprint (a hash of the bytes it consists of, see
:func:`files_fingerprint`), so two artifacts can be compared by content and a later
reader can check it still has the files the record describes.

The JSON keys are the field names. A record that does not parse (written by an older mtkd,
or hand-edited) is treated as absent: the artifact is rebuilt, never half-trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mtkd.config import stable_hash

R = TypeVar("R", bound="Record")


def digest(data: bytes) -> str:
    """sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def files_fingerprint(files: Mapping[str, str]) -> str:
    """The content fingerprint of an artifact made of ``files``: {relative path: sha256}.
    Independent of the order files were written in."""
    return stable_hash(dict(sorted(files.items())))


def folder_fingerprint(folder: str | Path) -> str:
    """:func:`files_fingerprint` of every file under a local folder (streamed)."""
    root = Path(folder)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                sha.update(block)
        files[path.relative_to(root).as_posix()] = sha.hexdigest()
    return files_fingerprint(files)


@dataclass
class Record:
    """Fields every record has."""

    lineage: str
    content: str | None
    """The artifact's content fingerprint (None in records of mtkd before 0.2)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
        """Raises TypeError/KeyError when ``data`` is not a record of this kind."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values.setdefault("content", None)
        return cls._convert(values)

    @classmethod
    def _convert(cls: type[R], values: dict[str, Any]) -> R:
        return cls(**values)


@dataclass
class TaskRecord(Record):
    """``data/<task>/meta.json``: a tokenized task."""

    spec: dict[str, Any] = field(default_factory=dict)
    """The TaskSpec as JSON (:meth:`mtkd.tasks.spec.TaskSpec.to_json`)."""
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per split: rows, tokens, max_length, at_max_length (and padding figures for train)."""
    dropped: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class MemberRecord(Record):
    """``teachers/<member>/member.json``: a trained ensemble member (its best dev weights)."""

    name: str = ""
    variant: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """Best dev metrics per task (percent)."""
    average: float | None = None
    best_step: int = 0
    steps: int = 0
    model: str = ""
    """The model folder's uri."""
    wall_seconds: float = 0.0
    train_examples_per_s: float = 0.0
    train_tokens_per_s: float = 0.0
    workers: int = 1
    encoder: str = ""
    """The encoder the member read its inputs with and whose tokenizer its model ships
    (empty in records of mtkd before mixed tokenizers: ``variant["encoder"]``)."""
    tokenization: str | None = None
    """The tokenizer fingerprint of the tokenization it trained on; None: encoder.path's
    (``data/<task>/``), see :mod:`mtkd.tokenizations`."""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    precision: dict[str, Any] | None = None
    loss_scale: float | None = None

    def summary(self) -> dict[str, Any]:
        """The record without its per-evaluation history (for stage summaries)."""
        return {k: v for k, v in self.to_json().items() if k != "history"}


@dataclass
class PredictionsRecord(Record):
    """``soft_targets/_members/<member>/done.json``: one member's outputs."""

    member: str = ""
    """The member's lineage."""
    tasks: list[str] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0
    precision: dict[str, Any] | None = None


@dataclass
class SoftTargetsRecord(Record):
    """``soft_targets/<task>/targets.json``: a task's aggregated soft targets."""

    members: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    """Dev (and labelled test) metrics of the members and the ensemble, at the scoring
    precision; not part of the targets' lineage, which is the training data's."""
    scoring: dict[str, Any] | None = None
    """What ``metrics`` were computed from: ``lineage`` (the scores' lineage: the resolved
    scoring precision, report.precision, and the member outputs scored) and ``precision``
    (as resolved); None in records written before scores had their own lineage."""


@dataclass
class EnsembleRef:
    """The ensemble a student was distilled from: the soft stage's output fingerprint and
    its members."""

    ensemble: str
    members: list[str]


@dataclass
class StudentRecord(Record):
    """``student/<run>/student.json``: a trained and exported student run."""

    name: str = ""
    seed: int = 0
    distill: bool = True
    distilled_from: EnsembleRef | None = None
    model: str = ""
    """The exported model folder's uri."""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """Dev metrics per task (percent) of the exported weights."""
    average: float | None = None
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """The same on each task's labelled test rows (tasks without them are absent)."""
    test_average: float | None = None
    params: int = 0
    encoder: str = ""
    """The student's encoder (empty in records of mtkd before mixed tokenizers)."""
    tokenization: str | None = None
    """The tokenization it trained on (None: encoder.path's), see :mod:`mtkd.tokenizations`."""
    precision: dict[str, Any] | None = None
    loss_scale: float | None = None
    scored_in: dict[str, Any] | None = None
    seconds: float = 0.0
    selected: dict[str, Any] | None = None
    """Which weights were exported: {"keep": "best"|"final", "step", "steps"}."""
    predictions: dict[str, str] = field(default_factory=dict)
    """{split: sha256} of the per-example outputs stored next to the record
    (``predictions/<split>.parquet``, see :mod:`mtkd.student.predictions`); empty in
    records of mtkd before they were stored. ``content`` covers them too."""

    @classmethod
    def _convert(cls, values: dict[str, Any]) -> StudentRecord:
        source = values.get("distilled_from")
        if isinstance(source, Mapping):
            values["distilled_from"] = EnsembleRef(**source)
        return cls(**values)


@dataclass
class ReportRecord(Record):
    """``report/record.json``: the report's lineage (report settings and the lineages of
    every model it shows) and the content of report.json, report.md and scores.png."""
