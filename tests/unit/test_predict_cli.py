"""``mtkd predict`` as a user runs it: outputs in input order that equal predict_texts,
and clear exit-2 errors without tracebacks.

The subprocesses are started together by one module fixture (each pays ~5 s of imports),
so the module stays fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtkd.precision import resolve_here

REPO = Path(__file__).resolve().parents[2]
WORDS = ["good", "bad", "fine", "awful", "great", "poor", "film", "movie", "plot", "the", "a",
         "is", "was", "very", "not"]


def sentence(i: int, salt: int) -> str:
    """A deterministic sentence whose length varies with ``i`` (so sorting by length
    reorders the rows)."""
    n = 2 + (i * 7 + salt) % 13
    return " ".join(WORDS[(i * 3 + k * 5 + salt) % len(WORDS)] for k in range(n))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Input files: classification CSV with uids (40 rows), pair JSONL with other column
    names (15 rows), regression Parquet with an optional pair (12 rows)."""
    root = tmp_path_factory.mktemp("inputs")
    sent = [sentence(i, 0) for i in range(40)]
    sent[3] = 'good, "very" good'  # quoting survives the round trip
    csv_lines = ["id_col,uid,text"] + [
        f'{i},r{i},"{t.replace(chr(34), chr(34) * 2)}"' for i, t in enumerate(sent)]
    (root / "sent.csv").write_text("\n".join(csv_lines) + "\n")
    premises = [sentence(i, 1) for i in range(15)]
    hypotheses = [sentence(i, 2) for i in range(15)]
    with (root / "nli.jsonl").open("w") as out:
        for p, h in zip(premises, hypotheses, strict=True):
            out.write(json.dumps({"premise": p, "hypothesis": h, "extra": 1}) + "\n")
    sim_a, sim_b = [sentence(i, 3) for i in range(12)], [sentence(i, 4) for i in range(12)]
    pq.write_table(pa.table({"text": sim_a, "text_pair": sim_b}), root / "sim.parquet")
    return {"root": root, "sent": sent, "nli": (premises, hypotheses), "sim": (sim_a, sim_b)}


COMMANDS: dict[str, list[str]] = {
    "sent": ["{model}", "--task", "sent", "--input", "{root}/sent.csv", "--batch-size", "4"],
    "nli": ["{model}", "--task", "nli", "--input", "{root}/nli.jsonl", "--text-column",
            "premise", "--pair-column", "hypothesis", "--output", "{root}/out/nli.jsonl"],
    "sim": ["{model}", "--task", "sim", "--input", "{root}/sim.parquet", "--batch-size", "5",
            "--precision", "fp32"],
    "unknown_task": ["{model}", "--task", "sst9", "--input", "{root}/sent.csv"],
    "missing_column": ["{model}", "--task", "nli", "--input", "{root}/sent.csv"],
    "missing_model": ["{root}/no-such-model", "--task", "sent", "--input", "{root}/sent.csv"],
}


@pytest.fixture(scope="module")
def runs(model_dir: Path, data: dict[str, Any]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every command of COMMANDS run as ``python -m mtkd predict ...``, concurrently."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = {}
    for name, args in COMMANDS.items():
        argv = [a.format(model=model_dir, root=data["root"]) for a in args]
        procs[name] = (argv, subprocess.Popen(
            [sys.executable, "-m", "mtkd", "predict", *argv], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = {}
    for name, (argv, proc) in procs.items():
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    return results


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def auto_here() -> tuple[str, float]:
    """What ``--precision auto`` (the CLI default) resolves to on this CPU, and the
    tolerance for comparing its outputs: fp32 where bf16 is emulated, bf16 autocast where
    it is native, whose outputs move with batch shapes in the 3rd digit."""
    resolved = resolve_here("auto", "cpu")
    return resolved.precision, 1e-5 if resolved.precision == "fp32" else 2e-2


def direct(model_dir: Path, task: str, texts: list[str], pairs: list[str] | None = None,
           *, precision_of_cli: bool = True) -> np.ndarray:
    """The library's outputs for these texts, at the precision the CLI's default chooses
    on this CPU (``precision_of_cli``) or at fp32."""
    from mtkd.model.io import load_mtdnn
    from mtkd.model.predict import predict_texts

    model, tokenizer = load_mtdnn(model_dir)
    probs = model.specs[task].kind.head != "ranking"
    precision = auto_here()[0] if precision_of_cli else "fp32"
    return predict_texts(model, tokenizer, task, texts, pairs, probs=probs,
                         precision=precision)


def succeeded(result: subprocess.CompletedProcess[str], n: int, out: Path) -> None:
    assert result.returncode == 0, result.stderr
    assert f"wrote {n} predictions to {out} (" in result.stdout
    assert "ex/s" in result.stdout
    assert f"{n}/{n}" in result.stderr  # the progress bar reached the end


def test_classification_csv(runs: dict, data: dict, model_dir: Path) -> None:
    out = data["root"] / "sent.predictions.jsonl"  # default: next to the input
    succeeded(runs["sent"], 40, out)
    rows = read_jsonl(out)
    assert [r["row"] for r in rows] == list(range(40))
    assert [r["uid"] for r in rows] == [f"r{i}" for i in range(40)]
    expected = direct(model_dir, "sent", data["sent"])
    for row, probs in zip(rows, expected, strict=True):
        assert set(row) == {"row", "uid", "label", "probabilities"}
        assert list(row["probabilities"]) == ["neg", "pos"]
        got = np.array(list(row["probabilities"].values()))
        assert got.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(got, probs, atol=auto_here()[1])
        assert row["label"] == ["neg", "pos"][int(np.argmax(got))]


def test_pair_classification_jsonl_with_column_flags(runs: dict, data: dict,
                                                      model_dir: Path) -> None:
    out = data["root"] / "out" / "nli.jsonl"
    succeeded(runs["nli"], 15, out)
    rows = read_jsonl(out)
    assert [r["row"] for r in rows] == list(range(15))
    assert all("uid" not in r for r in rows)  # the input has no uid column
    expected = direct(model_dir, "nli", *data["nli"])
    labels = ["entail", "neutral", "contra"]
    for row, probs in zip(rows, expected, strict=True):
        assert row["label"] in labels and list(row["probabilities"]) == labels
        got = np.array(list(row["probabilities"].values()))
        assert got.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(got, probs, atol=auto_here()[1])
        assert row["label"] == labels[int(np.argmax(got))]


def test_regression_parquet_uses_the_pair_column(runs: dict, data: dict,
                                                 model_dir: Path) -> None:
    out = data["root"] / "sim.predictions.jsonl"
    succeeded(runs["sim"], 12, out)
    rows = read_jsonl(out)
    assert [r["row"] for r in rows] == list(range(12))
    assert all(set(r) == {"row", "score"} for r in rows)
    expected = direct(model_dir, "sim", *data["sim"], precision_of_cli=False)  # --precision fp32
    np.testing.assert_allclose([r["score"] for r in rows], expected, atol=1e-5)
    single = direct(model_dir, "sim", data["sim"][0], precision_of_cli=False)  # other scores
    assert not np.allclose(single, expected, atol=1e-5)


@pytest.mark.parametrize(("name", "names"), [
    ("unknown_task", ["'sst9'", "sent, sim, nli, qa"]),
    ("missing_column", ["sent.csv", "'text_pair'", "id_col, uid, text", "--pair-column"]),
    ("missing_model", ["no-such-model", "does not exist"]),
])
def test_user_mistakes_exit_2_naming_the_problem(runs: dict, name: str,
                                                 names: list[str]) -> None:
    result = runs[name]
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("mtkd: error:")
    for text in names:
        assert text in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# ------------------------------------------------------------------ in-process (fast)


def test_ranking_and_more_errors_in_process(model_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from mtkd.cli import main

    queries = ["what film", "who is it", "the plot"]
    candidates = [["good film", "bad"], ["a", "is not", "very good movie"], ["plot"]]
    src = tmp_path / "rank.tsv"
    src.write_text("query\tcandidates\n" + "".join(
        f"{q}\t{json.dumps(c)}\n" for q, c in zip(queries, candidates, strict=True)))
    assert main(["-q", "predict", str(model_dir), "--task", "qa", "--input", str(src)]) == 0
    rows = read_jsonl(tmp_path / "rank.predictions.jsonl")
    expected = direct(model_dir, "qa", queries, candidates)
    for row, cands, scores in zip(rows, candidates, expected, strict=True):
        assert len(row["scores"]) == len(cands)
        np.testing.assert_allclose(row["scores"], scores[: len(cands)], atol=auto_here()[1])
        assert row["best_candidate"] == int(np.argmax(row["scores"]))

    capsys.readouterr()
    (tmp_path / "empty.jsonl").write_text('{"text": "good"}\n{"text": ""}\n')
    for argv, names in [
        (["--task", "sent", "--input", str(tmp_path / "empty.jsonl")],
         ["empty.jsonl, row 2, column 'text'", "empty"]),
        (["--task", "sent", "--input", str(tmp_path / "nope.csv")], ["nope.csv", "not found"]),
        (["--task", "sent", "--input", "s3://bucket/in.csv"], ["--output is required"]),
        (["--task", "qa", "--input", str(src), "--precision", "fp16", "--device", "cpu"],
         ["fp16"]),
        (["--task", "sent", "--input", str(src)], ["rank.tsv", "'text'", "query, candidates"]),
    ]:
        assert main(["-q", "predict", str(model_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in names), err
    assert not (tmp_path / "empty.predictions.jsonl").exists()
