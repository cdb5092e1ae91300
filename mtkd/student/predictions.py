"""Per-example outputs of an exported student run, stored for the report's intervals.

``student/<run>/predictions/<split>.parquet`` (split: ``dev``, ``test``), one row per
labelled example the run was scored on: ``task`` (str), ``uid`` (str), ``label`` (float64:
the class index, score or right candidate; -1 / NaN where unlabelled) and ``output``
(list<float32>: the logits, the score as one value, or the candidate scores, as
:func:`mtkd.training.evaluate.predict_outputs` gives them). The report joins runs by uid,
never by row order. The files are part of the run's content fingerprint
(:func:`run_content`), and their sha256 is in the run's record.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtkd.records import files_fingerprint

SPLITS = ("dev", "test")


def predictions_file(split: str) -> str:
    """The file of a split's predictions, relative to the run's folder."""
    return f"predictions/{split}.parquet"


def predictions_bytes(per_task: Mapping[str, tuple[list[str], np.ndarray, np.ndarray]]
                      ) -> bytes:
    """Parquet bytes of {task: (uids [N], labels [N], outputs [N, K] or [N])}, tasks in
    sorted order (the same outputs give the same bytes)."""
    tasks, uids, labels, outputs = [], [], [], []
    for task in sorted(per_task):
        ids, gold, out = per_task[task]
        tasks += [task] * len(ids)
        uids += [str(u) for u in ids]
        labels.append(np.asarray(gold, dtype=np.float64).reshape(-1))
        outputs += np.asarray(out, dtype=np.float32).reshape(len(ids), -1).tolist()
    table = pa.table({
        "task": pa.array(tasks, pa.string()), "uid": pa.array(uids, pa.string()),
        "label": pa.array(np.concatenate(labels) if labels else [], pa.float64()),
        "output": pa.array(outputs, pa.list_(pa.float32()))})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def read_predictions(data: bytes) -> dict[str, dict[str, Any]]:
    """{task: {"uids": [N] object array, "labels": [N] float64, "outputs": [N, K] float32}}
    from :func:`predictions_bytes`'s format."""
    table = pq.read_table(pa.BufferReader(data))
    columns = table.to_pydict()
    result: dict[str, dict[str, Any]] = {}
    task_column = np.asarray(columns["task"], dtype=object)
    for task in sorted(set(columns["task"])):
        rows = np.flatnonzero(task_column == task)
        result[task] = {
            "uids": np.asarray([columns["uid"][i] for i in rows], dtype=object),
            "labels": np.asarray([columns["label"][i] for i in rows], dtype=np.float64),
            "outputs": np.asarray([columns["output"][i] for i in rows], dtype=np.float32)}
    return result


def run_content(model_content: str, predictions: Mapping[str, str]) -> str:
    """A student run's content fingerprint: its exported model folder's fingerprint and the
    sha256 of each predictions file ({split: sha256})."""
    files = {"final/": model_content}
    files.update({predictions_file(split): sha for split, sha in predictions.items()})
    return files_fingerprint(files)


def describes_model(record_content: str, predictions: Mapping[str, str],
                    model_content: str) -> bool:
    """Whether a student run's record (its ``content`` and ``predictions``) describes the
    exported model folder whose fingerprint is ``model_content``: the run's content is
    :func:`run_content` of that folder (records from before predictions were stored: the
    folder's own fingerprint)."""
    return record_content in (model_content, run_content(model_content, predictions))
