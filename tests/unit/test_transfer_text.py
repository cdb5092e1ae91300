"""Unlabelled transfer text (issue 18 item 4, task transfer): validation, loading,
tokenization with the student's tokenizer, lineage, the sampler mixing its batches with
the tasks', and the student training on the representation loss alone for them."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import FOUR_TASKS, make_tiny_bert, synthetic_task

from mtkd.config import TransferTextConfig, config_from_dict
from mtkd.data.transfer import (
    TRANSFER,
    TRANSFER_DIR,
    add_transfer,
    load_transfer,
    load_transfer_texts,
    prepare_transfer,
    transfer_lineage,
)
from mtkd.errors import ConfigError, DataError
from mtkd.storage import Storage

TEXTS = ["the film was very good", "  the   film was\tvery good ", "", "a plot",
         "what was the plot", "who is poor", "the movie is not fine", "bad bad bad",
         "the film was very good the plot was not bad", "where is the plot"]


def experiment(**kd: object) -> dict:
    return {"name": "x", "tasks": [{"name": "trec"}], "student": {"kd": kd}}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("transfer")
    return {"student": make_tiny_bert(root / "student", hidden=32, layers=2, seed=1),
            "teacher": make_tiny_bert(root / "teacher", hidden=64, layers=4, seed=2)}


def text_file(tmp_path: Path, lines: list[str], name: str = "texts.txt") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------ configuration


def test_transfer_text_needs_representation_distillation(tmp_path: Path) -> None:
    files = [text_file(tmp_path, TEXTS)]
    with pytest.raises(ConfigError) as err:
        config_from_dict(experiment(transfer_text={"files": files}))
    message = str(err.value)
    assert "student.kd.transfer_text" in message and "hidden_weight" in message
    assert "representation distillation" in message
    config = config_from_dict(experiment(hidden_weight=1.0, transfer_text={"files": files}))
    assert config.student.kd.transfer_text.enabled
    assert not config_from_dict(experiment()).student.kd.transfer_text.enabled


def _stage(name: str, **loss: float) -> dict:
    return {"name": name, "epochs": 1, "loss": loss}


# (stages, kd.hidden_weight, the key refused or None): with stages, every stage that can
# draw a transfer batch must train the representation term
STAGED = [
    ([_stage("rep", hidden=1.0), _stage("soft", hidden=0.5, soft=1.0)], 0.0, None),
    ([_stage("rep", hidden=1.0), _stage("soft", soft=1.0)], 0.0,
     "student.stages.1.loss.hidden"),
    ([_stage("soft", soft=1.0), _stage("hard", hard=1.0)], 0.0,
     "student.stages.0.loss.hidden"),
    ([], 0.0, "student.kd.transfer_text"),
    ([], 1.0, None),
]


@pytest.mark.parametrize(("stages", "hidden_weight", "refused"), STAGED)
def test_transfer_text_with_stages_needs_the_hidden_term_in_every_stage(
        tmp_path: Path, stages: list[dict], hidden_weight: float, refused: str | None) -> None:
    raw = experiment(hidden_weight=hidden_weight,
                     transfer_text={"files": [text_file(tmp_path, TEXTS)]})
    raw["student"]["stages"] = stages
    if refused is None:
        assert config_from_dict(raw).student.kd.transfer_text.enabled
        return
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    message = str(err.value)
    assert f"{refused}:" in message and "representation distillation" in message
    if stages:  # one problem per stage without the term, each naming its stage
        named = [line for line in message.splitlines() if "transfer_text is set" in line]
        assert [line.split(":")[0].strip(" -") for line in named] == [
            f"student.stages.{i}.loss.hidden" for i, s in enumerate(stages)
            if not s["loss"].get("hidden")]


def test_an_unknown_bundled_corpus_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(experiment(hidden_weight=1.0,
                                    transfer_text={"bundled": "rotten_tomatoes_plot"}))
    assert "student.kd.transfer_text.bundled" in str(err.value)
    assert "rotten_tomatoes_plots" in str(err.value)


def test_bundled_corpus_names_agree() -> None:
    from mtkd.config.schema import BUNDLED_TEXT_NAMES
    from mtkd.tasks.bundled import BUNDLED, BUNDLED_TEXTS

    assert set(BUNDLED_TEXT_NAMES) == set(BUNDLED_TEXTS)
    assert set(BUNDLED_TEXTS.values()) <= set(BUNDLED)


# ------------------------------------------------------------------ loading


def test_texts_are_normalized_deduplicated_sorted_and_capped(tmp_path: Path) -> None:
    config = TransferTextConfig(files=[text_file(tmp_path, TEXTS[:5]),
                                       text_file(tmp_path, [*TEXTS[5:], TEXTS[3]], "b.txt")])
    split, dropped = load_transfer_texts(config)
    distinct = sorted({" ".join(t.split()) for t in TEXTS if t.strip()})
    uids = {"transfer-" + hashlib.sha1(t.encode()).hexdigest()[:12]: t for t in distinct}
    assert split["uid"] == sorted(uids) and split["text"] == [uids[u] for u in sorted(uids)]
    assert dropped == {"empty": 1, "duplicates": 2, "over_max_examples": 0}
    assert set(split["text_pair"]) == {""} and set(split["label"]) == {-1}
    capped, dropped = load_transfer_texts(TransferTextConfig(files=config.files,
                                                             max_examples=3))
    assert capped["uid"] == sorted(uids)[:3] and dropped["over_max_examples"] == 5


def test_a_bad_file_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine text\nmore\nbroken \xff byte\n")
    with pytest.raises(DataError, match=r"bad\.txt: line 3 is not valid UTF-8.*fix"):
        load_transfer_texts(TransferTextConfig(files=[str(path)]))
    empty = text_file(tmp_path, ["", "  "], "empty.txt")
    with pytest.raises(DataError, match=r"no text found in .*empty\.txt"):
        load_transfer_texts(TransferTextConfig(files=[empty]))
    with pytest.raises(DataError, match=r"cannot read .*missing\.txt.*fix"):
        load_transfer_texts(TransferTextConfig(files=[str(tmp_path / "missing.txt")]))


# ------------------------------------------------------------------ prepare and lineage


def _prepared(tmp_path: Path, encoders: dict[str, Path], max_length: int = 8
              ) -> tuple[Storage, dict, object]:
    from mtkd.data.tokenize import load_tokenizer

    config = config_from_dict(experiment(hidden_weight=1.0, transfer_text={
        "files": [text_file(tmp_path, TEXTS)], "max_length": max_length}))
    loaded = load_transfer(config)
    store = Storage.from_uri(str(tmp_path / "exp"))
    tokenizer = load_tokenizer(encoders["student"])
    entry = prepare_transfer(loaded, store, tokenizer, "lin-1", seed=0)
    return store, entry, tokenizer


def test_prepare_tokenizes_with_the_students_tokenizer_and_reuses(
        tmp_path: Path, encoders: dict[str, Path]) -> None:
    from mtkd.data.prepared import read_prepared

    store, entry, tokenizer = _prepared(tmp_path, encoders)
    table = read_prepared(store, TRANSFER, "train")
    split, _ = load_transfer_texts(TransferTextConfig(files=[str(tmp_path / "texts.txt")]))
    assert table["uid"] == split["uid"] and entry["rows"] == len(split) == 8
    for text, ids in zip(split["text"], table["input_ids"], strict=True):
        assert ids == tokenizer(text, truncation=True, max_length=8)["input_ids"]
    assert max(table["length"]) == 8  # the longest text (12 tokens) is cut at max_length
    parquet = tmp_path / "exp" / TRANSFER_DIR / "train.parquet"
    written = parquet.stat().st_mtime_ns
    loaded = load_transfer(config_from_dict(experiment(hidden_weight=1.0, transfer_text={
        "files": [str(tmp_path / "texts.txt")], "max_length": 8})))
    again = prepare_transfer(loaded, store, tokenizer, "lin-1", seed=0)
    assert again == entry and parquet.stat().st_mtime_ns == written  # reused
    other = prepare_transfer(loaded, store, tokenizer, "lin-2", seed=0)
    assert other["lineage"] == "lin-2" and parquet.stat().st_mtime_ns != written


def test_lineage_follows_settings_tokenizer_and_content(tmp_path: Path) -> None:
    from mtkd.experiment import stage_values

    files = [text_file(tmp_path, TEXTS)]
    config = config_from_dict(experiment(hidden_weight=1.0, transfer_text={"files": files}))
    base = transfer_lineage(config, "tok", {"train": "c"})
    assert transfer_lineage(config, "tok2", {"train": "c"}) != base
    assert transfer_lineage(config, "tok", {"train": "c2"}) != base
    longer = config_from_dict(experiment(hidden_weight=1.0, transfer_text={
        "files": files, "max_length": 64}))
    assert transfer_lineage(longer, "tok", {"train": "c"}) != base
    # off (the default): no transfer key enters prepare's manifest lineage, as before
    plain = stage_values("prepare", config_from_dict(experiment()))
    assert not any("transfer_text" in key for key in plain)
    assert any("transfer_text" in key for key in stage_values("prepare", config))


def test_student_run_reads_the_transfer_text_but_the_baseline_does_not(tmp_path: Path
                                                                       ) -> None:
    from mtkd.student.stage import StudentRun, run_lineage

    files = [text_file(tmp_path, TEXTS)]
    data, soft = {"trec": "d"}, {"trec": "s"}
    on = config_from_dict(experiment(hidden_weight=1.0, transfer_text={"files": files}))
    off = config_from_dict(experiment(hidden_weight=1.0))
    kd, baseline = StudentRun("student", 0, True), StudentRun("baseline", 0, False)
    assert run_lineage(on, kd, data, soft, "h", "t1") != run_lineage(off, kd, data, soft, "h")
    assert run_lineage(on, kd, data, soft, "h", "t1") != run_lineage(on, kd, data, soft, "h",
                                                                     "t2")
    assert run_lineage(on, baseline, data, None, None, "t1") == run_lineage(
        off, baseline, data, None)


def test_the_student_refuses_transfer_text_prepare_did_not_write(tmp_path: Path) -> None:
    from mtkd.training.recipe import PreparedTasks

    config = config_from_dict(experiment(hidden_weight=1.0, transfer_text={
        "files": [text_file(tmp_path, TEXTS)]}))
    with pytest.raises(DataError, match=r"student\.kd\.transfer_text.*run prepare again"):
        add_transfer(PreparedTasks({}, {}, {}), Storage.from_uri(str(tmp_path / "e")), config)


# ------------------------------------------------------------------ training


def test_sampler_mixes_transfer_batches_with_the_tasks(tmp_path: Path,
                                                       encoders: dict[str, Path]) -> None:
    from mtkd.config import TrainingConfig
    from mtkd.training.recipe import PreparedTasks, make_sampler

    store, _, _ = _prepared(tmp_path, encoders)
    config = config_from_dict(experiment(hidden_weight=1.0, transfer_text={
        "files": [str(tmp_path / "texts.txt")]}))
    data = PreparedTasks({"sent": FOUR_TASKS[0]}, {"sent": synthetic_task(40, 0)},
                         {"sent": synthetic_task(8, 1)})
    add_transfer(data, store, config)
    assert set(data.specs) == set(data.train) == {"sent", TRANSFER} and set(data.dev) == {"sent"}
    sampler = make_sampler(data.train, config, TrainingConfig(batch_size=2), seed=0)
    batches = sampler.batches(0)
    tasks = [b.task for b in batches]
    assert tasks.count(TRANSFER) == math.ceil(8 / 2) and tasks.count("sent") == 20
    positions = [i for i, t in enumerate(tasks) if t == TRANSFER]
    assert positions[-1] - positions[0] > len(positions)  # interleaved, not one block
    covered = sorted(i for b in batches if b.task == TRANSFER for i in b.indices)
    assert covered == list(range(8))  # every transfer text once per epoch


def test_a_transfer_batch_is_the_representation_loss_alone(encoders: dict[str, Path]
                                                           ) -> None:
    """No head runs; the loss is weight x the masked MSE through the projection,
    recomputed here in numpy; the heads get no gradient."""
    from mtkd.model.mtdnn import build_mtdnn
    from mtkd.student.hidden import PROJECTION, RepresentationDistillation

    torch.manual_seed(0)
    student = build_mtdnn(encoders["student"], FOUR_TASKS[:1], dropout=0.0)
    teacher = build_mtdnn(encoders["teacher"], FOUR_TASKS[:1], dropout=0.0)
    model = RepresentationDistillation(student, teacher, 2.0)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 25, (4, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[:2, 6:] = 0
    out = model(TRANSFER, ids, mask, torch.zeros_like(ids))
    assert out.outputs is None
    out.aux_loss.backward()
    assert all(p.grad is None for p in model.heads.parameters())
    assert model.encoder.embeddings.word_embeddings.weight.grad is not None
    with torch.no_grad():
        s_states = student.encoder(input_ids=ids, attention_mask=mask,
                                   token_type_ids=torch.zeros_like(ids),
                                   output_hidden_states=True).hidden_states
        t_states = teacher.encoder(input_ids=ids, attention_mask=mask,
                                   token_type_ids=torch.zeros_like(ids),
                                   output_hidden_states=True).hidden_states
    proj = getattr(model, PROJECTION)
    w, b = proj.weight.detach().numpy(), proj.bias.detach().numpy()
    real = mask.numpy().astype(bool)
    per_layer = [(((s_states[s].numpy() @ w.T + b) - t_states[t].numpy())[real] ** 2).mean()
                 for s, t in [(1, 2), (2, 4)]]
    assert float(out.aux_loss.detach()) == pytest.approx(2.0 * float(np.mean(per_layer)),
                                                         rel=1e-5)


def test_the_loop_trains_transfer_batches_on_their_representation_loss(
        tmp_path: Path, encoders: dict[str, Path]) -> None:
    """Learning rate 0 (the model stays put): every step the loop logs is a batch of the
    sampler's epoch, and a transfer batch's loss is the wrapper's term on that batch."""
    from mtkd.config import KDConfig, TrainingConfig
    from mtkd.data.collate import collate
    from mtkd.model.mtdnn import build_mtdnn
    from mtkd.student.hidden import RepresentationDistillation
    from mtkd.training.backend import TorchBackend
    from mtkd.training.loop import LoopData, TrainingLoop
    from mtkd.training.recipe import PreparedTasks, make_sampler

    store, _, _ = _prepared(tmp_path, encoders)
    config = config_from_dict(experiment(hidden_weight=1.5, transfer_text={
        "files": [str(tmp_path / "texts.txt")]}))
    data = PreparedTasks({"sent": FOUR_TASKS[0]}, {"sent": synthetic_task(12, 0)}, {})
    add_transfer(data, store, config)
    training = TrainingConfig(batch_size=4, epochs=1, learning_rate=0.0, warmup_ratio=0.0,
                              dropout=0.0, precision="fp32")
    torch.manual_seed(0)
    model = RepresentationDistillation(
        build_mtdnn(encoders["student"], FOUR_TASKS[:1], dropout=0.0),
        build_mtdnn(encoders["teacher"], FOUR_TASKS[:1], dropout=0.0), 1.5)
    sampler = make_sampler(data.train, config, training, seed=0)
    loop = TrainingLoop(TorchBackend(model, training, len(sampler)),
                        LoopData(data.specs, data.train, data.dev), training,
                        sampler=sampler, kd=KDConfig(), record_steps=True)
    state = loop.run()
    batches = sampler.batches(0)
    assert state.step == len(batches) == 3 + 2
    model.train()
    for batch, (_, _, _, loss) in zip(batches, state.step_log, strict=True):
        if batch.task != TRANSFER:
            continue
        rows = [{"uid": u, "input_ids": i, "token_type_ids": t, "label": None}
                for u, i, t in zip(*(data.train[TRANSFER][c] for c in
                                     ("uid", "input_ids", "token_type_ids")), strict=True)]
        inputs = collate([rows[i] for i in batch.indices])
        with torch.no_grad():
            expected = model(TRANSFER, inputs["input_ids"], inputs["attention_mask"],
                             inputs["token_type_ids"]).aux_loss
        assert loss == pytest.approx(float(expected), rel=1e-5)
