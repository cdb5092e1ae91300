"""Ray Data batch inference of one ensemble member: a callable class, one model per actor.

Input rows: task, split, uid, input_ids, token_type_ids, length (sorted by task and
length, so consecutive rows, and hence batches, have similar lengths). Output rows: task,
split, uid, logits (list<float32>: C class logits, K candidate scores, or one score).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from mtkd.model.infer import predict_rows
from mtkd.model.remote import load_model_from
from mtkd.precision import resolve_here
from mtkd.resources import work_device
from mtkd.storage import Storage

OUTPUT_SCHEMA = pa.schema([("task", pa.string()), ("split", pa.string()),
                           ("uid", pa.string()), ("logits", pa.list_(pa.float32()))])


class MemberPredictor:
    """Loads the member's model once (in the actor's constructor), predicts every batch.

    ``precision`` is the configured value, resolved on the actor's own device by the
    precision rule (``precision_key`` names it in errors)."""

    def __init__(self, storage: str, model_rel: str, precision: str, threads: int,
                 request: dict[str, float],
                 precision_key: str = "soft_targets.precision") -> None:
        torch.set_num_threads(max(1, threads))
        self.device = work_device(request)
        self.precision = resolve_here(precision, self.device, precision_key).precision
        self._tmp = tempfile.TemporaryDirectory(prefix="mtkd-member-")
        self.model, _ = load_model_from(Storage.from_uri(storage), model_rel,
                                        Path(self._tmp.name) / "model", device=self.device)
        self.model.eval()

    def _predict(self, task: str, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        """One batch (``rows`` arrive length-sorted) through the inference core: per row its
        logits [C], its score as [1], or its own candidates' scores [k]."""
        outputs = predict_rows(self.model, task, rows, batch_size=max(1, len(rows)),
                               device=self.device, precision=self.precision)
        return [o.reshape(-1) for o in outputs]

    def __call__(self, table: pa.Table) -> pa.Table:
        columns = table.to_pydict()
        tasks, splits, uids, logits = [], [], [], []
        order = np.argsort(np.asarray(columns["task"], dtype=object), kind="stable")
        start = 0
        while start < len(order):  # one forward pass per task present in the batch
            task = columns["task"][order[start]]
            end = start
            while end < len(order) and columns["task"][order[end]] == task:
                end += 1
            index = order[start:end]
            # Token columns hold one sequence per candidate; plain tasks have exactly one.
            layout = self.model.specs[task].kind.layout
            rows = [{"uid": columns["uid"][i],
                     "input_ids": layout.from_sequences(columns["input_ids"][i]),
                     "token_type_ids": layout.from_sequences(columns["token_type_ids"][i])}
                    for i in index]
            logits += self._predict(task, rows)
            tasks += [task] * len(index)
            splits += [columns["split"][i] for i in index]
            uids += [columns["uid"][i] for i in index]
            start = end
        return pa.table({"task": tasks, "split": splits, "uid": uids,
                         "logits": [x.tolist() for x in logits]}, schema=OUTPUT_SCHEMA)
