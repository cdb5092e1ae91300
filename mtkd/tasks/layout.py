"""How a task's examples are laid out as model input and output: one sequence per example,
or a query with a list of candidates (MT-DNN's pairwise ranking, Liu et al. 2019, sec. 3.1).

A task type (:mod:`mtkd.tasks.types`) holds one of the two layouts; tokenization,
prediction, soft targets, losses and metrics ask it instead of testing the type's name.

Shapes: B examples, K candidates (the most of any example in the batch), T tokens.

* :class:`OneSequence`: an example is one token sequence (a text, or a pair of texts); the
  model gives [B, C] logits or [B] scores.
* :class:`QueryCandidates`: an example is K (query, candidate) sequences, [B, K, T] after
  collation; the model gives [B, K] candidate scores, padded candidates at a filler value.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtkd.padding import PAD_SCORE, pad_rows, real_candidates

Encode = Callable[[list[str], list[str] | None], tuple[list[list[int]], list[list[int]]]]
"""A tokenizer call: (first texts, second texts or None) → (input_ids, token_type_ids)."""


@dataclass(frozen=True)
class OneSequence:
    """One token sequence per example: a single text, or a (text, text_pair) pair."""

    candidates: bool = False
    """Examples carry a ``candidates`` column (never here)."""
    pair_column: str = "text_pair"
    """The canonical column with an example's second text(s)."""
    outputs_name: str = "logits"
    """What the head's outputs are called in error messages."""

    def text_column(self, found: Collection[str]) -> str:
        """The default column of the text role among the ``found`` columns: ``text``."""
        return "text"

    def input_problem(self, task: str, texts: Sequence[str], seconds: Sequence[Any] | None,
                      pair: bool | None) -> str | None:
        """What is wrong with raw inputs to predict (``seconds``: the text_pairs), or None."""
        if pair and seconds is None:
            return f"task {task!r} classifies sentence pairs: give text_pairs"
        if seconds is not None and len(seconds) != len(texts):
            return f"got {len(texts)} texts but {len(seconds)} text_pairs"
        return None

    def encode(self, encode: Encode, texts: Sequence[str],
               seconds: Sequence[Any] | None) -> dict[str, list[Any]]:
        """Token columns of N examples: ``input_ids``, ``token_type_ids`` (one list of ints
        each) and ``length`` (tokens)."""
        ids, types = encode(list(texts), list(seconds) if seconds is not None else None)
        return {"input_ids": ids, "token_type_ids": types, "length": [len(x) for x in ids]}

    def sequences(self, tokens: Any) -> list[Any]:
        """One example's token column as a list of sequences (here just itself)."""
        return [tokens]

    def from_sequences(self, sequences: Any) -> Any:
        """The inverse of :meth:`sequences`: the example's token column."""
        return sequences[0]

    def stack(self, outputs: Sequence[np.ndarray], fill: float = PAD_SCORE) -> np.ndarray:
        """Per-example outputs ([C] each, or 0-d scores) → one float32 array [N, C] or [N]
        (``fill`` is unused: every example has the same width)."""
        return np.stack(outputs).astype(np.float32)

    def best_candidates(self, scores: np.ndarray) -> np.ndarray | None:
        """The best candidate of each example (None: examples have no candidates)."""
        return None

    def pairs_as_examples(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The model's keyword inputs for a batch of single sequences ([B, T] tensors
        ``input_ids``, ``attention_mask``, ``token_type_ids``): as they are."""
        return inputs

    def metric_outputs(self, probs: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
        """An ensemble's averaged probabilities [N, C] as the metrics take them: as they
        are."""
        return probs

    def real_mask(self, outputs: Any) -> Any:
        """Which output entries are real, as a bool tensor shaped like ``outputs``."""
        import torch

        return torch.ones_like(outputs, dtype=torch.bool)


@dataclass(frozen=True)
class QueryCandidates:
    """A query (column ``text``, alias ``query``) and K candidates (column ``candidates``),
    encoded as K (query, candidate) sequences; the label is the right candidate's index."""

    candidates: bool = True
    pair_column: str = "candidates"
    outputs_name: str = "candidate scores"

    def text_column(self, found: Collection[str]) -> str:
        """``query`` when the file has it or has no ``text`` column, else ``text``."""
        return "query" if "query" in found or "text" not in found else "text"

    def input_problem(self, task: str, texts: Sequence[str], seconds: Sequence[Any] | None,
                      pair: bool | None) -> str | None:
        """What is wrong with raw inputs to predict (``seconds``: a list of candidate texts
        per query), or None."""
        if seconds is None or len(seconds) != len(texts):
            return (f"task {task!r} ranks candidates: give one list of candidate texts per "
                    "query as text_pairs")
        if any(isinstance(c, str) or not c for c in seconds):
            return f"task {task!r}: each query needs a non-empty list of candidate texts"
        return None

    def encode(self, encode: Encode, texts: Sequence[str],
               seconds: Sequence[Any] | None) -> dict[str, list[Any]]:
        """Per example K sequences (``input_ids``, ``token_type_ids``: a list of K lists of
        ints) and ``length``, the longest candidate's tokens."""
        if seconds is None:
            raise ValueError("a query needs its candidates")
        all_ids, all_types, lengths = [], [], []
        for query, candidates in zip(texts, seconds, strict=True):
            ids, types = encode([query] * len(candidates), list(candidates))
            all_ids.append(ids)
            all_types.append(types)
            lengths.append(max(len(x) for x in ids))
        return {"input_ids": all_ids, "token_type_ids": all_types, "length": lengths}

    def sequences(self, tokens: Any) -> list[Any]:
        return list(tokens)

    def from_sequences(self, sequences: Any) -> Any:
        return sequences

    def stack(self, outputs: Sequence[np.ndarray], fill: float = PAD_SCORE) -> np.ndarray:
        """Per-example scores of their own k_i candidates → float32 [N, max k_i], absent
        candidates ``fill`` (:data:`~mtkd.padding.PAD_SCORE` for scores, 0 for
        probabilities)."""
        return pad_rows(outputs, fill)

    def best_candidates(self, scores: np.ndarray) -> np.ndarray:
        """[N] int64 index of each query's best-scored candidate, from scores [N, K]
        (missing candidates scored lowest)."""
        if not scores.size:
            return np.zeros(len(scores), dtype=np.int64)
        return scores.argmax(axis=1).astype(np.int64)

    def pairs_as_examples(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Each (query, candidate) row of a [B, T] batch as an example with one candidate:
        [B, 1, T] tensors and a [B, 1] ``candidate_mask`` (all True); scores [B, 1]."""
        import torch

        ids = inputs["input_ids"]
        return {**{k: v.unsqueeze(1) for k, v in inputs.items()},
                "candidate_mask": torch.ones(ids.shape[0], 1, dtype=torch.bool,
                                             device=ids.device)}

    def metric_outputs(self, probs: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
        """Averaged candidate probabilities [N, K] as the metrics take them: their logs, in
        the same order; absent candidates (padding in the mean ``logits`` [N, K]; without
        them, probability 0) get :data:`~mtkd.padding.PAD_SCORE`."""
        real = real_candidates(logits) if logits is not None else probs > 0
        with np.errstate(divide="ignore"):
            return np.where(real, np.log(probs), PAD_SCORE)

    def real_mask(self, outputs: Any) -> Any:
        """Real candidates of scores [..., K] (tensor or array): above
        :data:`~mtkd.padding.PAD_BELOW`."""
        return real_candidates(outputs)


ONE_SEQUENCE = OneSequence()
QUERY_CANDIDATES = QueryCandidates()
