"""Multi-task training data for torch's DataLoader: rows by (task, index), teacher targets.

The sampler (:class:`mtkd.data.sampler.MultiTaskBatchSampler`) decides which rows form
a batch; torch's ``DataLoader`` fetches and collates them. Teacher soft targets are
joined to the rows by ``uid`` once, here, and gathered per batch by row index.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

from mtkd.data.collate import collate
from mtkd.data.columns import random_access_columns
from mtkd.data.sampler import Batch, MultiTaskBatchSampler
from mtkd.errors import DataError
from mtkd.tasks.spec import TaskSpec


@dataclass
class TeacherArrays:
    """One task's teacher targets aligned with its train rows (row i ↔ uid i).

    probs: [N, C] averaged probabilities (C = classes or candidates), or None;
    logits: [N, C] averaged logits (for the mse_logits loss), or None;
    score: [N] mean teacher score (regression), or None;
    temperature: the softmax temperature the probs were made at (soft_targets.temperature).
    """

    probs: np.ndarray | None = None
    logits: np.ndarray | None = None
    score: np.ndarray | None = None
    temperature: float = 1.0

    def gather(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """Tensors of the given rows: keys among probs, logits, score."""
        out = {}
        for name in ("probs", "logits", "score"):
            value = getattr(self, name)
            if value is not None:
                out[name] = torch.from_numpy(np.ascontiguousarray(value[rows]))
        return out


def align_by_uid(train_uids: list[str], teacher_uids: list[str], task: str,
                 temperature: float = 1.0, **columns: np.ndarray | None) -> TeacherArrays:
    """Reorder teacher columns to the train rows' order, joining on uid (never row order).

    Raises DataError naming the first missing uids if any train row lacks a target.
    """
    position = {uid: i for i, uid in enumerate(teacher_uids)}
    missing = [uid for uid in train_uids if uid not in position]
    if missing:
        raise DataError(f"task {task}: {len(missing)} training example(s) have no soft target, "
                        f"e.g. uid {missing[0]!r} (fix: re-run the soft stage with --force)")
    order = np.fromiter((position[u] for u in train_uids), dtype=np.int64,
                        count=len(train_uids))
    aligned = {k: None if v is None else np.asarray(v)[order] for k, v in columns.items()}
    return TeacherArrays(**aligned, temperature=temperature)


class MultiTaskRows(torch.utils.data.Dataset):
    """Map-style dataset over every task's tokenized train rows, keyed by (task, index)."""

    def __init__(self, tables: Mapping[str, datasets.Dataset]) -> None:
        # Converted once for O(1) row access (datasets' lazy columns slice Arrow per row).
        self.columns = {
            task: random_access_columns(table, ("uid", "input_ids", "token_type_ids",
                                                "label", "length"))
            for task, table in tables.items()
        }

    def __len__(self) -> int:
        return sum(len(c["uid"]) for c in self.columns.values())

    def __getitem__(self, key: tuple[str, int] | tuple[str, int, float]) -> dict[str, Any]:
        """Row ``index`` of ``task``; a third key element is the batch's loss weight."""
        task, index = key[0], key[1]
        cols = self.columns[task]
        return {"task": task, "index": index, "weight": key[2] if len(key) > 2 else 1.0,
                "uid": cols["uid"][index],
                "input_ids": cols["input_ids"][index],
                "token_type_ids": cols["token_type_ids"][index], "label": cols["label"][index]}

    def lengths(self) -> dict[str, list[int]]:
        return {task: cols["length"] for task, cols in self.columns.items()}


@dataclass
class CollateFn:
    """Picklable collate for DataLoader workers: tensors plus the task and row indices."""

    specs: Mapping[str, TaskSpec]
    pad_id: int = 0
    pad_to_multiple_of: int | None = None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        task = items[0]["task"]
        batch = collate(items, self.pad_id, regression=self.specs[task].kind.is_regression,
                        pad_to_multiple_of=self.pad_to_multiple_of)
        batch["task"] = task
        batch["indices"] = [item["index"] for item in items]
        batch["weight"] = float(items[0].get("weight", 1.0))
        return batch


class _Keys(torch.utils.data.Sampler):
    """Adapts sampler batches to DataLoader's batch_sampler: lists of (task, index) keys."""

    def __init__(self, batches: Iterator[Batch], count: int) -> None:
        self.batches, self.count = batches, count

    def __iter__(self) -> Iterator[list[tuple[str, int, float]]]:
        for batch in self.batches:
            yield [(batch.task, i, batch.weight) for i in batch.indices]

    def __len__(self) -> int:
        return self.count


def epoch_loader(rows: MultiTaskRows, sampler: MultiTaskBatchSampler, collate_fn: CollateFn,
                 epoch: int, position: int = 0, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """The rest of ``epoch`` from batch ``position`` on (resume lands on the exact batch)."""
    keys = _Keys(sampler.iter_from(epoch, position), len(sampler) - position)
    # A private generator: DataLoader otherwise draws its worker seed from the global torch
    # RNG at every new iterator, so a resumed run's dropout masks would differ.
    generator = torch.Generator().manual_seed(sampler.seed * 1_000_003 + epoch)
    return DataLoader(rows, batch_sampler=keys, collate_fn=collate_fn, num_workers=num_workers,
                      pin_memory=pin_memory, generator=generator)
