"""Training curves of every member and student run: TensorBoard, and MLflow when asked.

A :class:`Tracker` fans scalars out to its sinks and plugs into the training loop as one
more set of :class:`~mtkd.training.loop.LoopHooks` (composed with the checkpointing hooks
by :func:`~mtkd.training.loop.chain_hooks`): ``train/loss`` and ``train/lr`` after every
optimizer step, ``train/examples_per_s`` / ``train/tokens_per_s`` at every progress line,
``dev/score`` and ``dev/<task>/<metric>`` at every evaluation. Only one process per run
tracks (rank 0).

TensorBoard event files go to ``<experiment>/tensorboard/<run>/``, where ``<run>`` is the
member's or student run's name with its lineage (the name of its Ray Train run): a
changed config starts new curves beside the old ones. On local storage the writer writes
there directly; for ``s3://`` it writes to a local folder that is uploaded through
:class:`~mtkd.storage.Storage` at every checkpoint, evaluation and at the end (the writer
never talks to S3). Every attempt writes a new event file; one that resumes from the
checkpoint at step ``s`` starts with ``purge_step = s + 1``, so TensorBoard drops what the
interrupted attempt had logged after that checkpoint: the curves neither repeat nor fork.

MLflow (``tracking.mlflow: true``, ``MLFLOW_TRACKING_URI`` set and the package importable;
it is imported only then) gets the same scalars, batched, and the run's hyper-parameters.
The experiment is the mtkd experiment's name, one MLflow run per ``<run>`` (found again by
its ``mtkd.run`` tag on resume); since MLflow has no purge, a resumed attempt skips the
steps that run already holds (a resume is exact, so they are the same values).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any, Protocol

from mtkd.config import TrackingConfig
from mtkd.storage import Storage
from mtkd.training.loop import LoopHooks, LoopState

log = logging.getLogger("mtkd")
TENSORBOARD_DIR = "tensorboard"


class Sink(Protocol):
    """Where scalars go."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def params(self, values: Mapping[str, Any]) -> None: ...

    def sync(self) -> None:
        """Make what was logged durable (flush, upload)."""

    def close(self) -> None: ...


def eval_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """An evaluation record's scalars: ``dev/score``, ``dev/average``,
    ``dev/<task>/<metric>``."""
    values = {"dev/score": float(record["score"]), "dev/average": float(record["average"])}
    for task, metrics in record["metrics"].items():
        for name, value in metrics.items():
            values[f"dev/{task}/{name}"] = float(value)
    return values


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested hyper-parameters as ``{dotted key: text}``."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class TensorBoardSink:
    """A ``SummaryWriter`` on ``store``'s ``rel`` (directly when local, else a local folder
    uploaded by :meth:`sync`)."""

    def __init__(self, store: Storage, rel: str, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.store, self.rel = store, rel
        local = store.local_path(rel)
        self._temporary = local is None
        self.folder = tempfile.mkdtemp(prefix="mtkd-tensorboard-") if local is None else local
        os.makedirs(self.folder, exist_ok=True)
        # purge_step: TensorBoard hides this folder's earlier events from that step on.
        self.writer = SummaryWriter(self.folder, purge_step=start_step + 1, flush_secs=30)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def params(self, values: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(flat_params(values).items()))
        self.writer.add_text("params", "| parameter | value |\n|---|---|\n" + rows, 0)

    def sync(self) -> None:
        self.writer.flush()
        if self._temporary:
            self.store.upload_dir(self.folder, self.rel)

    def close(self) -> None:
        self.writer.close()
        if self._temporary:
            self.store.upload_dir(self.folder, self.rel)
            shutil.rmtree(self.folder, ignore_errors=True)


class MlflowSink:
    """One MLflow run (created, or found again by its ``mtkd.run`` tag); metrics are
    buffered and sent in batches at :meth:`sync`."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch call

    def __init__(self, experiment: str, run: str, tracking_uri: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None
                         else self.client.create_experiment(experiment))
        runs = self.client.search_runs([experiment_id], f"tags.`mtkd.run` = '{run}'",
                                       max_results=1)
        self.logged_up_to = -1
        if runs:
            self.run_id = runs[0].info.run_id
            history = self.client.get_metric_history(self.run_id, "train/loss")
            self.logged_up_to = max((m.step for m in history), default=-1)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run,
                                                 tags={"mtkd.run": run}).info.run_id
        self.pending: list[Any] = []

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if step <= self.logged_up_to:
            return  # logged by an interrupted attempt (the same values: resume is exact)
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in values.items()
                         if math.isfinite(float(v))]
        if len(self.pending) >= self.BATCH:
            self.sync()

    def params(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v[:6000]) for k, v in flat_params(values).items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def sync(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[: self.BATCH], self.pending[self.BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.sync()
        self.client.set_terminated(self.run_id)


def _mlflow_sink(experiment: str, run: str) -> MlflowSink | None:
    """The MLflow sink, or None (with a warning) when MLflow cannot be used here."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        log.warning("tracking.mlflow is true but MLFLOW_TRACKING_URI is not set where this "
                    "run trains (set it, and pass it to the workers with ray.env_vars): not "
                    "logging to MLflow")
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        log.warning("tracking.mlflow is true but mlflow is not installed where this run "
                    "trains (pip install mlflow-skinny): not logging to MLflow")
        return None
    try:
        return MlflowSink(experiment, run, uri)
    except Exception as exc:  # a server away, a store refused: tracking never stops training
        log.warning("tracking: cannot log to MLflow at %s (%s: %s); training goes on without "
                    "it", uri, type(exc).__name__, exc)
        return None


class Tracker:
    """The sinks of one run; :meth:`hooks` plugs them into the training loop."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks
        self._failed: set[int] = set()

    def _each(self, what: str, *args: Any) -> None:
        """Call ``what`` on every sink; a sink that fails (an MLflow server away, an upload
        refused) is warned about once and dropped: tracking never stops a training."""
        for sink in self.sinks:
            if id(sink) in self._failed:
                continue
            try:
                getattr(sink, what)(*args)
            except Exception as exc:  # any failure of a tracking backend
                self._failed.add(id(sink))
                log.warning("tracking: %s failed (%s: %s); training goes on without it",
                            type(sink).__name__, type(exc).__name__, exc)

    @classmethod
    def open(cls, config: TrackingConfig, store: Storage, run: str, *, experiment: str,
             start_step: int = 0, params: Mapping[str, Any] | None = None) -> Tracker | None:
        """The tracker ``config`` asks for (None when it asks for none). ``store``: the
        experiment's root; ``run``: the folder/run name; ``start_step``: the step the run
        starts (or resumes) at."""
        sinks: list[Sink] = []
        if config.tensorboard:
            sinks.append(TensorBoardSink(store, f"{TENSORBOARD_DIR}/{run}", start_step))
        if config.mlflow:
            sink = _mlflow_sink(experiment, run)
            if sink is not None:
                sinks.append(sink)
        if not sinks:
            return None
        tracker = cls(sinks)
        if params:
            tracker.params(params)
        return tracker

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._each("scalars", step, values)

    def params(self, values: Mapping[str, Any]) -> None:
        self._each("params", values)

    def sync(self) -> None:
        self._each("sync")

    def close(self) -> None:
        self._each("close")

    def hooks(self) -> LoopHooks:
        """Loop callbacks: step scalars, evaluation scalars (then a sync), a sync at every
        checkpoint. Compose them after the checkpointing hooks with ``chain_hooks``."""

        def on_step(state: LoopState, values: dict[str, float]) -> None:
            self.scalars(state.step, values)

        def on_eval(state: LoopState, record: dict[str, Any]) -> None:
            self.scalars(state.step, eval_scalars(record))
            self.sync()

        def on_checkpoint(state: LoopState) -> None:
            self.sync()

        return LoopHooks(on_step=on_step, on_eval=on_eval, on_checkpoint=on_checkpoint)
