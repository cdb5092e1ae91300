"""Teacher ensemble with Ray Tune on local Ray (2 CPUs): parallel trials, a killed trial
that resumes from its checkpoint, scaling the ensemble without retraining, and a
data-parallel member (a TorchTrainer of two workers inside its trial)."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from tiny import make_tiny_bert, write_task

from mtkd.config import ExperimentConfig, config_from_dict
from mtkd.data.prepared import read_prepared
from mtkd.data.sampler import MultiTaskBatchSampler
from mtkd.errors import MtkdError
from mtkd.model.remote import load_model_from
from mtkd.pipeline import experiment_store, run_pipeline
from mtkd.storage import Storage

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("teachers")
    encoder = make_tiny_bert(root / "encoder", hidden=64, layers=4)
    task = {"name": "toy", "source": "files", "type": "classification",
            "labels": ["neg", "pos"], "max_length": 32,
            "files": {"train": str(write_task(root / "train.csv", 1200, 0)),
                      "dev": str(write_task(root / "dev.csv", 100, 1))}}
    return {
        "name": "ens", "storage_path": str(root / "runs"), "ray": {"num_cpus": 2},
        "encoder": {"path": str(encoder)}, "tasks": [task],
        "teachers": {"size": 3, "max_concurrent": 2, "max_failures": 2,
                     "resources_per_member": {"cpu": 1},
                     "variation": {"strategy": "grid", "seed": [1, 2, 3],
                                   "learning_rate": [0.002]},
                     "training": {"epochs": 3, "batch_size": 16, "eval_every": 15,
                                  "dropout": 0.0}},
    }


def kill_when_checkpointed(store: Storage, member: str, killed: dict) -> None:
    """Kill the member's trial process once it has passed its second checkpoint."""
    path = f"teachers/{member}/progress.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if store.exists(path):
            progress = store.read_json(path)
            if progress["step"] >= 30 and progress["attempt"] == 1:
                os.kill(progress["pid"], signal.SIGKILL)
                killed.update(progress)
                return
        time.sleep(0.05)


def train_teachers_killing(config: ExperimentConfig, member: str) -> tuple[Storage, dict]:
    """Run the teachers stage while :func:`kill_when_checkpointed` kills ``member`` once;
    the experiment's store and what was killed."""
    store = experiment_store(config)
    killed: dict = {}
    watcher = threading.Thread(target=kill_when_checkpointed, args=(store, member, killed))
    watcher.start()
    run_pipeline(config, to_stage="teachers")
    watcher.join()
    return store, killed


def test_ensemble_trains_resumes_and_scales(experiment: dict) -> None:
    config = config_from_dict(experiment)
    store, killed = train_teachers_killing(config, "m001")

    report = store.read_json("teachers/teachers.json")
    members = {m["name"]: m for m in report["members"]}
    assert sorted(members) == ["m000", "m001", "m002"] and report["failed"] == {}
    for summary in members.values():
        assert summary["metrics"]["toy"]["accuracy"] > 70.0  # majority is about 50
        assert summary["model"].endswith(f"teachers/{summary['name']}/model")
        assert store.exists(f"teachers/{summary['name']}/model/mtdnn.json")
        assert summary["variant"]["learning_rate"] == 0.002
    assert [members[n]["variant"]["seed"] for n in ("m000", "m001", "m002")] == [1, 2, 3]

    # The killed member was retried and continued from its last checkpoint, not step 0.
    assert killed, "the trial was never killed"
    attempts = store.read_json("teachers/m001/member.json")["attempts"]
    assert len(attempts) == 2 and attempts[0]["pid"] == killed["pid"]
    # Resumed from a checkpoint (every 15 steps), at most one behind the last one persisted
    # (Tune may not have registered the newest before the kill).
    assert killed["step"] - 15 <= attempts[1]["start_step"] <= killed["step"]
    assert attempts[1]["start_step"] >= 15 and attempts[1]["start_step"] % 15 == 0
    history = [h["step"] for h in store.read_json("teachers/m001/member.json")["history"]]
    assert history == sorted(set(history)), history  # no step evaluated twice
    assert all(len(members[n]["attempts"]) == 1 for n in ("m000", "m002"))

    # Two trials ran at once: some members' training intervals overlap.
    spans = [(m["attempts"][0]["started_at"], m["attempts"][0]["started_at"]
              + m["wall_seconds"]) for m in members.values()]
    overlaps = [a for a in spans for b in spans if a is not b and a[0] < b[1] and b[0] < a[1]]
    assert overlaps

    # Scaling 3 -> 4 trains only the new member.
    before = {n: store.read_text(f"teachers/{n}/member.json") for n in members}
    bigger = config_from_dict({**experiment,
                               "teachers": {**experiment["teachers"], "size": 4,
                                            "variation": {**experiment["teachers"]["variation"],
                                                          "seed": [1, 2, 3, 4]}}})
    outcomes = {o.name: o for o in run_pipeline(bigger, to_stage="teachers")}
    assert outcomes["prepare"].status == "ran" and outcomes["teachers"].status == "ran"
    after = {n: store.read_text(f"teachers/{n}/member.json") for n in members}
    assert after == before
    assert outcomes["teachers"].manifest["members"] == ["m000", "m001", "m002", "m003"]
    assert store.read_json("teachers/m003/member.json")["variant"]["seed"] == 4


def small(experiment: dict, name: str, **teachers) -> dict:
    task = {**experiment["tasks"][0], "max_train_examples": 200}
    second = {**task, "name": "toy2"}
    base = {"size": 1, "max_concurrent": 2, "max_failures": 0,
            "training": {"epochs": 1, "batch_size": 16, "dropout": 0.0}}
    return {**experiment, "name": name, "tasks": [task, second],
            "teachers": {**base, **teachers}}


def test_per_task_members_start_from_the_shared_multitask_model(experiment: dict) -> None:
    config = config_from_dict(small(experiment, "pertask", shape="per_task",
                                    init_from_multitask=True))
    [_, teachers] = run_pipeline(config, to_stage="teachers")
    store = experiment_store(config)
    assert teachers.manifest["members"] == ["toy.m000", "toy2.m000"]
    init = store.read_json("teachers/init/model/mtdnn.json")
    assert sorted(t["name"] for t in init["tasks"]) == ["toy", "toy2"]
    member = store.read_json("teachers/toy2.m000/model/mtdnn.json")
    assert [t["name"] for t in member["tasks"]] == ["toy2"]
    assert store.read_json("teachers/toy.m000/member.json")["tasks"] == ["toy"]


def test_failed_member_is_reported_and_min_members_enforced(experiment: dict,
                                                           tmp_path: Path) -> None:
    # A member whose encoder passes every check before the run (its config, tokenizer and
    # positions are the experiment's) but whose weights are damaged: it fails in its trial.
    import shutil

    broken = tmp_path / "broken-encoder"
    shutil.copytree(experiment["encoder"]["path"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    members = [{"seed": 1}, {"seed": 2, "encoder": str(broken)}]
    ok = config_from_dict(small(experiment, "fails", size=2, min_members=1,
                                variation={"strategy": "list", "members": members}))
    [_, teachers] = run_pipeline(ok, to_stage="teachers")
    store = experiment_store(ok)
    assert teachers.manifest["members"] == ["m000"]
    failed = store.read_json("teachers/teachers.json")["failed"]
    assert list(failed) == ["m001"] and "safetensor" in failed["m001"].lower(), failed

    strict = config_from_dict(small(experiment, "fails", size=2, min_members=2,
                                    variation={"strategy": "list", "members": members}))
    with pytest.raises(MtkdError, match=r"only 1 of 2 teacher members finished.*m001"):
        run_pipeline(strict, to_stage="teachers")


def test_member_with_two_workers_trains_data_parallel_and_resumes(
        experiment: dict, tmp_path: Path) -> None:
    """workers_per_member 2: the member's trial runs a TorchTrainer of two 1-CPU workers
    (DDP over gloo), each on its shard of the batches; rank 0 is killed after a checkpoint
    and the retried trial's Train run resumes from it."""
    teachers = {"size": 1, "max_failures": 1, "workers_per_member": 2,
                "resources_per_member": {"cpu": 1},
                "variation": {"strategy": "grid", "seed": [1], "learning_rate": [0.002]},
                "training": {"epochs": 2, "batch_size": 16, "eval_every": 15,
                             "dropout": 0.0}}
    config = config_from_dict({**experiment, "name": "ddp", "teachers": teachers})
    store, killed = train_teachers_killing(config, "m000")

    report = store.read_json("teachers/teachers.json")
    assert [m["name"] for m in report["members"]] == ["m000"] and report["failed"] == {}
    summary = store.read_json("teachers/m000/member.json")
    assert summary["workers"] == 2
    assert summary["metrics"]["toy"]["accuracy"] > 70.0  # majority is about 50
    # Two shards: each rank runs half of every epoch's batches (an odd last one is paired
    # with a batch of the next pass, never dropped), so the member takes about half the
    # optimizer steps of a single worker.
    rows = read_prepared(store, "toy", "train").num_rows
    per_shard = len(MultiTaskBatchSampler({"toy": [1] * rows}, 16, num_shards=2))
    assert per_shard == math.ceil(math.ceil(rows / 16) / 2)
    assert summary["steps"] == 2 * per_shard

    # Rank 0 was killed; the retried trial's Train run (same name) resumed from the
    # checkpoint of an evaluation, not step 0.
    assert killed, "the worker was never killed"
    attempts = summary["attempts"]
    assert len(attempts) == 2 and attempts[0]["pid"] == killed["pid"]
    assert killed["step"] - 15 <= attempts[1]["start_step"] <= killed["step"]
    assert attempts[1]["start_step"] >= 15 and attempts[1]["start_step"] % 15 == 0
    history = [h["step"] for h in summary["history"]]
    assert history == sorted(set(history)) and history[-1] == summary["steps"], history
    run = f"{summary['name']}-{summary['lineage'][:10]}"
    assert store.exists(f"teachers/_train/{run}")

    # The model rank 0 wrote loads and predicts like a single-process member's.
    model, _ = load_model_from(store, "teachers/m000/model", tmp_path / "model")
    assert list(model.specs) == ["toy"]
    assert summary["model"].endswith("teachers/m000/model")


def _wait_for(store: Storage, path: str, check, proc, log: Path, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            found = store.read_json(path) if store.exists(path) else None
        except Exception:  # a read racing the atomic write
            found = None
        if found and check(found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"{path} never satisfied the check:\n{log.read_text()[-3000:]}")


def test_interrupted_driver_resumes_members_from_their_checkpoints(experiment: dict,
                                                                   tmp_path: Path) -> None:
    """Ctrl-C, then kill -9, of `mtkd run` while a member trains: each re-run continues the
    member from its last persisted checkpoint (not step 0), and the member ends with the
    weights of an uninterrupted run (equal content fingerprints)."""
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[2]
    data = {**experiment, "name": "cut",
            "teachers": {**experiment["teachers"], "size": 1, "max_concurrent": 1,
                         "variation": {"strategy": "grid", "seed": [1],
                                       "learning_rate": [0.002]},
                         "training": {**experiment["teachers"]["training"], "epochs": 1}}}
    config_file = tmp_path / "cut.yaml"
    config_file.write_text(yaml.safe_dump(data))
    command = [sys.executable, "-m", "mtkd", "run", str(config_file), "--to", "teachers"]
    store = Storage.from_uri(data["storage_path"]).child("cut")
    progress = "teachers/m000/progress.json"
    stops = [(signal.SIGINT, 1, 30), (signal.SIGKILL, 2, 45)]  # (signal, attempt, step)
    for number, (sig, attempt, step) in enumerate(stops):
        log = tmp_path / f"run{number}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(command, cwd=repo, stdout=out, stderr=subprocess.STDOUT)
            seen = _wait_for(store, progress,
                             lambda p, a=attempt, s=step: p["attempt"] == a and p["step"] >= s,
                             proc, log)
            proc.send_signal(sig)
            proc.wait(timeout=120)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
        assert seen["step"] >= step
        # The trial outlives its driver for a moment (Ctrl-C shuts Tune down, kill -9's
        # Ray processes follow their driver): wait until its progress stands still; its
        # step is then the newest checkpoint persisted.
        last, still = store.read_text(progress), time.time()
        while time.time() - still < 8:
            time.sleep(0.5)
            if store.read_text(progress) != last:
                last, still = store.read_text(progress), time.time()
        # the newest checkpoint in storage (progress.json is written just after each one,
        # so a stop between the two leaves it one checkpoint behind)
        states = Path(data["storage_path"], "cut", "teachers", "_tune").glob(
            "*/m000-*/checkpoint_*/checkpoint.json")
        newest = max(json.loads(p.read_text())["loop"]["step"] for p in states)
        assert newest - json.loads(last)["step"] in (0, 15)
        stops[number] = (sig, attempt, newest)
        assert not store.exists("teachers/m000/member.json")
    log = tmp_path / "final.log"
    with log.open("w") as out:
        done = subprocess.run(command, cwd=repo, stdout=out, stderr=subprocess.STDOUT,
                              timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "continuing from the checkpoint at step" in text
    record = store.read_json("teachers/m000/member.json")
    starts = [a["start_step"] for a in record["attempts"]]
    assert len(starts) == 3 and starts[0] == 0, starts
    for (_, _, persisted), start in zip(stops, starts[1:], strict=True):
        assert start == persisted and start % 15 == 0, (starts, stops)  # not step 0
    assert 0 < starts[1] < starts[2]
    history = [h["step"] for h in record["history"]]
    assert history == sorted(set(history)), history

    whole = config_from_dict({**data, "name": "whole"})
    run_pipeline(whole, to_stage="teachers")
    uninterrupted = experiment_store(whole).read_json("teachers/m000/member.json")
    assert uninterrupted["lineage"] == record["lineage"]
    assert uninterrupted["content"] == record["content"]


def test_time_checkpoints_reach_tune_with_asha_and_curves_reach_tensorboard(
        experiment: dict) -> None:
    """checkpoint_minutes small enough to checkpoint between evaluations: Tune (with ASHA,
    which wants a score in every result) takes the time checkpoints; the member's curves
    are in tensorboard/<member>-<lineage>/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = config_from_dict(small(experiment, "timeckpt", early_stopping="asha",
                                    checkpoint_minutes=0.002,
                                    training={"epochs": 1, "batch_size": 16,
                                              "dropout": 0.0, "eval_every": 10}))
    [_, teachers] = run_pipeline(config, to_stage="teachers")
    assert teachers.status == "ran"
    store = experiment_store(config)
    record = store.read_json("teachers/m000/member.json")
    results = []
    for path in store.list("teachers/_tune", recursive=True):
        if path.endswith("result.json"):
            results += [json.loads(line) for line in store.read_text(
                f"teachers/_tune/{path}").splitlines() if line.strip()]
    timed = [r for r in results if r.get("time_checkpoint")]
    evals = [r for r in results if "evaluations" in r and not r.get("time_checkpoint")
             and not r.get("finished")]
    assert timed and len(evals) == len(record["history"])
    assert all(r["evaluations"] <= len(record["history"]) for r in timed)
    (folder,) = store.list("tensorboard")
    assert folder.rsplit("/", 1)[-1].startswith("m000-")
    events = EventAccumulator(store.full_path(f"tensorboard/{folder.rsplit('/', 1)[-1]}"),
                              size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, record["steps"] + 1))
    assert [e.value for e in events.Scalars("dev/score")] == pytest.approx(
        [h["score"] for h in record["history"]])
