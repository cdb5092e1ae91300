"""Tokenize canonical example tables with the encoder's tokenizer (``datasets.map``).

Output columns of a tokenized split:

* ``uid`` (str) and ``label`` (int64 or float32), carried over unchanged;
* ``input_ids``, ``token_type_ids``: list[int] of length ``length`` — or, for ranking
  tasks, one list per candidate (list[list[int]]);
* ``length`` (int): tokens of the example (the longest candidate for ranking), what the
  sampler buckets on.

Padding is left to the collator (dynamic per batch); truncation is per task
(``max_length``), and for a pair the longer side is cut first (``longest_first``). Whether a
split is encoded as pairs is decided once per split (:func:`split_is_pair`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from mtkd.errors import DataError
from mtkd.tasks.examples import LABEL, TEXT, TEXT_PAIR, UID
from mtkd.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKEN_COLUMNS = ("input_ids", "token_type_ids", "length")


def load_tokenizer(encoder_dir: Path) -> PreTrainedTokenizerBase:
    """The encoder's tokenizer, loaded from a local directory only (never a hub)."""
    from transformers import AutoTokenizer  # imported when needed: seconds to import

    return AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)


def _encode(tokenizer: PreTrainedTokenizerBase, first: list[str], second: list[str] | None,
            max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    encoded = tokenizer(first, second, truncation="longest_first" if second else True,
                        max_length=max_length, return_attention_mask=False)
    ids = encoded["input_ids"]
    types = encoded.get("token_type_ids") or [[0] * len(x) for x in ids]
    return ids, types


def _tokenize_batch(batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase,
                    spec: TaskSpec, is_pair: bool) -> dict[str, list[Any]]:
    layout = spec.kind.layout
    return layout.encode(partial(_encode, tokenizer, max_length=spec.max_length), batch[TEXT],
                         batch[layout.pair_column] if is_pair else None)


def split_is_pair(split: datasets.Dataset, spec: TaskSpec) -> bool:
    """Whether a split is encoded as sentence pairs: the task type's rule, or for a type
    that allows both (regression) whether its rows have a text_pair, decided once for the
    whole split (never per tokenization batch). A split whose rows mix empty and non-empty
    text_pair raises DataError naming the first row of each kind (the loaders refuse empty
    text_pair cells in a file that has the column, so this is a guard)."""
    if spec.kind.pair is not None or TEXT_PAIR not in split.column_names:
        return bool(spec.kind.pair)
    pairs = split[TEXT_PAIR]
    filled = [bool(p) for p in pairs]
    if all(filled) or not any(filled):
        return bool(filled) and filled[0]
    empty, full = filled.index(False), filled.index(True)
    raise DataError(f"task {spec.name!r}: text_pair is empty in example {empty + 1} (uid "
                    f"{split[empty][UID]!r}) but given in example {full + 1} (uid "
                    f"{split[full][UID]!r}): a split is encoded all as pairs or all as single "
                    "texts (fix: give every row a text_pair, or none)")


def tokenize_split(split: datasets.Dataset, spec: TaskSpec,
                   tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
    """Tokenize one split; keeps ``uid`` and ``label``, drops the raw text columns."""
    drop = [c for c in split.column_names if c not in (UID, LABEL)]
    return split.map(_tokenize_batch, batched=True, batch_size=1000,
                     fn_kwargs={"tokenizer": tokenizer, "spec": spec,
                                "is_pair": split_is_pair(split, spec)},
                     remove_columns=drop, desc=f"tokenize {spec.name}",
                     load_from_cache_file=False, keep_in_memory=True)
