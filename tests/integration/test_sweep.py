"""`mtkd sweep`: one student per ensemble size, members and baselines shared, resumable.

A tiny random BERT on a two-class task and a regression task. The sweep over sizes 1, 2
(two student seeds) trains two members once, distils one student per size and seed, the
baseline once; a second sweep over sizes 2, 3 trains only the third member and builds only
size 3. Soft targets are checked against numpy softmax-averages of the members' own stored
predictions, the sweep's table against the records it summarises.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from tiny import make_tiny_bert, write_regression, write_task

from mtkd.cli import main
from mtkd.config import config_from_dict
from mtkd.data.prepared import read_prepared, read_task_spec
from mtkd.experiment import experiment_store, read_manifest, size_view_dir
from mtkd.model.io import load_mtdnn
from mtkd.records import MemberRecord, StudentRecord, folder_fingerprint
from mtkd.soft.aggregate import softmax
from mtkd.student.predictions import read_predictions
from mtkd.training.evaluate import predict_outputs

pytestmark = pytest.mark.slow


def _config(root: Path) -> dict:
    encoder = make_tiny_bert(root / "encoder", hidden=32, layers=2)
    cls = {"name": "toy", "source": "files", "type": "classification",
           "labels": ["neg", "pos"], "max_length": 24,
           "files": {"train": str(write_task(root / "c_train.csv", 64, 0)),
                     "dev": str(write_task(root / "c_dev.csv", 24, 1)),
                     "test": str(write_task(root / "c_test.csv", 16, 5))}}
    reg = {"name": "score", "source": "files", "type": "regression", "max_length": 24,
           "files": {"train": str(write_regression(root / "r_train.csv", 48, 2)),
                     "dev": str(write_regression(root / "r_dev.csv", 16, 3)),
                     "test": str(write_regression(root / "r_test.csv", 16, 4))}}
    return {
        "name": "sweep", "storage_path": str(root / "runs"), "ray": {"num_cpus": 2},
        "encoder": {"path": str(encoder)}, "tasks": [cls, reg],
        "teachers": {"size": 5, "min_members": 2, "max_concurrent": 2, "max_failures": 0,
                     "training": {"epochs": 1, "batch_size": 16, "learning_rate": 0.002,
                                  "precision": "fp32"}},
        "soft_targets": {"batch_size": 16, "precision": "fp32",
                         "resources_per_actor": {"cpu": 0.5}},
        "student": {"num_layers": 1, "num_workers": 1, "baseline": True, "seeds": [0, 1],
                    "resources_per_worker": {"cpu": 1},
                    "training": {"epochs": 1, "batch_size": 16, "learning_rate": 0.002,
                                 "precision": "fp32"}},
        "report": {"bootstrap_samples": 0, "plot": False, "speed_examples": 8,
                   "precision": "fp32"},
    }


def _member_probs(store, member: str, task: str, split: str) -> dict[str, np.ndarray]:
    table = pq.read_table(store.full_path(f"soft_targets/_members/{member}/{task}.parquet"))
    rows = table.filter(np.asarray(table["split"].to_pylist()) == split).to_pylist()
    return {r["uid"]: softmax(np.asarray(r["logits"], dtype=np.float64)) for r in rows}


def test_sweep_shares_members_and_baselines_and_resumes(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    data = _config(tmp_path)
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = config_from_dict(data)
    store = experiment_store(config)

    assert main(["sweep", str(config_file), "--sizes", "2,1"]) == 0
    out = capsys.readouterr().out
    assert "mtkd sweep: 2 size(s)" in out and "sweep/sweep.md" in out

    # Members m000, m001 live once, in the experiment; each size lists its first k.
    assert sorted(store.list("teachers")) == ["_tune", "m000", "m001"]
    for size in (1, 2):
        view = store.child(size_view_dir(size))
        assert view.read_json("teachers/teachers.json")["members"][0]["name"] == "m000"
        assert [m["name"] for m in view.read_json("teachers/teachers.json")["members"]] \
            == [f"m{i:03d}" for i in range(size)]
        assert not view.exists("teachers/m000") and not view.exists("data")

    # Soft targets per size: the mean of the first k members' softmax, by uid.
    for size in (1, 2):
        view = store.child(size_view_dir(size))
        table = pq.read_table(view.full_path("soft_targets/toy/train.parquet")).to_pylist()
        members = [_member_probs(store, f"m{i:03d}", "toy", "train") for i in range(size)]
        for row in table:
            expected = np.mean([m[row["uid"]] for m in members], axis=0)
            np.testing.assert_allclose(row["soft_target"], expected, atol=1e-5)
            assert row["num_members"] == size

    # KD students per size (distilled from that size's members); baselines once, shared.
    assert sorted(store.list("student")) == ["_train", "baseline-s0", "baseline-s1"]
    for size in (1, 2):
        view = store.child(size_view_dir(size))
        assert sorted(n for n in view.list("student")) == ["student-s0", "student-s1"]
        record = StudentRecord.from_json(view.read_json("student/student-s0/student.json"))
        assert record.distilled_from.members == [f"m{i:03d}" for i in range(size)]
    size1 = StudentRecord.from_json(
        store.child(size_view_dir(1)).read_json("student/student-s0/student.json"))
    size2 = StudentRecord.from_json(
        store.child(size_view_dir(2)).read_json("student/student-s0/student.json"))
    assert size1.lineage != size2.lineage

    # The sweep's table against the records it summarises.
    summary = store.read_json("sweep/sweep.json")
    assert summary["sizes"] == [1, 2] and summary["split"] == "test"
    members = {m: MemberRecord.from_json(store.read_json(f"teachers/{m}/member.json"))
               for m in ("m000", "m001")}
    for row in summary["rows"]:
        view = store.child(size_view_dir(row["size"]))
        kd = [StudentRecord.from_json(view.read_json(f"student/student-s{s}/student.json"))
              for s in (0, 1)]
        tests = [r.test_average for r in kd]
        assert row["student"]["test"]["mean"] == pytest.approx(np.mean(tests))
        assert row["student"]["test"]["std"] == pytest.approx(np.std(tests, ddof=1))
        assert row["student"]["dev"]["per_seed"] == pytest.approx([r.average for r in kd])
        report = view.read_json("report/report.json")
        assert row["ensemble"]["dev"] == pytest.approx(report["ensemble"]["average"])
        trained = sum(members[f"m{i:03d}"].wall_seconds for i in range(row["size"]))
        assert row["cost"]["members_hours"] == pytest.approx(trained * 1.0 / 3600)
        students = sum(r.seconds for r in kd)
        assert row["cost"]["students_hours"] == pytest.approx(students * 1.0 / 3600)
        assert row["cost"]["usd"] == pytest.approx(row["cost"]["cpu_hours"] * 0.384 / 8)
    assert store.read_bytes("sweep/sweep.png")[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = store.read_text("sweep/sweep.md")
    assert markdown.count("\n| 1 | ") == 1 and markdown.count("\n| 2 | ") == 1

    # `mtkd report` of one size re-renders it through the same view (members found)
    size2 = store.child(size_view_dir(2))
    rendered = size2.read_json("report/report.json")
    size2.delete("report")
    assert main(["report", size2.uri, "--no-speed", "--bootstrap-samples", "0"]) == 0
    again = size2.read_json("report/report.json")
    assert [m["name"] for m in again["members"]] == ["m000", "m001"]
    assert again["ensemble"]["average"] == rendered["ensemble"]["average"]
    capsys.readouterr()

    # Second sweep over 2 and 3: only m002 and size 3 are new; size 2 is reused whole.
    before = {m: store.read_bytes(f"teachers/{m}/member.json") for m in members}
    size2_manifests = {s: read_manifest(store.child(size_view_dir(2)), s)
                       for s in ("soft", "student", "report")}
    baseline = store.read_bytes("student/baseline-s0/student.json")
    assert main(["sweep", str(config_file), "--sizes", "2,3"]) == 0
    assert sorted(store.list("teachers")) == ["_tune", "m000", "m001", "m002"]
    assert {m: store.read_bytes(f"teachers/{m}/member.json") for m in members} == before
    assert {s: read_manifest(store.child(size_view_dir(2)), s)
            for s in size2_manifests} == size2_manifests
    assert store.read_bytes("student/baseline-s0/student.json") == baseline
    summary = store.read_json("sweep/sweep.json")
    assert summary["sizes"] == [2, 3]
    # the plateau, by the documented rule computed here by hand
    means = {r["size"]: r["student"]["test"] for r in summary["rows"]}
    gain = means[3]["mean"] - means[2]["mean"]
    noise = 2 * math.sqrt(means[2]["std"] ** 2 / 2 + means[3]["std"] ** 2 / 2)
    assert summary["plateau"] == (2 if gain <= noise else 3)

    # report.precision changed: size 3's runs are re-scored from their saved models (same
    # lineage, same model files), never retrained; the stored outputs are the model's at
    # the new precision
    size3 = store.child(size_view_dir(3))
    old = {r: StudentRecord.from_json(size3.read_json(f"student/{r}/student.json"))
           for r in ("student-s0", "student-s1")}
    final = {r: folder_fingerprint(size3.local_path(f"student/{r}/final")) for r in old}
    assert {o.scored_in["precision"] for o in old.values()} == {"fp32"}
    assert main(["sweep", str(config_file), "--sizes", "3", "report.precision=bf16"]) == 0
    spec = read_task_spec(store, "toy")
    for name, before in old.items():
        now = StudentRecord.from_json(size3.read_json(f"student/{name}/student.json"))
        assert now.scored_in["precision"] == "bf16" and now.lineage == before.lineage
        assert folder_fingerprint(size3.local_path(f"student/{name}/final")) == final[name]
        stored = read_predictions(size3.read_bytes(f"student/{name}/predictions/test.parquet"))
        model, _ = load_mtdnn(Path(size3.local_path(f"student/{name}/final")))
        split = read_prepared(store, "toy", "test")
        bf16 = predict_outputs(model, spec, split, precision="bf16")
        fp32 = predict_outputs(model, spec, split, precision="fp32")
        np.testing.assert_allclose(stored["toy"]["outputs"], bf16, atol=1e-6)
        assert list(stored["toy"]["uids"]) == list(split["uid"])
        assert not np.array_equal(bf16, fp32)


def test_sweep_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bad sizes, no distillation and a variation list shorter than the largest size:
    exit 2 with the fix, nothing written."""
    data = _config(tmp_path)
    data["teachers"]["variation"] = {"strategy": "list", "members": [{"seed": 1}, {"seed": 2}]}
    data["teachers"]["size"] = 2
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(data))
    cases = [(["--sizes", "1,0"], "'0' is not a positive whole number"),
             (["--sizes", "1,two"], "'two' is not a positive whole number"),
             (["--sizes", "1,4"], "teachers.variation lists 2"),
             (["--sizes", "1,2", "student.distill=false"], "student.distill is false"),
             (["--sizes", "1,2", "sweep_view=true"], "remove sweep_view"),
             (["--sizes", "1", "--gpu-hour-usd", "-1"], "give a price in dollars >= 0")]
    for args, message in cases:
        assert main(["sweep", str(config_file), *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "runs").exists()
