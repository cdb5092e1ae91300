"""Typed records: round trips, unreadable records rebuild, content fingerprints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mtkd.experiment import reusable
from mtkd.records import (
    EnsembleRef,
    MemberRecord,
    PredictionsRecord,
    ReportRecord,
    SoftTargetsRecord,
    StudentRecord,
    TaskRecord,
    files_fingerprint,
    folder_fingerprint,
)
from mtkd.storage import Storage

RECORDS = [
    TaskRecord(lineage="l", content="c", spec={"name": "t"}, splits={"train": {"rows": 3}},
               dropped={"dev": 1}, notes=["n"]),
    MemberRecord(lineage="l", content="c", name="m000", variant={"seed": 1}, tasks=["a"],
                 metrics={"a": {"accuracy": 50.0}}, average=50.0, best_step=3, steps=4,
                 model="file:///x", attempts=[{"pid": 1}], history=[{"step": 3}],
                 precision={"precision": "fp32"}, loss_scale=None),
    PredictionsRecord(lineage="l", content="c", member="ml", tasks=["a"], rows=9),
    SoftTargetsRecord(lineage="l", content="c", members=["m000"], metrics={"ensemble": {}}),
    StudentRecord(lineage="l", content="c", name="student", seed=0, distill=True,
                  distilled_from=EnsembleRef("e" * 64, ["m000", "m001"]), model="file:///s",
                  metrics={"a": {"accuracy": 1.0}}, average=1.0, params=10),
    StudentRecord(lineage="l", content=None, name="baseline", distill=False),
    ReportRecord(lineage="l", content="c"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_records_round_trip_through_json(record) -> None:
    text = json.dumps(record.to_json())
    assert type(record).from_json(json.loads(text)) == record


def test_member_summary_drops_only_the_history() -> None:
    summary = RECORDS[1].summary()
    assert "history" not in summary
    assert set(summary) == set(RECORDS[1].to_json()) - {"history"}


@pytest.mark.parametrize(("text", "expected"), [
    # the lineage it was built from: reused
    (json.dumps({"lineage": "want", "name": "m"}), "reused"),
    # an older mtkd's record without a content fingerprint: still reusable
    (json.dumps({"lineage": "want", "name": "m", "model": "u"}), "reused"),
    # another lineage: rebuilt
    (json.dumps({"lineage": "other", "name": "m"}), None),
    # not a record: rebuilt, never half-trusted
    (json.dumps({"name": "m"}), None),
    (json.dumps([1, 2]), None),
    ("{not json", None),
])
def test_reusable_only_with_a_parsable_record_of_the_same_lineage(
        tmp_path: Path, text: str, expected: str | None) -> None:
    store = Storage.from_uri(str(tmp_path))
    store.write_text("member.json", text)
    found = reusable(store, "member.json", "want", MemberRecord)
    assert (found is not None) == (expected == "reused")
    if found is not None:
        assert isinstance(found, MemberRecord) and found.lineage == "want"


def test_missing_record_is_not_reusable(tmp_path: Path) -> None:
    assert reusable(Storage.from_uri(str(tmp_path)), "nope.json", "x", MemberRecord) is None


def test_folder_fingerprint_hashes_names_and_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, order in ((a, ("w.bin", "sub/t.json")), (b, ("sub/t.json", "w.bin"))):
        for name in order:  # written in different orders: same fingerprint
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"weights" if name == "w.bin" else b"{}")
    expected = files_fingerprint({"w.bin": hashlib.sha256(b"weights").hexdigest(),
                                  "sub/t.json": hashlib.sha256(b"{}").hexdigest()})
    assert folder_fingerprint(a) == folder_fingerprint(b) == expected
    (b / "w.bin").write_bytes(b"weightz")
    assert folder_fingerprint(b) != expected
    (b / "w.bin").write_bytes(b"weights")
    (b / "sub/t.json").rename(b / "sub/u.json")  # same bytes, other name
    assert folder_fingerprint(b) != expected
