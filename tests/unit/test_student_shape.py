"""Student shapes (issue 18, item 1): which layers are kept, narrow students initialised by
truncated SVD, parameter counts (by hand), and what `mtkd validate` says about them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny import FOUR_TASKS, SPECIAL, WORDS, make_tiny_bert
from transformers import BertConfig, BertModel, BertTokenizer

from mtkd.errors import MtkdError
from mtkd.model.encoder import load_encoder
from mtkd.model.io import load_mtdnn, save_mtdnn
from mtkd.model.mtdnn import build_mtdnn, num_parameters
from mtkd.model.shape import (
    EncoderShape,
    layer_indices,
    narrow_encoder,
    shaped_parameters,
    spread,
)

REPO = Path(__file__).resolve().parents[2]
VOCAB, POSITIONS, TYPES = 100, 64, 2  # more rows than hidden: the SVD basis is unique


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BERT: 4 layers, hidden 64, 4 heads of 16, intermediate 128, 100 embedding
    rows (the tokenizer uses the first 25)."""
    path = tmp_path_factory.mktemp("wide")
    torch.manual_seed(1)
    (path / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=POSITIONS)
    model = BertModel(config)
    with torch.no_grad():  # LayerNorms as pretrained ones look: not the identity
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    return path


def bert_parameters(hidden: int, layers: int, intermediate: int) -> int:
    """A pooler-less BERT's parameter count, by hand."""
    embeddings = (VOCAB + POSITIONS + TYPES) * hidden + 2 * hidden
    attention = 4 * (hidden * hidden + hidden) + 2 * hidden
    ffn = hidden * intermediate + intermediate + intermediate * hidden + hidden + 2 * hidden
    return embeddings + layers * (attention + ffn)


def test_spread_and_layer_indices() -> None:
    assert layer_indices(12, 6, "every_nth") == [1, 3, 5, 7, 9, 11]
    assert layer_indices(6, 3, "every_nth") == [1, 3, 5]
    assert layer_indices(6, 4, "every_nth") == [1, 2, 4, 5]  # 1.5, 3, 4.5, 6: halves up
    assert layer_indices(6, 6, "every_nth") == list(range(6))
    assert layer_indices(12, 3, "first") == [0, 1, 2]
    assert [spread(i, 6, 4) for i in range(1, 5)] == [2, 3, 5, 6]
    with pytest.raises(MtkdError, match="between 1 and 6"):
        layer_indices(6, 7, "every_nth")


def test_every_nth_keeps_those_layers_weights(wide: Path) -> None:
    full = load_encoder(wide)
    kept = EncoderShape(2, "every_nth").apply(load_encoder(wide))
    assert kept.config.num_hidden_layers == 2 and len(kept.encoder.layer) == 2
    for new, old in zip(kept.encoder.layer, (full.encoder.layer[1], full.encoder.layer[3]),
                        strict=True):
        assert torch.equal(new.output.dense.weight, old.output.dense.weight)


def _projector(matrix: np.ndarray, width: int) -> np.ndarray:
    """V_r V_r^T of the top-r right singular vectors (numpy; sign-free)."""
    _, _, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    return vt[:width].T @ vt[:width]


def test_narrow_encoder_projects_the_pretrained_matrices(wide: Path) -> None:
    full = load_encoder(wide)
    state = {k: v.detach().numpy().astype(np.float64) for k, v in full.state_dict().items()}
    narrow = narrow_encoder(load_encoder(wide), 32)
    new = {k: v.detach().numpy().astype(np.float64) for k, v in narrow.state_dict().items()}
    cfg = narrow.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (32, 2, 64)
    proj = _projector(state["embeddings.word_embeddings.weight"], 32)
    # P is the SVD basis: E' E'^T = E P P^T E^T whatever the signs of the vectors
    emb, emb_new = state["embeddings.word_embeddings.weight"], new[
        "embeddings.word_embeddings.weight"]
    np.testing.assert_allclose(emb_new @ emb_new.T, emb @ proj @ emb.T, atol=1e-5)
    # the heads kept: the 2 of 4 with the largest ||W_V,h|| ||W_O,h||, computed here
    at = "encoder.layer.1."
    w_v = state[at + "attention.self.value.weight"]
    w_o = state[at + "attention.output.dense.weight"]
    score = [np.linalg.norm(w_v[h * 16:(h + 1) * 16])
             * np.linalg.norm(w_o[:, h * 16:(h + 1) * 16]) for h in range(4)]
    heads = sorted(np.argsort(score)[-2:])
    rows = np.concatenate([np.arange(h * 16, (h + 1) * 16) for h in heads])
    w_q = state[at + "attention.self.query.weight"][rows]
    q_new = new[at + "attention.self.query.weight"]
    np.testing.assert_allclose(q_new @ q_new.T, w_q @ proj @ w_q.T, atol=1e-5)
    np.testing.assert_allclose(new[at + "attention.self.query.bias"],
                               state[at + "attention.self.query.bias"][rows], atol=1e-6)
    # the LayerNorm scale is the diagonal of P^T diag(g) P: its sum is trace(P P^T diag(g))
    g = state[at + "output.LayerNorm.weight"]
    assert new[at + "output.LayerNorm.weight"].sum() == pytest.approx(
        float(np.trace(proj @ np.diag(g))), rel=1e-5)


def test_narrow_counts_match_hand_and_meta(wide: Path) -> None:
    for shape, (hidden, layers, inter) in {
        EncoderShape(None, "first", 32): (32, 4, 64),
        EncoderShape(2, "every_nth", 48): (48, 2, 96),
        EncoderShape(3, "first", None): (64, 3, 128),
    }.items():
        model = build_mtdnn(wide, FOUR_TASKS, shape=shape)
        assert model.encoder.config.hidden_size == hidden
        assert num_parameters(model.encoder) == bert_parameters(hidden, layers, inter)
        assert shaped_parameters(wide, shape)[0] == bert_parameters(hidden, layers, inter)
        heads = num_parameters(model) - num_parameters(model.encoder)
        assert heads == (hidden * 2 + 2) + (hidden + 1) + (hidden * 3 + 3) + (hidden + 1)


def test_narrow_student_saves_and_loads_as_a_plain_model(wide: Path, tmp_path: Path) -> None:
    from mtkd.data.tokenize import load_tokenizer

    model = build_mtdnn(wide, FOUR_TASKS, shape=EncoderShape(2, "every_nth", 32)).eval()
    save_mtdnn(model, load_tokenizer(wide), tmp_path / "m")
    loaded, _ = load_mtdnn(tmp_path / "m")
    ids = torch.randint(5, 25, (3, 10))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(model("sent", ids, mask), loaded("sent", ids, mask), atol=1e-6)
    assert loaded.encoder.config.hidden_size == 32


def test_widths_that_do_not_fit_are_refused(wide: Path, tmp_path: Path) -> None:
    with pytest.raises(MtkdError, match=r"student.hidden_size 40 .*multiple of 16"):
        build_mtdnn(wide, FOUR_TASKS, shape=EncoderShape(None, "first", 40))
    with pytest.raises(MtkdError, match="multiple of 16"):
        shaped_parameters(wide, EncoderShape(None, "first", 80))


def test_validate_prints_the_shape_and_refuses_a_bad_width(wide: Path, tmp_path: Path) -> None:
    data = {"name": "exp", "storage_path": str(tmp_path / "runs"),
            "encoder": {"path": str(wide)}, "tasks": [{"name": "rotten_tomatoes",
                                                       "max_length": 32}],
            "student": {"num_layers": 2, "layer_selection": "every_nth", "hidden_size": 32}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))

    def validate() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mtkd", "validate", str(path)],
                              cwd=REPO, text=True, capture_output=True, timeout=300)

    result = validate()
    assert result.returncode == 0, result.stderr
    count = bert_parameters(32, 2, 64)
    assert (f"student: layers 2, 4 of 4 (every_nth), hidden 32 of 64, 2 heads, "
            f"intermediate 64: {count / 1e6:.1f}M encoder parameters") in result.stdout
    data["student"]["hidden_size"] = 40
    path.write_text(yaml.safe_dump(data))
    result = validate()
    assert result.returncode == 2
    assert "student.hidden_size" in result.stderr and "multiple of 16" in result.stderr


def test_tiny_helper_encoder_keeps_its_default(tmp_path: Path) -> None:
    """No shape keys: the student is the first k layers, as before."""
    enc = make_tiny_bert(tmp_path / "t")
    model = build_mtdnn(enc, FOUR_TASKS, shape=EncoderShape(1))
    reference = build_mtdnn(enc, FOUR_TASKS, num_layers=1)
    for (k, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
