"""``mtkd export``: per-task Hugging Face folders that load without mtkd and give mtkd's
outputs, ONNX files that onnxruntime runs to the same numbers, and clear exit-2 errors.

Three tiny models (mean pooling with linear heads, cls pooling with linear heads, cls
pooling with SAN heads), each with a classification, a pair classification, a regression
and a ranking task, are exported once per module; one subprocess (transformers and torch
only, with ``import mtkd`` blocked) loads every folder, so the module stays fast.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mtkd.tasks.spec import TaskSpec

REPO = Path(__file__).resolve().parents[2]
WORDS = ["good", "bad", "fine", "awful", "great", "poor", "film", "movie", "plot", "the", "a",
         "is", "was", "very", "not"]
LABELS = ("neg", "pos")
NLI_LABELS = ("entail", "neutral", "contra")
SPECS = [TaskSpec("sent", "classification", LABELS, max_length=16),
         TaskSpec("sim", "regression", max_length=16),
         TaskSpec("nli", "pair_classification", NLI_LABELS, max_length=16),
         TaskSpec("qa", "ranking", max_length=16)]
VARIANTS = {"mean": {"pooling": "mean"}, "cls": {"pooling": "cls"},
            "san": {"pooling": "cls", "san": True}}


def sentence(i: int, salt: int) -> str:
    n = 2 + (i * 7 + salt) % 13
    return " ".join(WORDS[(i * 3 + k * 5 + salt) % len(WORDS)] for k in range(n))


TEXTS = [sentence(i, 0) for i in range(6)] + [" ".join(WORDS * 2)]  # the last is truncated
PAIRS = [sentence(i, 1) for i in range(6)] + [" ".join(reversed(WORDS * 2))]
QUERIES = ["what film", "who is it", "the plot"]
CANDIDATES = [["good film", "bad"], ["a", "is not", "very good movie"], ["plot"]]


@pytest.fixture(scope="module")
def models(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved models; the mean one sits in an experiment layout with its student.json and
    data records."""
    from transformers import AutoTokenizer

    from mtkd.model.io import save_mtdnn
    from mtkd.model.mtdnn import build_mtdnn
    from mtkd.records import StudentRecord, TaskRecord, folder_fingerprint
    from mtkd.student.predictions import run_content

    root = tmp_path_factory.mktemp("export-models")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    paths = {}
    for name, options in VARIANTS.items():
        model = build_mtdnn(tiny_encoder_dir, SPECS, seed=5, **options)
        folder = (root / "exp" / "student" / "student" / "final" if name == "mean"
                  else root / name)
        paths[name] = save_mtdnn(model, tokenizer, folder, extra={"run": {"name": name}})
    exp = root / "exp"
    # as the student stage writes it: the run's content covers the model folder and the
    # per-example predictions stored beside it
    predictions = {"dev": "d" * 64, "test": "e" * 64}
    record = StudentRecord(lineage="abc123", predictions=predictions,
                           content=run_content(folder_fingerprint(paths["mean"]), predictions),
                           name="student", seed=0, distill=True,
                           metrics={"sent": {"accuracy": 87.25, "f1": 86.5}},
                           test_metrics={}, average=87.0)
    (exp / "student" / "student" / "student.json").write_text(json.dumps(record.to_json()))
    (exp / "data" / "sent").mkdir(parents=True)
    task_record = TaskRecord(lineage="t1", content="c1", spec=SPECS[0].to_json(),
                             splits={"train": {"rows": 480}, "dev": {"rows": 60}})
    (exp / "data" / "sent" / "meta.json").write_text(json.dumps(task_record.to_json()))
    return paths


@pytest.fixture(scope="module")
def exported(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    from mtkd.export import export_model

    root = tmp_path_factory.mktemp("exported")
    out = {}
    for name, model_dir in models.items():
        results = export_model(model_dir, root / name, onnx=True)
        assert [r.task for r in results] == [s.name for s in SPECS]
        assert all(r.onnx and r.max_diff < 1e-5 for r in results)
        out[name] = root / name
    return out


LOADER = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mtkd" or name.startswith("mtkd."):
            raise ImportError("mtkd must not be imported by an exported model")

sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

job = json.load(sys.stdin)
results = {}
for key, folder, texts, pairs in job:
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    batch = tokenizer(texts, pairs, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    clf = pipeline("text-classification", model=folder, trust_remote_code=True)
    inputs = texts if pairs is None else [{"text": a, "text_pair": b}
                                          for a, b in zip(texts, pairs)]
    piped = clf(inputs, truncation=True, top_k=None)
    results[key] = {"logits": logits.tolist(), "pipeline": piped,
                    "training": model.training, "config": model.config.to_dict()}
assert "mtkd" not in sys.modules
print(json.dumps(results))
"""


def _inputs(task: str) -> tuple[list[str], list[str] | None]:
    if task == "qa":
        texts = [q for q, cands in zip(QUERIES, CANDIDATES, strict=True) for _ in cands]
        return texts, [c for cands in CANDIDATES for c in cands]
    if task in ("nli", "sim"):  # regression given pairs: mtkd encodes them as pairs
        return TEXTS, PAIRS
    return TEXTS, None


@pytest.fixture(scope="module")
def loaded(exported: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    """Every exported folder loaded and run in one subprocess that cannot import mtkd."""
    job = [[f"{variant}/{spec.name}", str(folder / spec.name), *_inputs(spec.name)]
           for variant, folder in exported.items() for spec in SPECS]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path_factory.mktemp("hf-modules")),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", LOADER], input=json.dumps(job), text=True,
                          capture_output=True, env=env, cwd=tmp_path_factory.mktemp("cwd"),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mtkd_outputs(model_dir: Path, task: str) -> np.ndarray:
    from mtkd.model.io import load_mtdnn
    from mtkd.model.predict import predict_texts

    model, tokenizer = load_mtdnn(model_dir)
    if task == "qa":
        scores = predict_texts(model, tokenizer, task, QUERIES, CANDIDATES)
        return np.concatenate([row[: len(c)] for row, c in zip(scores, CANDIDATES,
                                                                strict=True)])
    texts, pairs = _inputs(task)
    return predict_texts(model, tokenizer, task, texts, pairs)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("task", [s.name for s in SPECS])
def test_exported_folder_matches_mtkd_without_mtkd(loaded: dict[str, Any],
                                                   models: dict[str, Path], variant: str,
                                                   task: str) -> None:
    result = loaded[f"{variant}/{task}"]
    assert result["training"] is False
    logits = np.asarray(result["logits"])
    expected = _mtkd_outputs(models[variant], task)
    if task in ("sim", "qa"):  # one score per text (pair)
        assert logits.shape == (len(expected), 1)
        np.testing.assert_allclose(logits[:, 0], expected, atol=1e-4)
        piped = [row[0]["score"] for row in result["pipeline"]]
        np.testing.assert_allclose(piped, expected, atol=1e-4)  # raw score, no sigmoid
        return
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    labels = LABELS if task == "sent" else NLI_LABELS
    probs = _softmax(expected.astype(np.float64))
    for row, p in zip(result["pipeline"], probs, strict=True):
        by_label = {item["label"]: item["score"] for item in row}
        assert set(by_label) == set(labels)
        np.testing.assert_allclose([by_label[x] for x in labels], p, atol=1e-4)


def test_config_labels_and_code(exported: dict[str, Path], loaded: dict[str, Any]) -> None:
    for variant, folder in exported.items():
        for spec in SPECS:
            config = json.loads((folder / spec.name / "config.json").read_text())
            assert config["auto_map"] == {
                "AutoConfig": "configuration_mtkd.MtkdConfig",
                "AutoModelForSequenceClassification":
                    "modeling_mtkd.MtkdForSequenceClassification"}
            assert config["mtkd_task"] == spec.to_json()
            assert config["pooling"] == VARIANTS[variant]["pooling"]
            if spec.name in ("sent", "nli"):
                labels = list(spec.labels)
                assert config["problem_type"] == "single_label_classification"
                assert config["head"] == ("san" if variant == "san" else "linear")
            else:
                labels = ["score"]
                assert config["problem_type"] == "regression"
                assert config["head"] == "linear"
            assert config["id2label"] == {str(i): x for i, x in enumerate(labels)}
            assert config["label2id"] == {x: i for i, x in enumerate(labels)}
            assert loaded[f"{variant}/{spec.name}"]["config"]["id2label"] == {
                str(i): x for i, x in enumerate(labels)}
            assert (folder / spec.name / "model.safetensors").is_file()
            assert not list((folder / spec.name).glob("*.bin"))
            tok = json.loads((folder / spec.name / "tokenizer_config.json").read_text())
            assert tok["model_max_length"] == spec.max_length
            for code in ("configuration_mtkd.py", "modeling_mtkd.py"):
                assert "mtkd." not in (folder / spec.name / code).read_text().replace(
                    "mtkd.py", "")


def test_onnx_matches_torch_and_mtkd(exported: dict[str, Path], models: dict[str, Path]
                                     ) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    from mtkd.export import mtkd_logits
    from mtkd.hf.modeling_mtkd import MtkdForSequenceClassification
    from mtkd.model.io import load_mtdnn

    rng = np.random.default_rng(0)
    for variant, folder in exported.items():
        model, _ = load_mtdnn(models[variant])
        for spec in SPECS:
            path = folder / spec.name / "model.onnx"
            graph = onnx.load(str(path)).graph
            names = [i.name for i in graph.input]
            assert names == ["input_ids", "attention_mask", "token_type_ids"]  # BERT: segments
            dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                    for i in graph.input]
            assert dims == [["batch", "sequence"]] * 3
            assert [o.name for o in graph.output] == ["logits"]
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            hf = MtkdForSequenceClassification.from_pretrained(str(folder / spec.name)).eval()
            for batch, length in ((1, 3), (4, 9), (2, 16)):
                ids = rng.integers(5, 25, size=(batch, length))
                ids[:, 0], mask = 2, np.ones((batch, length), dtype=np.int64)
                mask[0, max(2, length - 3):] = 0  # padding in the first row
                types = np.zeros_like(ids)
                types[:, length // 2:] = 1  # a second segment
                feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
                got = session.run(["logits"], feed)[0]
                tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
                with torch.no_grad():
                    torch_out = hf(**tensors).logits.numpy()
                np.testing.assert_allclose(got, torch_out, atol=1e-4)
                np.testing.assert_allclose(got, mtkd_logits(model, spec.name, tensors).numpy(),
                                           atol=1e-4)


def test_model_card_uses_the_records_and_says_what_is_unknown(exported: dict[str, Path]
                                                              ) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in exported["mean"].rglob("*"):  # the weights too: readable like any new file
        assert stat.S_IMODE(path.stat().st_mode) == (
            0o777 if path.is_dir() else 0o666) & ~umask, path
    card = (exported["mean"] / "sent" / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    assert "accuracy 87.25, f1 86.50" in card  # from student.json, which matches the model
    assert "test: unknown" in card
    assert "dev 60 rows, train 480 rows" in card  # from data/sent/meta.json
    assert "run lineage: `abc123`" in card
    assert "labels (head order): `neg`, `pos`" in card
    assert "pooling: mean" in card
    other = (exported["mean"] / "nli" / "README.md").read_text()
    assert "Unknown: the training data" in other  # no data/nli/meta.json
    bare = (exported["cls"] / "sent" / "README.md").read_text()
    assert "Unknown: no student.json or member.json next to the model" in bare
    assert "87.25" not in bare
    ranking = (exported["cls"] / "qa" / "README.md").read_text()
    assert "scorer, not a per-text classifier" in ranking
    assert "text_pair" in ranking


def test_a_record_of_other_content_is_not_used(models: dict[str, Path], tmp_path: Path) -> None:
    from mtkd.export import export_model

    record_path = models["mean"].parent / "student.json"
    original = record_path.read_text()
    record = json.loads(original)
    record["content"] = "0" * 16
    record_path.write_text(json.dumps(record))
    try:
        export_model(models["mean"], tmp_path / "out", ["sent"], onnx=False)
    finally:
        record_path.write_text(original)
    card = (tmp_path / "out" / "sent" / "README.md").read_text()
    assert "describes other content" in card and "87.25" not in card
    assert not (tmp_path / "out" / "sent" / "model.onnx").exists()


# ------------------------------------------------------------------ CLI


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from mtkd.cli import main

    code = main(["-q", "export", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("case", "names"), [
    ("missing_model", ["no-such-model", "does not exist"]),
    ("not_a_model", ["not a saved model", "mtdnn.json is missing"]),
    ("unknown_task", ["'sst9'", "sent, sim, nli, qa"]),
    ("out_not_empty", ["exists and is not empty", "--overwrite"]),
    ("out_is_file", ["is a file"]),
    ("onnx_missing", ["--onnx needs onnxruntime", "pip install"]),
    ("out_is_model_parent", ["overlaps the model folder", "would delete the model"]),
])
def test_cli_user_mistakes_exit_2(case: str, names: list[str], models: dict[str, Path],
                                  tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model, out = str(models["cls"]), tmp_path / "out"
    argv = [model, str(out)]
    if case == "missing_model":
        argv = [str(tmp_path / "no-such-model"), str(out)]
    elif case == "not_a_model":
        (tmp_path / "empty").mkdir()
        argv = [str(tmp_path / "empty"), str(out)]
    elif case == "unknown_task":
        argv += ["--task", "sent", "--task", "sst9"]
    elif case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "out_is_file":
        out.write_text("a file")
    elif case == "onnx_missing":
        import mtkd.export

        monkeypatch.setattr(mtkd.export, "onnx_missing", lambda: ["onnxruntime"])
        argv.append("--onnx")
    elif case == "out_is_model_parent":
        argv = [model, str(models["cls"].parent), "--overwrite"]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2, stdout + stderr
    assert stderr.startswith("mtkd: error:")
    for text in names:
        assert text in stderr
    assert "Traceback" not in stderr
    if case == "out_not_empty":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    elif case == "out_is_file":
        assert out.read_text() == "a file"
    elif case == "out_is_model_parent":
        assert (models["cls"] / "mtdnn.json").is_file()
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_cli_exports_chosen_tasks_and_overwrites(models: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = _run([str(models["cls"]), str(out), "--task", "sim", "--no-onnx"],
                                capsys)
    assert code == 0, stderr
    assert f"exported sim to {out / 'sim'} (max difference" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["sim"]
    assert not (out / "sim" / "model.onnx").exists()
    code, stdout, stderr = _run([str(models["cls"]), str(out), "--task", "sent", "--task",
                                 "nli", "--overwrite"], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["nli", "sent"]  # replaced, not merged
    assert (out / "nli" / "model.onnx").is_file()
    assert "+ model.onnx" in stdout


def test_a_failure_leaves_no_out_dir(models: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import mtkd.export

    real = mtkd.export._export_task
    calls: list[str] = []

    def failing(model: Any, tokenizer: Any, meta: Any, task: str, *args: Any) -> Any:
        calls.append(task)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(model, tokenizer, meta, task, *args)

    monkeypatch.setattr(mtkd.export, "_export_task", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        mtkd.export.export_model(models["cls"], tmp_path / "out", ["sent", "sim"], onnx=False)
    assert calls == ["sent", "sim"]
    assert list(tmp_path.iterdir()) == []  # neither OUT_DIR nor its temporary sibling


@pytest.mark.s3
def test_cli_exports_a_model_in_s3_with_its_record(models: dict[str, Path], s3_env: str,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from mtkd.storage import Storage

    store = Storage.from_uri(s3_env)
    experiment = models["mean"].parents[2]  # <exp>/student/student/final
    store.upload_dir(experiment, "exp")
    out = tmp_path / "out"
    code, _, stderr = _run([f"{s3_env}/exp/student/student/final", str(out), "--task",
                                 "sent", "--no-onnx"], capsys)
    assert code == 0, stderr
    card = (out / "sent" / "README.md").read_text()
    assert f"exported from: `{s3_env}/exp/student/student/final`" in card
    assert "accuracy 87.25" in card and "dev 60 rows, train 480 rows" in card
