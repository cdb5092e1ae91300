"""``mtkd export --encoder-only`` (issue 18 item 4, task transfer): the exported task-agnostic
encoder is a plain transformers encoder folder that AutoModel / AutoTokenizer load, with
the student encoder's hidden states, and that mtkd accepts as ``encoder.path``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def student_dir(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 1-layer student (the tiny encoder's first layer, weights moved off their
    initialisation) with two tasks, in an experiment layout next to no record."""
    from tiny import FOUR_TASKS
    from transformers import AutoTokenizer

    from mtkd.model.io import save_mtdnn
    from mtkd.model.mtdnn import build_mtdnn

    torch.manual_seed(3)
    model = build_mtdnn(tiny_encoder_dir, FOUR_TASKS[:2], num_layers=1)
    with torch.no_grad():  # a "trained" student: not the pretrained encoder's weights
        for param in model.encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    out = tmp_path_factory.mktemp("exp") / "student" / "student" / "final"
    save_mtdnn(model, AutoTokenizer.from_pretrained(str(tiny_encoder_dir)), out)
    return out


def test_exported_encoder_loads_with_automodel_and_gives_the_students_states(
        student_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    from mtkd.export_encoder import export_encoder
    from mtkd.model.io import load_mtdnn

    exported = export_encoder(student_dir, tmp_path / "enc")
    files = {p.name for p in (tmp_path / "enc").iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json"} <= files
    assert not {"heads.safetensors", "mtdnn.json"} & files  # nothing of mtkd's format
    assert not list((tmp_path / "enc").glob("*.bin"))  # safetensors only
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["num_hidden_layers"] == 1

    model, _ = load_mtdnn(student_dir)
    loaded = AutoModel.from_pretrained(str(tmp_path / "enc"), add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "enc"))
    batch = tokenizer(["the film was very good", "a", "not bad at all"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        got = loaded(**batch, output_hidden_states=True).hidden_states
        want = model.encoder.eval()(**batch, output_hidden_states=True).hidden_states
    assert len(got) == len(want) == 2  # embeddings + the one layer
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert exported.max_diff <= 1e-4


def test_exported_encoder_is_an_encoder_path(student_dir: Path, tmp_path: Path,
                                             tiny_encoder_dir: Path) -> None:
    """mtkd builds a new MT-DNN on it (encoder.path), strictly (no weight missing), with
    the student's weights and not the pretrained encoder's."""
    from tiny import FOUR_TASKS

    from mtkd.export_encoder import export_encoder
    from mtkd.model.io import load_mtdnn
    from mtkd.model.mtdnn import build_mtdnn
    from mtkd.pretrained import resolve_encoder_dir

    export_encoder(student_dir, tmp_path / "enc")
    folder = resolve_encoder_dir(str(tmp_path / "enc"))
    fresh = build_mtdnn(folder, [FOUR_TASKS[2]])  # a target task the student never saw
    student, _ = load_mtdnn(student_dir)
    for name, value in student.encoder.state_dict().items():
        assert torch.equal(fresh.encoder.state_dict()[name], value), name
    original = build_mtdnn(tiny_encoder_dir, [FOUR_TASKS[2]], num_layers=1)
    word = "embeddings.word_embeddings.weight"
    assert not torch.equal(original.encoder.state_dict()[word], fresh.encoder.state_dict()[word])


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from mtkd.cli import main

    code = main(["-q", "export", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_encoder_only_and_its_mistakes(student_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "enc"
    code, text = _cli(["--encoder-only", str(student_dir), str(out)], capsys)
    assert code == 0 and "encoder.path" in text and (out / "model.safetensors").is_file()
    code, text = _cli(["--encoder-only", str(student_dir), str(out)], capsys)
    assert code == 2 and "exists and is not empty" in text and "--overwrite" in text
    code, _ = _cli(["--encoder-only", "--overwrite", str(student_dir), str(out)], capsys)
    assert code == 0
    code, text = _cli(["--encoder-only", "--task", "sent", str(student_dir),
                       str(tmp_path / "x")], capsys)
    assert code == 2 and "--task does not apply to --encoder-only" in text
    code, text = _cli(["--encoder-only", "--onnx", str(student_dir), str(tmp_path / "y")],
                      capsys)
    assert code == 2 and "--onnx" in text
    code, text = _cli(["--encoder-only", str(tmp_path / "nothing"), str(tmp_path / "z")],
                      capsys)
    assert code == 2 and "nothing" in text
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_model_card_names_the_source_and_tasks(student_dir: Path, tmp_path: Path) -> None:
    from mtkd.export_encoder import export_encoder

    export_encoder(student_dir, tmp_path / "enc")
    card = (tmp_path / "enc" / "README.md").read_text()
    assert str(student_dir) in card and "`sent` (classification)" in card
    assert "1 layers" in card and "add_pooling_layer=False" in card
