"""mtkd's Python API: run an experiment from a config, load a saved student and predict.

The stable names are re-exported by the package (``import mtkd`` stays fast and imports
neither torch nor Ray until one of them is used)::

    import mtkd

    config = mtkd.load_config("jobs/configs/quickstart.yaml", ["teachers.size=3"])
    result = mtkd.run(config)                       # prepare -> ... -> report
    print(result.storage_uri, result.report_uri, result.stages["student"].status)

    student = mtkd.load_student(result.storage_uri + "/student/student/final")
    out = student.predict("trec", ["what is the capital of France?"])
    out.label            # array(['LOC'], dtype=object)
    out.values           # float32 [1, 6]: probabilities, columns named by out.labels

Everything a user can get wrong raises an :class:`~mtkd.errors.MtkdError` subclass whose
message names the problem and the fix (the same errors the ``mtkd`` command prints with
exit code 2): :class:`~mtkd.errors.ConfigError` (bad config), :class:`UnknownTaskError`
(a task the model does not have), :class:`~mtkd.errors.DataError` (bad inputs),
:class:`~mtkd.errors.StorageError` (unreachable storage), ``PrecisionError`` (a precision
the device cannot run).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtkd.config import ExperimentConfig, load_config
from mtkd.errors import DataError, MtkdError

if TYPE_CHECKING:
    import numpy as np

    from mtkd.tasks.spec import TaskSpec

__all__ = ["ExperimentConfig", "Prediction", "RunResult", "StageResult", "Student",
           "UnknownTaskError", "load_config", "load_student", "run"]

log = logging.getLogger("mtkd")


class UnknownTaskError(MtkdError):
    """A task name the saved model does not have; the message lists the ones it has."""


# ------------------------------------------------------------------------ running


@dataclass(frozen=True)
class StageResult:
    """What one selected stage did in :func:`run`."""

    name: str
    status: str
    """"ran", or "skipped" (its manifest matched: done before with the same lineage)."""
    seconds: float
    """Wall time of the stage in this call (0.0 when skipped)."""
    manifest_uri: str
    """Where its manifest is (local path or ``s3://...``)."""
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)
    """The manifest's content: status, lineage, timings and what the stage wrote."""


@dataclass(frozen=True)
class RunResult:
    """Where an experiment's results are after :func:`run`."""

    name: str
    """The experiment's name (``config.name``)."""
    storage_uri: str
    """``<storage_path>/<name>``: the root of every artifact (local path or s3://)."""
    config_uri: str
    """The resolved config the run saved (secrets redacted; Hub encoders pinned)."""
    stages: dict[str, StageResult]
    """The selected stages in pipeline order, by name."""
    report_uri: str | None
    """``report/report.md`` if it exists (after a report stage, now or before), else None."""
    pending: dict[str, str]
    """Enabled stages that would not be skipped now: {name: "not run yet" | "stale"}."""
    summary: str = field(repr=False, default="")
    """The same text ``mtkd run`` prints at the end."""

    def __str__(self) -> str:
        return self.summary


def run(config: ExperimentConfig | str | Path, *, overrides: Sequence[str] = (),
        from_stage: str | None = None, to_stage: str | None = None, only: str | None = None,
        force: bool = False) -> RunResult:
    """Run an experiment's pipeline, as ``mtkd run`` does, and say where its results are.

    ``config``: an :class:`~mtkd.config.ExperimentConfig` (e.g. from :func:`load_config`),
    or the path of an experiment YAML with optional ``overrides`` (``["teachers.size=5"]``;
    only with a path). ``only`` / ``from_stage`` / ``to_stage`` / ``force`` are ``--only``,
    ``--from``, ``--to`` and ``--force``: stages whose manifest matches the config are
    skipped, so calling ``run`` again resumes. Stages that need Ray start a local one, or
    join ``ray.address``.

    Raises MtkdError subclasses for user mistakes (a bad config, an unknown or stale stage,
    unreachable storage, bad data); :class:`KeyboardInterrupt` leaves finished stages
    in place.
    """
    from mtkd.experiment import CONFIG_FILE, REPORT_DIR, manifest_path
    from mtkd.pipeline import experiment_store, run_pipeline, run_summary, stale_stages

    if isinstance(config, str | Path):
        config = load_config(config, list(overrides))
    elif overrides:
        raise MtkdError("overrides are applied when a config file is loaded (fix: pass the "
                        "YAML path with overrides, or load_config(path, overrides) first)")
    elif not isinstance(config, ExperimentConfig):
        raise MtkdError(f"config is a {type(config).__name__} (fix: pass an ExperimentConfig "
                        "from mtkd.load_config, or the path of an experiment YAML)")
    outcomes = run_pipeline(config, only=only, from_stage=from_stage, to_stage=to_stage,
                            force=force)
    store = experiment_store(config)
    report = f"{REPORT_DIR}/report.md"
    stages = {o.name: StageResult(o.name, o.status, o.seconds,
                                  store.uri_of(manifest_path(o.name)), o.manifest)
              for o in outcomes}
    return RunResult(
        name=config.name, storage_uri=store.uri, config_uri=store.uri_of(CONFIG_FILE),
        stages=stages, report_uri=store.uri_of(report) if store.exists(report) else None,
        pending=stale_stages(config, store), summary=run_summary(config, outcomes, "mtkd run"))


# ------------------------------------------------------------------------ predicting


@dataclass(frozen=True)
class Prediction:
    """One task's outputs for N inputs, in input order.

    ``values`` (float32) by task kind:

    * classification (single texts or pairs): [N, C], C = ``len(labels)``: probabilities
      (rows sum to 1) with ``probabilities=True``, else logits (SAN heads: log-probabilities);
      ``label`` [N] holds the most likely label's name;
    * regression: [N] scores in the task's label units;
    * ranking: [N, K], K the most candidates of any query: with ``probabilities=True`` a
      softmax over each query's candidates (missing candidates 0), else scores (missing
      :data:`mtkd.padding.PAD_SCORE`, -30000); ``best_candidate`` [N] is the index of the
      best one.
    """

    task: str
    type: str
    """The task type, e.g. "classification", "pair_classification", "regression"."""
    values: np.ndarray
    labels: tuple[str, ...]
    """Names of the C columns of ``values`` (classification), else ()."""
    probabilities: bool
    """Whether ``values`` are probabilities (never for regression)."""
    label: np.ndarray | None = None
    """Classification: [N] the most likely label (numpy object array of str)."""
    best_candidate: np.ndarray | None = None
    """Ranking: [N] int64 index of the best-scoring candidate."""

    def __len__(self) -> int:
        return len(self.values)


class Student:
    """A saved MT-DNN (a student's ``final/``, a teacher member's ``model/``) loaded for
    prediction; made by :func:`load_student`."""

    def __init__(self, model: Any, tokenizer: Any, specs: dict[str, TaskSpec], source: str,
                 device: str) -> None:
        self.model = model
        """The underlying :class:`mtkd.model.mtdnn.MTDNN` (torch module, eval mode)."""
        self.tokenizer = tokenizer
        self.source = source
        """The model directory as given (local path or s3:// URI)."""
        self.device = device
        """"cpu" or "cuda"."""
        self._specs = specs
        self._precisions: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Student({self.source!r}, tasks={list(self.tasks)}, device={self.device!r})"

    @property
    def tasks(self) -> tuple[str, ...]:
        """The model's task names, in head order."""
        return tuple(self._specs)

    def spec(self, task: str) -> TaskSpec:
        """The saved description of ``task`` (type, labels, max_length);
        UnknownTaskError naming the model's tasks."""
        if task not in self._specs:
            raise UnknownTaskError(f"model {self.source} has no task {task!r} (fix: use one "
                                   f"of its tasks: {', '.join(self._specs)})")
        return self._specs[task]

    def labels(self, task: str) -> tuple[str, ...]:
        """A classification task's labels, in the order of the output columns; ()."""
        return tuple(self.spec(task).labels)

    def _resolved(self, precision: str) -> str:
        """``precision`` resolved on this device (once per value; warned about once)."""
        if precision not in self._precisions:
            from mtkd.predict_cli import device_and_precision

            _, resolved = device_and_precision(self.device, precision, "device", "precision")
            if resolved.warning:
                log.warning("%s", resolved.warning)
            self._precisions[precision] = resolved.precision
        return self._precisions[precision]

    def predict(self, task: str, texts: Sequence[str],
                text_pairs: Sequence[str] | Sequence[Sequence[str]] | None = None, *,
                probabilities: bool = True, batch_size: int = 32,
                precision: str = "auto") -> Prediction:
        """``task``'s outputs for ``texts`` (N strings), in input order (see
        :class:`Prediction` for shapes and units).

        ``text_pairs``: the second text of each example for pair tasks (N strings), or for
        ranking tasks one list of candidate texts per query. Inputs are tokenized as in
        training (the task's ``max_length``, pairs truncated longest-first) and batched by
        length (``batch_size`` examples per forward pass). ``precision``: ``auto`` (bf16 on
        CUDA >= 8.0 and on CPUs with native bf16, fp16 on CUDA 7.x, else fp32, as
        ``mtkd predict``), or ``fp32``, ``bf16``, ``fp16`` (cuda only).

        Raises UnknownTaskError (a task the model lacks), DataError (texts not a list of
        strings, pairs missing or of the wrong length), PrecisionError.
        """
        import numpy as np

        from mtkd.model.predict import predict_texts

        spec = self.spec(task)
        texts = _strings(texts, "texts")
        kind = spec.kind
        if text_pairs is not None:
            if not isinstance(text_pairs, str | bytes) and isinstance(text_pairs, Iterable):
                text_pairs = list(text_pairs)
            if isinstance(text_pairs, str | bytes) or len(text_pairs) != len(texts):
                raise DataError(f"text_pairs must hold one entry per text ({len(texts)}), "
                                f"got {_describe(text_pairs)}")
            if kind.pair is False:
                raise DataError(f"task {task!r} is a {spec.type} task: it takes single "
                                "texts (fix: leave text_pairs out)")
            if not kind.layout.candidates:  # else lists of candidates, checked in predict
                text_pairs = _strings(text_pairs, "text_pairs")
        elif kind.takes_text_pair:
            raise DataError(f"task {task!r} is a {spec.type} task: give text_pairs, the "
                            "second text of every example")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise MtkdError(f"batch_size must be a positive integer, got {batch_size!r}")
        probs = probabilities and not kind.is_regression
        resolved = self._resolved(precision)
        if not texts:  # the tokenizer refuses an empty batch
            values = np.zeros((0, *kind.output_shape(len(spec.labels))), dtype=np.float32)
        else:
            values = predict_texts(self.model, self.tokenizer, task, texts, text_pairs,
                                   batch_size=batch_size, device=self.device, probs=probs,
                                   precision=resolved)
        label = None
        best = kind.layout.best_candidates(values)
        names: tuple[str, ...] = ()
        if kind.has_classes:
            names = tuple(spec.labels) or tuple(str(i) for i in range(values.shape[1]))
            column = np.array(names, dtype=object)
            label = column[values.argmax(axis=1)] if len(values) else column[:0]
        return Prediction(task, spec.type, values, names, probs, label, best)


def _describe(value: Any) -> str:
    return (f"a {type(value).__name__}" if isinstance(value, str) or not hasattr(value, "__len__")
            else f"{len(value)}")


def _strings(values: Any, name: str) -> list[str]:
    """A list of str, or DataError naming the first offender."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise DataError(f"{name} must be a list of strings, got {_describe(values)} (fix: "
                        f"wrap a single text in a list: [text])")
    out = list(values)
    for i, value in enumerate(out):
        if not isinstance(value, str):
            raise DataError(f"{name}[{i}] is a {type(value).__name__}, not a string")
    return out


def load_student(model_dir: str | Path, *, device: str | None = None) -> Student:
    """Load a saved MT-DNN for prediction: a student's ``<run>/final`` or a teacher's
    ``model/`` folder (what ``mtkd predict`` reads), local or ``s3://`` (downloaded to a
    temporary folder, removed once loaded).

    ``device``: "cpu" or "cuda" (default: cuda if torch sees a GPU, else cpu). Weights are
    read with safetensors only. Raises MtkdError naming what is missing or corrupt, or
    StorageError for an unreachable s3:// folder.
    """
    from mtkd.model.io import load_mtdnn
    from mtkd.predict_cli import device_and_precision, local_model_dir, model_specs

    shown = str(model_dir)
    device, _ = device_and_precision(device, "fp32", "device", "precision")
    with contextlib.ExitStack() as stack:
        local = local_model_dir(shown, stack)
        specs = {s.name: s for s in model_specs(local, shown)}
        model, tokenizer = load_mtdnn(local, device=device)
    return Student(model, tokenizer, specs, shown, device)
