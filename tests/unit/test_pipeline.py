"""Stage chaining: manifests, skipping, fingerprints, --only/--from/--force, crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtkd.config import config_from_dict
from mtkd.errors import MtkdError
from mtkd.pipeline import (
    Stage,
    StageContext,
    read_manifest,
    run_pipeline,
    select_stages,
    stale_stages,
)
from mtkd.storage import Storage


class Recorder:
    """Real stages that write an artifact and record each call (for assertions)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_in: str | None = None

    def stage(self, name: str, slice_key: str) -> Stage:
        def run(ctx: StageContext) -> dict:
            self.calls.append(name)
            if self.fail_in == name:
                raise RuntimeError(f"{name} crashed")
            ctx.store.write_text(f"{name}/out.txt", f"{name} seed={ctx.config.seed}")
            return {"artifacts": [f"{name}/out.txt"]}

        return Stage(name, run, lambda c: getattr(c, slice_key), f"the {name} stage")


def make_config(tmp_path: Path, **extra):
    data = {"name": "exp", "storage_path": str(tmp_path / "runs"),
            "tasks": [{"name": "rotten_tomatoes"}], **extra}
    return config_from_dict(data)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def stages(rec: Recorder) -> list[Stage]:
    return [rec.stage("a", "tasks"), rec.stage("b", "teachers"), rec.stage("c", "student")]


def test_runs_all_then_skips_all(tmp_path: Path, recorder: Recorder) -> None:
    config = make_config(tmp_path)
    first = run_pipeline(config, stages=stages(recorder))
    assert [o.status for o in first] == ["ran", "ran", "ran"]
    store = Storage.from_uri(str(tmp_path / "runs")).child("exp")
    assert store.read_text("b/out.txt") == "b seed=0"
    manifest = read_manifest(store, "b")
    assert manifest["status"] == "complete" and manifest["artifacts"] == ["b/out.txt"]
    assert "config.yaml" in store.list()
    second = run_pipeline(config, stages=stages(recorder))
    assert [o.status for o in second] == ["skipped"] * 3
    assert recorder.calls == ["a", "b", "c"]


def test_changed_slice_reruns_that_stage_and_later_ones(tmp_path: Path,
                                                        recorder: Recorder) -> None:
    run_pipeline(make_config(tmp_path), stages=stages(recorder))
    recorder.calls.clear()
    changed = make_config(tmp_path, teachers={"size": 4})
    outcomes = run_pipeline(changed, stages=stages(recorder))
    assert [o.status for o in outcomes] == ["skipped", "ran", "ran"]
    assert recorder.calls == ["b", "c"]


def test_crash_leaves_no_manifest_and_rerun_resumes(tmp_path: Path, recorder: Recorder) -> None:
    config = make_config(tmp_path)
    recorder.fail_in = "b"
    with pytest.raises(RuntimeError, match="b crashed"):
        run_pipeline(config, stages=stages(recorder))
    store = Storage.from_uri(str(tmp_path / "runs")).child("exp")
    assert read_manifest(store, "a") is not None
    assert read_manifest(store, "b") is None
    recorder.fail_in = None
    recorder.calls.clear()
    outcomes = run_pipeline(config, stages=stages(recorder))
    assert [o.status for o in outcomes] == ["skipped", "ran", "ran"]
    assert recorder.calls == ["b", "c"]


def test_only_from_and_force(tmp_path: Path, recorder: Recorder) -> None:
    config = make_config(tmp_path)
    with pytest.raises(MtkdError, match="stage 'a' has not run yet"):
        run_pipeline(config, only="b", stages=stages(recorder))
    run_pipeline(config, only="a", stages=stages(recorder))
    assert [o.name for o in run_pipeline(config, only="b", stages=stages(recorder))] == ["b"]
    assert recorder.calls == ["a", "b"]
    outcomes = run_pipeline(config, from_stage="b", stages=stages(recorder))
    assert [(o.name, o.status) for o in outcomes] == [("b", "skipped"), ("c", "ran")]
    outcomes = run_pipeline(config, only="b", force=True, stages=stages(recorder))
    assert [(o.name, o.status) for o in outcomes] == [("b", "ran")]
    assert recorder.calls == ["a", "b", "c", "b"]


def test_unknown_stage_name_is_a_user_error(recorder: Recorder) -> None:
    with pytest.raises(MtkdError, match="use one of: a, b, c"):
        select_stages(stages(recorder), only="teacher", from_stage=None)
    with pytest.raises(MtkdError, match="no such stage"):
        select_stages(stages(recorder), only=None, from_stage="zzz")
    with pytest.raises(MtkdError, match="--to zzz: no such stage"):
        select_stages(stages(recorder), only=None, from_stage=None, to_stage="zzz")
    with pytest.raises(MtkdError, match="comes after --to a"):
        select_stages(stages(recorder), only=None, from_stage="c", to_stage="a")
    with pytest.raises(MtkdError, match="cannot be combined"):
        select_stages(stages(recorder), only="b", from_stage=None, to_stage="c")


def test_to_stops_after_the_named_stage_and_from_to_is_a_range(tmp_path: Path,
                                                                recorder: Recorder) -> None:
    config = make_config(tmp_path)
    outcomes = run_pipeline(config, to_stage="b", stages=stages(recorder))
    assert [(o.name, o.status) for o in outcomes] == [("a", "ran"), ("b", "ran")]
    assert recorder.calls == ["a", "b"]
    outcomes = run_pipeline(config, from_stage="b", to_stage="b", force=True,
                            stages=stages(recorder))
    assert [(o.name, o.status) for o in outcomes] == [("b", "ran")]
    outcomes = run_pipeline(config, stages=stages(recorder))
    assert [(o.name, o.status) for o in outcomes] == [("a", "skipped"), ("b", "skipped"),
                                                      ("c", "ran")]
    assert recorder.calls == ["a", "b", "b", "c"]


def test_always_run_stage_with_unchanged_output_keeps_later_stages(tmp_path: Path,
                                                                   recorder: Recorder) -> None:
    """An always-run stage (external inputs) re-runs; later stages re-run only when its
    reported output fingerprint changes."""
    output = {"fp": "v1"}

    def prepare(ctx: StageContext) -> dict:
        recorder.calls.append("prep")
        return {"output_fingerprint": output["fp"]}

    def make() -> list[Stage]:
        return [Stage("prep", prepare, lambda c: None, always_run=True),
                recorder.stage("b", "teachers")]

    config = make_config(tmp_path)
    run_pipeline(config, stages=make())
    outcomes = run_pipeline(config, stages=make())
    assert [(o.name, o.status) for o in outcomes] == [("prep", "ran"), ("b", "skipped")]
    output["fp"] = "v2"
    outcomes = run_pipeline(config, stages=make())
    assert [(o.name, o.status) for o in outcomes] == [("prep", "ran"), ("b", "ran")]
    assert recorder.calls == ["prep", "b", "prep", "prep", "b"]


@pytest.mark.parametrize("selection", [{"only": "c"}, {"from_stage": "c"}])
def test_a_stale_earlier_stage_refuses_only_and_from(tmp_path: Path, recorder: Recorder,
                                                     selection: dict) -> None:
    """The issue's case: `--only student` after a change that an earlier stage reads
    (there, a task's labels) must not reuse the old outputs."""
    run_pipeline(make_config(tmp_path), stages=stages(recorder))
    changed = make_config(tmp_path, teachers={"size": 4})  # b's slice
    store = Storage.from_uri(str(tmp_path / "runs")).child("exp")
    saved = store.read_text("config.yaml")
    with pytest.raises(MtkdError, match=r"stage 'b' is stale.*--from b"):
        run_pipeline(changed, stages=stages(recorder), **selection)
    assert recorder.calls == ["a", "b", "c"]
    assert store.read_text("config.yaml") == saved  # refused before writing anything
    assert stale_stages(changed, store, stages(recorder)) == {"b": "stale", "c": "stale"}
    assert stale_stages(make_config(tmp_path), store, stages(recorder)) == {}
    outcomes = run_pipeline(changed, from_stage="b", stages=stages(recorder))
    assert [(o.name, o.status) for o in outcomes] == [("b", "ran"), ("c", "ran")]
    # A stale stage that no selected stage reads is not in the way.
    with pytest.raises(MtkdError, match="stage 'a' is stale"):
        run_pipeline(make_config(tmp_path, tasks=[{"name": "trec"}]), only="b",
                     stages=stages(recorder))
    outcomes = run_pipeline(make_config(tmp_path, tasks=[{"name": "trec"}]), only="a",
                            stages=stages(recorder))
    assert [(o.name, o.status) for o in outcomes] == [("a", "ran")]


def test_a_stage_that_finished_with_failures_is_retried_not_skipped(
        tmp_path: Path, recorder: Recorder) -> None:
    """A stage reporting failures (teacher members that failed for good while enough
    others finished) is usable downstream but runs again on the next run; once it
    finishes cleanly it is skipped, and later stages re-run only if its output changed."""
    failures = [["m1"], [], []]
    outputs = ["x", "x", "x"]

    def flaky(ctx: StageContext) -> dict:
        recorder.calls.append("b")
        return {"failed": failures.pop(0), "output_fingerprint": outputs.pop(0)}

    chain = [recorder.stage("a", "tasks"), Stage("b", flaky, lambda c: c.teachers),
             recorder.stage("c", "student")]
    config = make_config(tmp_path)
    first = run_pipeline(config, stages=chain)
    store = Storage.from_uri(str(tmp_path / "runs")).child("exp")
    assert read_manifest(store, "b")["status"] == "partial"
    assert [o.status for o in first] == ["ran", "ran", "ran"]
    second = run_pipeline(config, stages=chain)
    assert [o.status for o in second] == ["skipped", "ran", "skipped"]  # same output
    assert read_manifest(store, "b")["status"] == "complete"
    third = run_pipeline(config, stages=chain)
    assert [o.status for o in third] == ["skipped"] * 3
    assert recorder.calls == ["a", "b", "c", "b"]


def test_force_runs_the_selected_stages_and_asks_them_to_rebuild(tmp_path: Path,
                                                                recorder: Recorder) -> None:
    seen: list[tuple[str, bool]] = []

    def stage(name: str) -> Stage:
        def run(ctx: StageContext) -> dict:
            seen.append((name, ctx.rebuild))
            return {}
        return Stage(name, run, lambda c: c.seed)

    chain = [stage("a"), stage("b")]
    config = make_config(tmp_path)
    run_pipeline(config, stages=chain)
    run_pipeline(config, stages=chain)  # both skipped
    run_pipeline(config, only="b", force=True, stages=chain)
    assert seen == [("a", False), ("b", False), ("b", True)]
