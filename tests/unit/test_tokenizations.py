"""Where tokenizations live and how readers find theirs (mixed tokenizers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mtkd.config import config_from_dict
from mtkd.data.prepared import encoder_tokenization, task_lineages
from mtkd.data.stage import tokenized_lineage
from mtkd.errors import MtkdError
from mtkd.experiment import manifest_path, task_data_dir
from mtkd.storage import Storage

FP = "abcdef0123456789"


def test_layout_keeps_the_default_and_nests_the_others() -> None:
    assert task_data_dir("sst") == "data/sst"
    assert task_data_dir("sst", FP) == "data/sst/tok-abcdef0123"


def test_readers_find_their_tokenization(tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path))
    # a prepare manifest of mtkd before mixed tokenizers: everything reads the default
    store.write_json_atomic(manifest_path("prepare"), {"tasks": {"t": {"lineage": "L0"}}})
    assert encoder_tokenization(store, "/any/encoder") is None
    assert task_lineages(store) == {"t": "L0"}
    store.write_json_atomic(manifest_path("prepare"), {
        "tasks": {"t": {"lineage": "L0"}}, "tokenizer": "d" * 16,
        "encoders": {"/wp": "d" * 16, "/wp-copy": "d" * 16, "/bpe": FP},
        "tokenizations": {FP: {"encoders": ["/bpe"], "dir": "tok-abcdef0123",
                               "tasks": {"t": {"lineage": "L1"}}}}})
    assert encoder_tokenization(store, "/wp") is None
    assert encoder_tokenization(store, "/wp-copy") is None  # same tokenizer files
    assert encoder_tokenization(store, "/bpe") == FP
    assert task_lineages(store, FP) == {"t": "L1"}
    with pytest.raises(MtkdError, match=r"no tokenization for encoder '/new'.*run prepare"):
        encoder_tokenization(store, "/new")
    with pytest.raises(MtkdError, match="has not written tokenization"):
        task_lineages(store, "f" * 16)


def test_another_tokenizations_lineage_follows_its_tokenizer_not_encoder_path() -> None:
    config = config_from_dict({"name": "x", "tasks": [{"name": "trec"}]})
    moved = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder,
                                                                    path="/elsewhere"))
    content = {"train": "raw"}
    assert (tokenized_lineage(config, 0, FP, content, default=False)
            == tokenized_lineage(moved, 0, FP, content, default=False))
    assert (tokenized_lineage(config, 0, FP, content, default=False)
            != tokenized_lineage(config, 0, "f" * 16, content, default=False))
    # encoder.path's own tokenization keeps its lineage (existing experiments are reused)
    assert (tokenized_lineage(config, 0, FP, content)
            != tokenized_lineage(moved, 0, FP, content))
