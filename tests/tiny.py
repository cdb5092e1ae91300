"""Tiny random encoders and synthetic tokenized tasks for fast unit tests."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from transformers import BertConfig, BertModel, BertTokenizer

WORDS = ["good", "bad", "fine", "awful", "great", "poor", "film", "movie", "plot", "the",
         "a", "is", "was", "very", "not", "what", "who", "where", "when", "why"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_bert(path: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a random 2-layer BERT (hidden 32) and a word-level tokenizer to ``path``."""
    import torch

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
    config = BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    BertTokenizer(str(vocab)).save_pretrained(path)
    return path


def synthetic_task(n: int, seed: int, regression: bool = False,
                   prefix: str = "t") -> datasets.Dataset:
    """Tokenized rows whose label is learnable: class 1 iff token 5 ("good") appears.

    Columns: uid, input_ids, token_type_ids, length, label (int64 or float32).
    """
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("uid", "input_ids", "token_type_ids", "length",
                                             "label")}
    for i in range(n):
        length = int(rng.integers(4, 16))
        body = rng.integers(6, len(SPECIAL) + len(WORDS), size=length - 2).tolist()
        positive = bool(rng.integers(0, 2))
        if positive:
            body[int(rng.integers(0, len(body)))] = 5
        ids = [2, *body, 3]
        rows["uid"].append(f"{prefix}-{i}")
        rows["input_ids"].append(ids)
        rows["token_type_ids"].append([0] * len(ids))
        rows["length"].append(len(ids))
        rows["label"].append(float(positive) * 2 - 1 if regression else int(positive))
    features = datasets.Features({
        "uid": datasets.Value("string"),
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "token_type_ids": datasets.Sequence(datasets.Value("int8")),
        "length": datasets.Value("int32"),
        "label": datasets.Value("float32" if regression else "int64"),
    })
    return datasets.Dataset.from_dict(rows, features=features)
