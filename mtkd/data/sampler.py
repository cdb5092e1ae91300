"""The multi-task batch sampler: every mini-batch comes from one task, as in MT-DNN.

An *epoch* is a list of :class:`Batch` es ``(task, row indices into that task's train table)``.
It is a pure function of ``(seed, epoch)`` and the constructor arguments, so every
data-parallel rank computes the same epoch on its own and a resumed run sees the same
batches again. How an epoch is built:

1. **Batches of one task (a "pass").** The task's rows are shuffled. Without length
   bucketing they are cut into batches of ``batch_size`` in that order. With
   ``bucket_by_length`` the shuffled rows are cut into chunks of
   ``batch_size * bucket_multiplier`` rows, each chunk is sorted by length and cut into
   batches, and the pass's batches are shuffled: little padding, still random. Either way a
   pass has ``ceil(n / batch_size)`` batches, at most one of them short (none with
   ``drop_last``, which drops it: ``floor(n / batch_size)``).
2. **Batches per task per epoch** (``b_t`` = batches of one pass of task t):

   * ``proportional`` (MT-DNN's default): ``b_t``. Every example is used exactly once per
     epoch (less the short batches under ``drop_last`` and the sharding tail of step 4), so
     tasks are drawn in proportion to their size.
   * ``temperature``: total ``T = sum(b_t)`` as proportional; task t gets a share
     ``p_t = n_t**tau / sum(n**tau)`` (n = examples; tau 1: proportional, 0: uniform) and
     ``round(T * p_t)`` batches, rounded by largest remainder so the counts add up to T
     exactly (a task with no full batch under ``drop_last`` gets none). A task needing
     more than ``b_t`` batches takes further passes (freshly shuffled); one needing fewer
     takes the first batches of its pass (a random subset).
   * ``capped``: ``min(b_t, cap)``, the first batches of one pass.
3. **Mixing.** All tasks' batches are put in one random order.
4. **Sharding.** With ``num_shards`` N each task's batches are grouped N at a time, the
   groups are mixed instead of single batches, and shard i takes batches ``i, i + N, ...``:
   so at every step all shards train the *same task* (one global MT-DNN batch of that
   task, as in single-process training), every shard runs the same number of steps (which
   DDP/DeepSpeed need), and no batch goes to two shards of one step. A task whose batch
   count is not a multiple of N completes its last group with batches of its next pass
   (freshly shuffled), so no task is ever dropped, however small (a task of 60 examples
   at batch 32 has 2 batches; with 4 shards it gets a group of 4). Each batch carries a
   ``weight`` = N x its examples / the group's examples: data-parallel training averages
   the shards' gradients with equal weight, and multiplying each shard's loss by its
   weight makes that average the mean over the group's examples (a short batch counts
   for what it holds). With one shard this is exactly step 3 and every weight is 1.

Randomness comes from ``numpy.random.default_rng([seed, epoch, crc32(task)])`` per task
(so a task's batches do not depend on which other tasks exist) and
``default_rng([seed, epoch])`` for the mixing.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

Strategy = Literal["proportional", "temperature", "capped"]
STRATEGIES = ("proportional", "temperature", "capped")


class Batch(NamedTuple):
    """One mini-batch: the task it comes from, row indices into that task's table, and its
    loss weight in the data-parallel mean (step 4 of the module docstring; 1 unsharded)."""

    task: str
    indices: list[int]
    weight: float = 1.0


class MultiTaskBatchSampler:
    """Epochs of single-task batches for one data-parallel shard (see the module docstring).

    Args:
        lengths: task name -> token length of every train example, in row order (for
            ranking, the longest candidate). Only the number of rows matters unless
            ``bucket_by_length``.
        batch_size: examples per batch (per shard).
        strategy, temperature, cap, bucket_by_length: as ``SamplingConfig``.
        bucket_multiplier: a length bucket spans ``batch_size * bucket_multiplier`` rows.
        seed: non-negative int; with the epoch number it fixes everything.
        num_shards, shard_index: data-parallel world size and this rank.
        drop_last: drop each task's short batch.

    Use ``batches(epoch)`` / ``iter_from(epoch, position)`` statelessly, or the sampler as a
    stateful iterable (``set_epoch``, ``for batch in sampler``, ``state_dict``,
    ``load_state_dict``).
    """

    def __init__(
        self,
        lengths: Mapping[str, Sequence[int]],
        batch_size: int,
        *,
        strategy: Strategy = "proportional",
        temperature: float = 1.0,
        cap: int | None = None,
        bucket_by_length: bool = True,
        bucket_multiplier: int = 50,
        seed: int = 0,
        num_shards: int = 1,
        shard_index: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not lengths:
            raise ValueError("no tasks: lengths is empty")
        if batch_size < 1 or bucket_multiplier < 1:
            raise ValueError("batch_size and bucket_multiplier must be >= 1")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
        if strategy == "capped" and (cap is None or cap < 1):
            raise ValueError("strategy 'capped' needs cap >= 1")
        if not 0.0 <= temperature <= 1.0:
            raise ValueError(f"temperature must be in [0, 1], got {temperature}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}/{num_shards}")
        self.lengths = {t: np.asarray(v, dtype=np.int64) for t, v in lengths.items()}
        self.tasks = sorted(self.lengths)
        empty = [t for t in self.tasks if len(self.lengths[t]) == 0]
        if empty:
            raise ValueError(f"tasks without training examples: {', '.join(empty)}")
        self.batch_size, self.bucket_multiplier = batch_size, bucket_multiplier
        self.strategy, self.temperature, self.cap = strategy, temperature, cap
        self.bucket_by_length, self.drop_last = bucket_by_length, drop_last
        self.seed, self.num_shards, self.shard_index = seed, num_shards, shard_index
        self.task_batch_counts = self._task_batch_counts()
        """Batches per task per epoch, all shards together (before the last group of a task
        is completed from its next pass)."""
        self._len = sum(-(-c // num_shards) for c in self.task_batch_counts.values())
        if self._len == 0:
            raise ValueError("no task has a full batch (drop_last with fewer examples than "
                             "batch_size in every task)")
        self.epoch, self.position = 0, 0

    @classmethod
    def from_config(cls, lengths: Mapping[str, Sequence[int]], batch_size: int, sampling: Any,
                    **kwargs: Any) -> MultiTaskBatchSampler:
        """Build from a ``SamplingConfig`` (strategy, temperature, cap, bucket_by_length)."""
        return cls(lengths, batch_size, strategy=sampling.strategy,
                   temperature=sampling.temperature, cap=sampling.cap,
                   bucket_by_length=sampling.bucket_by_length, **kwargs)

    # ------------------------------------------------------------------ epochs
    def _pass_batches(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _task_batch_counts(self) -> dict[str, int]:
        full = {t: self._pass_batches(len(self.lengths[t])) for t in self.tasks}
        if self.strategy == "capped":
            return {t: min(b, self.cap) for t, b in full.items()}
        if self.strategy == "proportional":
            return full
        total = sum(full.values())
        weights = np.array([len(self.lengths[t]) for t in self.tasks], dtype=np.float64)
        weights = np.where([full[t] > 0 for t in self.tasks], weights**self.temperature, 0.0)
        quota = total * weights / weights.sum()
        counts = np.floor(quota).astype(np.int64)
        order = np.argsort(-(quota - counts), kind="stable")  # largest remainders first
        counts[order[: total - int(counts.sum())]] += 1
        return {t: int(c) for t, c in zip(self.tasks, counts, strict=True)}

    def _one_pass(self, lens: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        bs, perm = self.batch_size, rng.permutation(len(lens))
        if not self.bucket_by_length:
            out = [perm[i : i + bs] for i in range(0, len(perm), bs)]
        else:
            out, chunk = [], bs * self.bucket_multiplier
            for start in range(0, len(perm), chunk):
                rows = perm[start : start + chunk]
                rows = rows[np.argsort(lens[rows], kind="stable")]
                out.extend(rows[i : i + bs] for i in range(0, len(rows), bs))
            out = [out[i] for i in rng.permutation(len(out))]
        return [b for b in out if len(b) == bs] if self.drop_last else out

    def _task_batches(self, task: str, epoch: int) -> list[Batch]:
        want = -(-self.task_batch_counts[task] // self.num_shards) * self.num_shards
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(task.encode())])
        got: list[np.ndarray] = []
        while len(got) < want:
            got.extend(self._one_pass(self.lengths[task], rng))
        return [Batch(task, b.tolist()) for b in got[:want]]

    def epoch_batches(self, epoch: int) -> list[Batch]:
        """The whole epoch, all shards together, in order (step k = batches kN..kN+N-1)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        n = self.num_shards  # groups of n batches of one task: one step of all shards
        groups = []
        for task in self.tasks:
            batches = self._task_batches(task, epoch)  # a multiple of n
            for i in range(0, len(batches), n):
                group = batches[i:i + n]
                examples = sum(len(b.indices) for b in group)
                groups.append([b._replace(weight=n * len(b.indices) / examples)
                               for b in group])
        order = np.random.default_rng([self.seed, epoch]).permutation(len(groups))
        return [batch for i in order for batch in groups[i]]

    def batches(self, epoch: int) -> list[Batch]:
        """This shard's batches of ``epoch``: ``len(self)`` of them."""
        return self.epoch_batches(epoch)[self.shard_index :: self.num_shards]

    def __len__(self) -> int:
        """Batches per epoch of this shard (the same for every epoch and every shard)."""
        return self._len

    def iter_from(self, epoch: int, position: int = 0) -> Iterator[Batch]:
        """This shard's batches of ``epoch`` from index ``position`` on (stateless)."""
        if not 0 <= position <= self._len:
            raise ValueError(f"position must be in [0, {self._len}], got {position}")
        return iter(self.batches(epoch)[position:])

    # ------------------------------------------------------------------ stateful use
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (like ``DistributedSampler.set_epoch``)."""
        self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch. ``position`` counts batches handed out, so a
        ``state_dict()`` taken after training on a batch resumes at the next one. After the
        last batch the sampler moves to the next epoch, position 0."""
        for batch in self.iter_from(self.epoch, self.position):
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "batch_size": self.batch_size, "strategy": self.strategy,
            "temperature": self.temperature, "cap": self.cap, "drop_last": self.drop_last,
            "bucket_by_length": self.bucket_by_length, "num_shards": self.num_shards,
            "bucket_multiplier": self.bucket_multiplier,
            "sizes": {t: len(self.lengths[t]) for t in self.tasks},
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position", "config"}``; JSON-serialisable."""
        return {"epoch": self.epoch, "position": self.position, "config": self._fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue at ``state``'s epoch and position; warns when the sampler was built
        differently (then the remaining batches are not those the saved run would see)."""
        saved = state.get("config")
        if saved is not None and saved != self._fingerprint():
            diff = sorted(k for k in self._fingerprint() if saved.get(k) != self._fingerprint()[k])
            warnings.warn(f"sampler state saved with different settings: {', '.join(diff)}",
                          stacklevel=2)
        self.epoch, self.position = int(state["epoch"]), min(int(state["position"]), self._len)


def padding_fraction(batches: Iterable[Batch], lengths: Mapping[str, Sequence[int]]) -> float:
    """Padded tokens / all tokens when every batch is padded to its longest member
    (0.0: no padding; 0.0 for no batches)."""
    arrays = {t: np.asarray(v, dtype=np.int64) for t, v in lengths.items()}
    padded = real = 0
    for batch in batches:
        task, indices = batch.task, batch.indices
        if len(indices) == 0:
            continue
        lens = arrays[task][np.asarray(indices)]
        padded += int(lens.max()) * len(lens)
        real += int(lens.sum())
    return (padded - real) / padded if padded else 0.0
