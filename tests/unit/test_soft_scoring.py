"""The soft stage scores members and the ensemble at report.precision, the precision every
model is scored at: a second pass over dev/test only when it differs from the soft
targets' precision, and the scores' lineage follows report.precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import mtkd.soft.stage as soft_stage
from mtkd.config import config_from_dict
from mtkd.precision import DeviceInfo, Resolved
from mtkd.records import MemberRecord
from mtkd.soft.predictor import OUTPUT_SCHEMA
from mtkd.storage import Storage

CPU = DeviceInfo(type="cpu", name="test cpu", capability="AVX2", native_bf16=False)


def config(**extra: Any) -> Any:
    return config_from_dict({"name": "s", "tasks": [{"name": "trec"}], **extra})


def resolved(key: str, requested: str, precision: str) -> Resolved:
    return Resolved(requested=requested, precision=precision, device=CPU)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Every member inference the stage starts: (splits, (precision setting, key))."""
    seen: list[tuple[Any, Any]] = []

    def fake_infer(config: Any, store: Any, member: Any, tasks: Any, label: str = "",
                   splits: Any = None, precision: Any = None) -> pa.Table:
        seen.append((splits, precision))
        return OUTPUT_SCHEMA.empty_table()

    monkeypatch.setattr(soft_stage, "infer_member", fake_infer)
    monkeypatch.setattr(soft_stage, "ensure_ray", lambda *a, **k: None)
    return seen


def test_scores_share_the_soft_pass_when_the_precisions_agree(tmp_path: Path,
                                                                 calls: list) -> None:
    cfg = config()  # auto and auto: one precision on this device
    fp32 = resolved("soft_targets.precision", "auto", "fp32")
    assert not soft_stage.scoring_apart(cfg, fp32, resolved("report.precision", "auto",
                                                            "fp32"))
    member = MemberRecord(lineage="m", content=None, name="m000", tasks=["trec"])
    got = soft_stage._predict_members(cfg, Storage.from_uri(str(tmp_path)), [member],
                                      {"trec"}, fp32, apart=False)
    assert calls == [(None, None)]  # every split, at soft_targets.precision
    assert set(got) == {"m000"}


def test_member_scores_use_report_precision(tmp_path: Path, calls: list) -> None:
    """soft_targets.precision bf16, report.precision fp32: the soft targets come from a
    bf16 pass over every split; the scores from a pass over dev and test at report.precision
    (the actors resolve it with report.precision's key)."""
    cfg = config(soft_targets={"precision": "bf16"}, report={"precision": "fp32"})
    soft, scoring = (resolved("soft_targets.precision", "bf16", "bf16"),
                     resolved("report.precision", "fp32", "fp32"))
    assert soft_stage.scoring_apart(cfg, soft, scoring)
    store = Storage.from_uri(str(tmp_path))
    member = MemberRecord(lineage="m", content=None, name="m000", tasks=["trec"])
    got = soft_stage._predict_members(cfg, store, [member], {"trec"}, soft,
                                      scoring=scoring, apart=True)
    assert calls == [(None, None), (("dev", "test"), ("fp32", "report.precision"))]
    assert got["scoring:m000"] == soft_stage.scoring_predictions_lineage(cfg, "m", "fp32")
    assert got["scoring:m000"] != got["m000"]
    assert store.exists(f"{soft_stage.scoring_dir('m000')}/done.json")
    # a second run reuses both passes
    calls.clear()
    soft_stage._predict_members(cfg, store, [member], {"trec"}, soft, scoring=scoring,
                                apart=True)
    assert calls == []


def test_scores_lineage_follows_report_precision() -> None:
    """The scores' lineage (recorded in ensemble.json and targets.json) changes with the
    resolved report.precision, not with the soft targets' lineage."""
    cfg = config()
    outputs = {"m000": "p"}
    assert (soft_stage.scores_lineage(cfg, "fp32", outputs)
            != soft_stage.scores_lineage(cfg, "bf16", outputs))
    assert (soft_stage.scores_lineage(config(report={"precision": "bf16"}), "fp32", outputs)
            == soft_stage.scores_lineage(cfg, "fp32", outputs))
    assert (soft_stage.targets_lineage(cfg, "trec", outputs, "d")
            == soft_stage.targets_lineage(config(report={"precision": "bf16"}), "trec",
                                          outputs, "d"))


def test_report_states_the_scoring_precision_once() -> None:
    from mtkd.report.render import _scoring_line

    cpu = {"requested": "auto", "precision": "fp32", "device": {"name": "test cpu"}}
    gpu = {"requested": "auto", "precision": "bf16", "device": {"name": "H100"}}
    line = _scoring_line({"scoring": {"ensemble": gpu, "runs": {"student": cpu,
                                                               "baseline": cpu}}})
    assert line[0] == ("Every model is scored at report.precision, one precision per device "
                       "(bf16 on H100: members and ensemble; fp32 on test cpu: student, "
                       "baseline).")
    assert _scoring_line({}) == []
