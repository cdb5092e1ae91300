"""Tiny random encoders and synthetic tokenized tasks for fast unit tests."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from transformers import BertConfig, BertModel, BertTokenizer

from mtkd.tasks.spec import TaskSpec

FOUR_TASKS = [TaskSpec("sent", "classification", ("neg", "pos"), max_length=32),
              TaskSpec("sim", "regression", max_length=32),
              TaskSpec("nli", "pair_classification", ("entail", "neutral", "contra"),
                       max_length=32),
              TaskSpec("qa", "ranking", max_length=32)]
"""One task of each kind, as the saved model of the ``model_dir`` fixture has them."""

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

def write_task(path: Path, n: int, seed: int) -> Path:
    """Sentences of tiny-vocabulary words; positive iff "good" appears (learnable)."""
    rng = np.random.default_rng(seed)
    lines = ["text,label"]
    for i in range(n):
        words = list(rng.choice(WORDS[1:], size=int(rng.integers(4, 20))))
        positive = bool(rng.integers(0, 2))
        if positive:
            words[int(rng.integers(len(words)))] = "good"
        lines.append(f"{' '.join(words)} {i},{'pos' if positive else 'neg'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def toy_files_task(root: Path) -> dict:
    """A two-class "files" task named toy (40 train, 12 dev rows of :func:`write_task`)."""
    return {"name": "toy", "source": "files", "type": "classification",
            "labels": ["neg", "pos"], "max_length": 24,
            "files": {"train": str(write_task(root / "train.csv", 40, 0)),
                      "dev": str(write_task(root / "dev.csv", 12, 1))}}


def write_regression(path: Path, n: int, seed: int) -> Path:
    """Scores in [-1, 1]: +1 per "good", -1 per "bad" (clipped), tiny vocabulary."""
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "film", "plot", "the", "a", "very", "movie"]
    lines = ["text,label"]
    for i in range(n):
        sentence = list(rng.choice(words, size=int(rng.integers(3, 10))))
        score = np.clip(sentence.count("good") - sentence.count("bad"), -1, 1)
        lines.append(f"{' '.join(sentence)} {i},{score}")
    path.write_text("\n".join(lines) + "\n")
    return path


def toy_experiment(root: Path, name: str) -> dict:
    """A two-task experiment on the tiny encoder (classification + regression files),
    with 2 teacher members and a 2-worker ZeRO-2 student at precision auto (bf16 where
    the CPU has it natively, fp32 where bf16 would be emulated, 65x slower)."""
    encoder = make_tiny_bert(root / "encoder", hidden=64, layers=4)
    cls = {"name": "toy", "source": "files", "type": "classification",
           "labels": ["neg", "pos"], "max_length": 32,
           "files": {"train": str(write_task(root / "c_train.csv", 480, 0)),
                     "dev": str(write_task(root / "c_dev.csv", 60, 1))}}
    reg = {"name": "score", "source": "files", "type": "regression", "max_length": 32,
           "files": {"train": str(write_regression(root / "r_train.csv", 160, 2)),
                     "dev": str(write_regression(root / "r_dev.csv", 40, 3))}}
    return {
        "name": name, "storage_path": str(root / "runs"), "ray": {"num_cpus": 2},
        "encoder": {"path": str(encoder)}, "tasks": [cls, reg],
        "teachers": {"size": 2, "max_concurrent": 2, "max_failures": 0,
                     "training": {"epochs": 1, "batch_size": 16, "learning_rate": 0.002}},
        "soft_targets": {"batch_size": 32, "resources_per_actor": {"cpu": 0.5}},
        "student": {"num_layers": 2, "distill": True, "num_workers": 2,
                    "resources_per_worker": {"cpu": 1}, "checkpoint_every": 5,
                    "keep_checkpoints": 2, "max_failures": 2,
                    "deepspeed": {"zero_stage": 2},
                    "training": {"epochs": 2, "batch_size": 8, "learning_rate": 0.001,
                                 "precision": "auto", "eval_every": 20}},
    }


def make_tiny_bpe_bert(path: Path, hidden: int = 32, layers: int = 2, seed: int = 0,
                       vocab_size: int = 90) -> Path:
    """Save a random BERT with a *BPE* tokenizer (trained here with the ``tokenizers``
    library on the tiny vocabulary and digits), so the same text gets other token ids than
    :func:`make_tiny_bert`'s word-level WordPiece vocabulary: a second tokenizer kind for
    mixed ensembles. Special tokens are first ([PAD] = 0), as in the WordPiece one."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [" ".join(WORDS)] * 3 + [" ".join(str(i) for i in range(500))]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, min_frequency=1, show_progress=False))
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    config = BertConfig(vocab_size=backend.get_vocab_size(), hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
