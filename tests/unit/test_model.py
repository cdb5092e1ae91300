"""MT-DNN model: encoder loading/truncation, heads, SAN, save/load, prediction.

Tiny random BERT and RoBERTa checkpoints written to a temporary folder; no downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer, RobertaConfig, RobertaModel

from mtkd.data.collate import collate
from mtkd.errors import MtkdError
from mtkd.model import (
    MTDNN,
    RankingHead,
    SANClassifier,
    build_mtdnn,
    load_encoder,
    load_mtdnn,
    non_embedding_parameters,
    num_parameters,
    pool,
    predict_texts,
    read_meta,
    save_mtdnn,
)
from mtkd.model.encoder import find_layers
from mtkd.padding import PAD_SCORE
from mtkd.tasks.spec import TaskSpec

_TEXT = ("the a an cat dog bird sat ran flew on in under mat tree house is was good bad great "
         "awful movie film plot actor who what where why yes no it this that and or not very "
         "really quite some")
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_TEXT.split(" ")]
SPECS = [
    TaskSpec("sent", "classification", labels=("neg", "pos")),
    TaskSpec("nli", "pair_classification", labels=("entail", "neutral", "contra")),
    TaskSpec("sts", "regression"),
    TaskSpec("qa", "ranking"),
]
SENTENCES = ["the cat sat on the mat", "a very good movie", "bad", "who ran under the tree and why"]
PAIRS = ["a cat is on a mat", "the film was great", "not good", "the dog ran"]
CANDIDATES = [["yes", "no", "it flew"], ["the bird"], ["a dog ran", "the house"], ["what"]]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 random BERT with a word-level vocab and its tokenizer."""
    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(path / "vocab.txt"))
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, vocab_size=len(WORDS), max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer random RoBERTa: one token type only (type_vocab_size=1), no tokenizer."""
    path = tmp_path_factory.mktemp("tiny-roberta")
    config = RobertaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                           intermediate_size=64, vocab_size=len(WORDS), type_vocab_size=1,
                           pad_token_id=0, max_position_embeddings=70)
    torch.manual_seed(1)
    RobertaModel(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer(bert_dir: Path) -> BertTokenizer:
    return BertTokenizer.from_pretrained(str(bert_dir))


def _batch(tokenizer: BertTokenizer, task: str) -> dict:
    """A collated batch of 4 examples for ``task`` (see SPECS)."""
    if task == "qa":
        rows = []
        for query, cands in zip(SENTENCES, CANDIDATES, strict=True):
            enc = tokenizer([query] * len(cands), cands)
            rows.append({"uid": query, "input_ids": enc["input_ids"],
                         "token_type_ids": enc["token_type_ids"]})
    else:
        enc = tokenizer(SENTENCES, PAIRS if task in ("nli", "sts") else None)
        rows = [{"uid": s, "input_ids": i, "token_type_ids": t}
                for s, i, t in zip(SENTENCES, enc["input_ids"], enc["token_type_ids"],
                                   strict=True)]
    return collate(rows, pad_id=0)


# ------------------------------------------------------------------------------ encoder


def test_load_encoder_sdpa_dropout_and_no_pooler(bert_dir: Path) -> None:
    encoder = load_encoder(bert_dir, dropout=0.3)
    assert encoder.config._attn_implementation == "sdpa"
    assert encoder.config.hidden_dropout_prob == encoder.config.attention_probs_dropout_prob == 0.3
    assert encoder.pooler is None and encoder.training
    assert next(encoder.parameters()).dtype == torch.float32


def test_truncation_keeps_first_layers(bert_dir: Path) -> None:
    full, cut = load_encoder(bert_dir), load_encoder(bert_dir, num_layers=1)
    assert cut.config.num_hidden_layers == 1 and len(find_layers(cut)[2]) == 1
    assert num_parameters(cut) < num_parameters(full)
    full_state = full.state_dict()
    for key, value in cut.state_dict().items():
        assert torch.equal(value, full_state[key]), key
    assert any(k.startswith("encoder.layer.1.") for k in full_state)
    assert not any(k.startswith("encoder.layer.1.") for k in cut.state_dict())


@pytest.mark.parametrize("layers", [0, 3])
def test_truncation_out_of_range(bert_dir: Path, layers: int) -> None:
    with pytest.raises(MtkdError, match=r"cannot keep \d layers of a 2-layer"):
        load_encoder(bert_dir, num_layers=layers)


def test_encoder_errors(tmp_path: Path) -> None:
    with pytest.raises(MtkdError, match=r"no config\.json"):
        load_encoder(tmp_path)
    with pytest.raises(MtkdError, match="cannot find the layer list"):
        find_layers(torch.nn.Linear(2, 2))


def test_roberta_like_load_truncate_and_token_types(roberta_dir: Path) -> None:
    model = build_mtdnn(roberta_dir, SPECS[:2], num_layers=2)
    assert model.encoder.config.num_hidden_layers == 2 and not model.uses_token_types
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = (ids != 0).long()
    types = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])  # type 1 has no embedding
    with torch.no_grad():
        assert torch.equal(model("nli", ids, mask, types), model("nli", ids, mask))


@pytest.mark.parametrize("arch", ["deberta-v2", "electra", "distilbert"])
def test_other_architectures(tmp_path: Path, arch: str) -> None:
    """Load (eager fallback where SDPA is missing), truncate, set dropout, run."""
    import transformers

    size = {"vocab_size": len(WORDS), "max_position_embeddings": 64}
    config = {
        "deberta-v2": lambda: transformers.DebertaV2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"], **size),
        "electra": lambda: transformers.ElectraConfig(
            embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, **size),
        "distilbert": lambda: transformers.DistilBertConfig(
            dim=32, n_layers=2, n_heads=2, hidden_dim=64, **size),
    }[arch]()
    transformers.AutoModel.from_config(config).save_pretrained(str(tmp_path))
    model = build_mtdnn(tmp_path, SPECS, num_layers=1, dropout=0.2, san=True)
    assert model.encoder.config.num_hidden_layers == 1 and len(find_layers(model.encoder)[2]) == 1
    assert model.uses_token_types is (arch == "electra")
    ids = torch.tensor([[2, 5, 6, 3, 7, 3], [2, 8, 3, 9, 3, 0]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]])
    for task, shape in (("nli", (2, 3)), ("sts", (2,))):
        assert model(task, ids, (ids != 0).long(), types).shape == shape


def test_pool_cls_and_mean() -> None:
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.allclose(pool(hidden, mask, "mean"), torch.tensor([[1.0, 2.0], [8.0, 9.0]]))
    with pytest.raises(MtkdError, match="unknown pooling"):
        pool(hidden, mask, "max")


def test_pooling_changes_outputs(bert_dir: Path, tokenizer: BertTokenizer) -> None:
    batch = _batch(tokenizer, "sent")
    cls, mean = (build_mtdnn(bert_dir, SPECS, pooling=p).eval() for p in ("cls", "mean"))
    with torch.no_grad():
        assert not torch.allclose(cls.forward_batch("sent", batch),
                                  mean.forward_batch("sent", batch))


# -------------------------------------------------------------------------------- heads


@pytest.mark.parametrize("san", [False, True])
def test_head_shapes(bert_dir: Path, tokenizer: BertTokenizer, san: bool) -> None:
    model = build_mtdnn(bert_dir, SPECS, san=san).eval()
    assert isinstance(model.heads["nli"], SANClassifier) is san
    assert isinstance(model.heads["qa"], RankingHead)
    with torch.no_grad():
        assert model.forward_batch("sent", _batch(tokenizer, "sent")).shape == (4, 2)
        nli = model.forward_batch("nli", _batch(tokenizer, "nli"))
        assert nli.shape == (4, 3)
        assert model.forward_batch("sts", _batch(tokenizer, "sts")).shape == (4,)
    if san:  # log-probabilities
        assert torch.allclose(nli.exp().sum(-1), torch.ones(4), atol=1e-5)
    with pytest.raises(MtkdError, match="no task 'nope'"):
        model.forward_batch("nope", _batch(tokenizer, "sent"))


def test_ranking_masks_padded_candidates(bert_dir: Path, tokenizer: BertTokenizer) -> None:
    model = build_mtdnn(bert_dir, SPECS).eval()
    batch = _batch(tokenizer, "qa")
    assert batch["input_ids"].shape[:2] == (4, 3)
    with torch.no_grad():
        scores = model.forward_batch("qa", batch)
        alone = model.forward_batch("qa", _single(batch, 1))  # row with 1 candidate
    assert scores.shape == (4, 3)
    pad = ~batch["candidate_mask"]
    assert torch.all(scores[pad] == PAD_SCORE)
    assert torch.isfinite(scores).all() and torch.all(scores[~pad] > -1e6)
    assert torch.allclose(scores[1, :1], alone[0], atol=1e-6)  # padding changes nothing
    all_masked = scores.masked_fill(torch.ones_like(pad), PAD_SCORE)
    assert not torch.softmax(all_masked, -1).isnan().any()
    # The head also accepts every slot's pooled vector ([B*K, H]).
    head = model.heads["qa"]
    pooled = torch.randn(12, 32)
    real = batch["candidate_mask"]
    assert torch.allclose(head(pooled, real), head(pooled[real.flatten()], real), atol=1e-6)


def _single(batch: dict, i: int) -> dict:
    k = int(batch["candidate_mask"][i].sum())
    return {key: batch[key][i : i + 1, :k] for key in
            ("input_ids", "attention_mask", "token_type_ids", "candidate_mask")}


def test_gradients_flow_without_nan(bert_dir: Path, tokenizer: BertTokenizer) -> None:
    model = build_mtdnn(bert_dir, SPECS, san=True)
    loss = sum(model.forward_batch(t, _batch(tokenizer, t)).float().pow(2).mean()
               for t in ("sent", "nli", "sts"))
    scores = model.forward_batch("qa", _batch(tokenizer, "qa"))
    loss = loss + torch.nn.functional.cross_entropy(scores, torch.zeros(4, dtype=torch.long))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_san_step_dropout() -> None:
    torch.manual_seed(0)
    san = SANClassifier(16, 3, num_steps=5, step_dropout=0.5, dropout=0.0)
    memory, mask = torch.randn(6, 7, 16), torch.ones(6, 7, dtype=torch.bool)
    mask[0, 4:] = False
    train = [san(memory, mask) for _ in range(4)]
    assert train[0].shape == (6, 3)
    assert any(not torch.allclose(train[0], t) for t in train[1:])  # steps dropped at random
    san.eval()
    assert torch.equal(san(memory, mask), san(memory, mask))
    assert torch.allclose(san(memory, mask).exp().sum(-1), torch.ones(6), atol=1e-5)
    san.train()
    san.step_dropout = 0.0  # no step dropout, no dropout: train equals eval
    ref = san(memory, mask)
    san.eval()
    assert torch.allclose(ref, san(memory, mask))
    memory2 = memory.clone()
    memory2[0, 4:] = 100.0  # masked memory slots are ignored
    assert torch.allclose(san(memory2, mask)[0], san(memory, mask)[0], atol=1e-6)


def test_head_init_reproducible(bert_dir: Path) -> None:
    def heads(seed: int, specs: list[TaskSpec]) -> dict[str, torch.Tensor]:
        return build_mtdnn(bert_dir, specs, seed=seed, san=True).heads.state_dict()

    a, b, c = heads(7, SPECS), heads(7, SPECS), heads(8, SPECS)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    subset = heads(7, [SPECS[3], SPECS[1]])  # other tasks, other order: same init per task
    assert all(torch.equal(subset[k], a[k]) for k in subset)


def test_parameter_counts(bert_dir: Path) -> None:
    model = build_mtdnn(bert_dir, SPECS)
    embedding = sum(p.numel() for p in model.encoder.embeddings.parameters())
    total = num_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    assert non_embedding_parameters(model) == total - embedding
    assert non_embedding_parameters(model.encoder) == num_parameters(model.encoder) - embedding
    model.encoder.embeddings.requires_grad_(False)
    assert num_parameters(model, trainable_only=True) == total - embedding


def test_hidden_states_for_distillation(bert_dir: Path, tokenizer: BertTokenizer) -> None:
    model = build_mtdnn(bert_dir, SPECS).eval()
    batch = _batch(tokenizer, "qa")
    keys = ("input_ids", "attention_mask", "token_type_ids", "candidate_mask")
    with torch.no_grad():
        out, hidden = model.forward_with_hidden("qa", *(batch[k] for k in keys))
        assert torch.equal(out, model.forward_batch("qa", batch))
    n = int(batch["candidate_mask"].sum())
    assert len(hidden) == 3 and all(h.shape == (n, batch["input_ids"].shape[2], 32)
                                    for h in hidden)


# ------------------------------------------------------------------------------ save/load


@pytest.mark.parametrize("san", [False, True])
def test_save_load_round_trip(bert_dir: Path, tokenizer: BertTokenizer, tmp_path: Path,
                              san: bool) -> None:
    model = build_mtdnn(bert_dir, SPECS, num_layers=1, san=san, pooling="mean", seed=3)
    out = save_mtdnn(model, tokenizer, tmp_path / "model", extra={"stage": "student"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left
    loaded, tok = load_mtdnn(out)
    assert not loaded.training and loaded.options == model.options
    assert loaded.encoder.config.num_hidden_layers == 1
    model.eval()
    with torch.no_grad():
        for task in ("sent", "nli", "sts", "qa"):
            batch = _batch(tokenizer, task)
            assert torch.allclose(model.forward_batch(task, batch),
                                  loaded.forward_batch(task, batch), atol=1e-6), task
    assert tok("the cat")["input_ids"] == tokenizer("the cat")["input_ids"]
    meta = json.loads((out / "mtdnn.json").read_text())
    assert [TaskSpec.from_json(t) for t in meta["tasks"]] == SPECS
    assert meta["extra"] == {"stage": "student"} and meta["options"]["san"] is san
    assert meta["num_layers"] == 1 and read_meta(out)["specs"] == SPECS
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))


def test_save_replaces_existing(bert_dir: Path, tokenizer: BertTokenizer, tmp_path: Path) -> None:
    save_mtdnn(build_mtdnn(bert_dir, SPECS), tokenizer, tmp_path / "m")
    save_mtdnn(build_mtdnn(bert_dir, SPECS[:1]), tokenizer, tmp_path / "m")
    assert list(load_mtdnn(tmp_path / "m")[0].specs) == ["sent"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_load_errors_name_the_file(bert_dir: Path, tokenizer: BertTokenizer,
                                   tmp_path: Path) -> None:
    out = save_mtdnn(build_mtdnn(bert_dir, SPECS), tokenizer, tmp_path / "m")
    heads = out / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:50])
    with pytest.raises(MtkdError, match=r"heads\.safetensors is corrupt"):
        load_mtdnn(out)
    heads.unlink()
    with pytest.raises(MtkdError, match=r"heads\.safetensors is missing"):
        load_mtdnn(out)
    meta = out / "mtdnn.json"
    meta.write_text("{not json")
    with pytest.raises(MtkdError, match=r"mtdnn\.json is not valid JSON"):
        load_mtdnn(out)
    meta.unlink()
    with pytest.raises(MtkdError, match=r"mtdnn\.json is missing"):
        load_mtdnn(out)


def test_load_rejects_heads_of_other_tasks(bert_dir: Path, tokenizer: BertTokenizer,
                                           tmp_path: Path) -> None:
    a = save_mtdnn(build_mtdnn(bert_dir, SPECS), tokenizer, tmp_path / "a")
    b = save_mtdnn(build_mtdnn(bert_dir, SPECS[:2]), tokenizer, tmp_path / "b")
    (a / "heads.safetensors").write_bytes((b / "heads.safetensors").read_bytes())
    with pytest.raises(MtkdError, match="does not match the tasks"):
        load_mtdnn(a)
    weights = b / "encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(MtkdError, match="corrupt weights file"):
        load_mtdnn(b)
    weights.unlink()
    with pytest.raises(MtkdError, match=r"no \*\.safetensors weights"):
        load_mtdnn(b)


# ------------------------------------------------------------------------------- predict


def test_predict_texts_restores_order(bert_dir: Path, tokenizer: BertTokenizer) -> None:
    model = build_mtdnn(bert_dir, SPECS, san=True)
    model.train()
    logits = predict_texts(model, tokenizer, "sent", SENTENCES, batch_size=3)
    assert model.training  # mode restored
    single = np.concatenate([predict_texts(model, tokenizer, "sent", [s]) for s in SENTENCES])
    assert logits.shape == (4, 2) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, single, atol=1e-5)
    probs = predict_texts(model, tokenizer, "nli", SENTENCES, PAIRS, probs=True, batch_size=2)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert predict_texts(model, tokenizer, "sts", SENTENCES, PAIRS).shape == (4,)
    ranks = predict_texts(model, tokenizer, "qa", SENTENCES, CANDIDATES, batch_size=2)
    assert ranks.shape == (4, 3) and (ranks[1, 1:] == PAD_SCORE).all()
    np.testing.assert_allclose(ranks[1, :1], predict_texts(model, tokenizer, "qa", [SENTENCES[1]],
                                                           [CANDIDATES[1]])[0], atol=1e-5)
    with pytest.raises(MtkdError, match="give text_pairs"):
        predict_texts(model, tokenizer, "nli", SENTENCES)
    with pytest.raises(MtkdError, match="candidate texts"):
        predict_texts(model, tokenizer, "qa", SENTENCES, PAIRS)


def test_mtdnn_validates_heads(bert_dir: Path) -> None:
    model = build_mtdnn(bert_dir, SPECS[:1])
    with pytest.raises(MtkdError, match="match the heads"):
        MTDNN(model.encoder, model.heads, SPECS[:2], model.options)
    with pytest.raises(MtkdError, match="without dots"):
        build_mtdnn(bert_dir, [TaskSpec("a.b", "regression")])
