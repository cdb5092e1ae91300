"""MT-DNN on the real bundled all-MiniLM-L6-v2 (cached asset): build, truncate, save, load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtkd.data.tokenize import load_tokenizer
from mtkd.model import (
    build_mtdnn,
    load_mtdnn,
    non_embedding_parameters,
    num_parameters,
    predict_texts,
    save_mtdnn,
)
from mtkd.pretrained import resolve_encoder_dir
from mtkd.tasks.spec import TaskSpec

SPECS = [
    TaskSpec("rotten_tomatoes", "classification", labels=("rotten", "fresh")),
    TaskSpec("boolq", "pair_classification", labels=("false", "true")),
    TaskSpec("vader", "regression"),
    TaskSpec("qa", "ranking"),
]
SENTENCES = ["A gripping, beautifully acted film.", "Tedious and far too long."]
QUESTIONS = ["is the sky blue", "do cats bark"]
PASSAGES = ["On a clear day the sky looks blue because of Rayleigh scattering.",
            "Cats meow and purr; dogs are the ones that bark."]


@pytest.fixture(scope="module")
def encoder_dir() -> Path:
    return resolve_encoder_dir("bundled:all-MiniLM-L6-v2")


def test_minilm_parameter_counts(encoder_dir: Path) -> None:
    full = build_mtdnn(encoder_dir, SPECS)
    small = build_mtdnn(encoder_dir, SPECS, num_layers=3)
    counts = {name: (num_parameters(m.encoder), non_embedding_parameters(m.encoder))
              for name, m in (("6 layers", full), ("3 layers", small))}
    print(f"MiniLM encoder parameters (total, non-embedding), pooler dropped: {counts}")
    # 22.7M with the unused pooler (384 * 384 + 384), 11.9M of them embeddings.
    assert counts["6 layers"] == (22_565_376, 10_646_784)
    assert counts["3 layers"] == (17_241_984, 5_323_392)
    assert small.encoder.config.num_hidden_layers == 3
    small_state = small.encoder.state_dict()
    for key, value in full.encoder.state_dict().items():
        if key in small_state:
            assert torch.equal(value, small_state[key]), key


def test_minilm_save_load_identical(encoder_dir: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(encoder_dir)
    model = build_mtdnn(encoder_dir, SPECS, num_layers=3, pooling="mean", san=True, seed=1)
    out = save_mtdnn(model, tokenizer, tmp_path / "student", extra={"source": "test"})
    loaded, loaded_tok = load_mtdnn(out)
    runs = [{
        "rotten_tomatoes": predict_texts(m, tok, "rotten_tomatoes", SENTENCES, probs=True),
        "boolq": predict_texts(m, tok, "boolq", QUESTIONS, PASSAGES),
        "vader": predict_texts(m, tok, "vader", SENTENCES),
        "qa": predict_texts(m, tok, "qa", QUESTIONS, [PASSAGES, PASSAGES[::-1]]),
    } for m, tok in ((model, tokenizer), (loaded, loaded_tok))]
    for task in runs[0]:
        np.testing.assert_allclose(runs[0][task], runs[1][task], atol=1e-6, err_msg=task)
    assert runs[0]["rotten_tomatoes"].shape == (2, 2) and runs[0]["qa"].shape == (2, 2)
    assert np.isfinite(runs[0]["boolq"]).all()
