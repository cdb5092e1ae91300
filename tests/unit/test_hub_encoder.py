"""``encoder.path`` as a Hugging Face Hub id, without network.

A fake Hugging Face cache (huggingface_hub's layout: ``models--org--name/refs/main`` holding
a commit sha, ``snapshots/<sha>/`` holding the files) in a temporary ``HF_HUB_CACHE``,
with ``HF_HUB_OFFLINE=1``: the id resolves to the snapshot, the pipeline pins it to the
commit (so lineages change when ``main`` moves), and an uncached id is a clear error (exit 2
through ``mtkd validate``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtkd import pretrained
from mtkd.config import config_from_dict
from mtkd.errors import MtkdError
from mtkd.experiment import lineage
from mtkd.pipeline import Stage, StageContext, run_pipeline, stale_stages
from mtkd.pretrained import parse_hub_id, pin_encoder_path, pin_encoders, resolve_encoder_dir

REPO = Path(__file__).resolve().parents[2]
SHA1 = "1" * 40
SHA2 = "2" * 40


def add_snapshot(cache: Path, repo: str, sha: str, source: Path, *, ref: str = "main",
                 weights: bool = True) -> Path:
    """Put ``source``'s files into the fake cache as ``repo`` at commit ``sha`` and point
    ``refs/<ref>`` at it (what snapshot_download leaves behind)."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        if weights or not file.name.endswith(".safetensors"):
            shutil.copy(file, snapshot / file.name)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(sha)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache, offline mode on, nothing resolved in this process yet."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pretrained, "_RESOLVED", {})
    return cache


def test_what_reads_as_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("bert-base-uncased") == ("bert-base-uncased", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    for not_hub in ("bundled:all-MiniLM-L6-v2", "s3://bucket/enc", "/abs/dir", "./rel",
                    "~/enc", "a/b/c", "org/na--me", "org/../x", "", "org/name@", "c:\\x"):
        assert parse_hub_id(not_hub) is None, not_hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "local").mkdir(parents=True)
    assert parse_hub_id("org/local") is None  # an existing local path wins


def test_cached_id_resolves_offline_and_pins_to_the_commit(
        hf_cache: Path, tiny_encoder_dir: Path) -> None:
    snapshot = add_snapshot(hf_cache, "org/tiny", SHA1, tiny_encoder_dir)
    assert resolve_encoder_dir("org/tiny") == snapshot
    assert pin_encoder_path("org/tiny") == f"org/tiny@{SHA1}"
    assert pin_encoder_path(f"org/tiny@{SHA1}") == f"org/tiny@{SHA1}"
    assert resolve_encoder_dir(f"org/tiny@{SHA1}") == snapshot
    assert pin_encoder_path("bundled:all-MiniLM-L6-v2") == "bundled:all-MiniLM-L6-v2"


def test_lineage_follows_the_commit_not_the_branch(
        hf_cache: Path, tiny_encoder_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    add_snapshot(hf_cache, "org/tiny", SHA1, tiny_encoder_dir)
    data = {"name": "exp", "storage_path": str(tmp_path / "runs"),
            "encoder": {"path": "org/tiny"}, "tasks": [{"name": "rotten_tomatoes"}],
            "student": {"encoder": "org/tiny"},
            "teachers": {"variation": {"encoder": ["org/tiny", "bundled:all-MiniLM-L6-v2"]}}}
    config = config_from_dict(data)
    pinned = pin_encoders(config)
    assert config.encoder.path == "org/tiny"  # the caller's config is left alone
    assert pinned.encoder.path == pinned.student.encoder == f"org/tiny@{SHA1}"
    assert pinned.teachers.variation.encoder == [f"org/tiny@{SHA1}",
                                                 "bundled:all-MiniLM-L6-v2"]
    before = lineage("tokenized_task", pinned, task_index=0)

    seen: list[str] = []

    def record(ctx: StageContext) -> dict:
        seen.append(ctx.config.encoder.path)
        return {}

    stages = [Stage("a", record, lambda c: c.encoder.path, "records the encoder")]
    run_pipeline(config, stages=stages)
    assert seen == [f"org/tiny@{SHA1}"]
    saved = yaml.safe_load((tmp_path / "runs" / "exp" / "config.yaml").read_text())
    assert saved["encoder"]["path"] == f"org/tiny@{SHA1}"
    assert stale_stages(config, _store(tmp_path), stages) == {}

    # `main` moves to a new commit: a new process sees it, the lineage changes
    add_snapshot(hf_cache, "org/tiny", SHA2, tiny_encoder_dir)  # refs/main -> SHA2
    monkeypatch.setattr(pretrained, "_RESOLVED", {})
    moved = pin_encoders(config)
    assert moved.encoder.path == f"org/tiny@{SHA2}"
    assert lineage("tokenized_task", moved, task_index=0) != before
    assert stale_stages(config, _store(tmp_path), stages) == {"a": "stale"}
    run_pipeline(config, stages=stages)
    assert seen == [f"org/tiny@{SHA1}", f"org/tiny@{SHA2}"]


def _store(tmp_path: Path):
    from mtkd.storage import Storage

    return Storage.from_uri(str(tmp_path / "runs")).child("exp")


def test_uncached_id_offline_is_a_clear_error(hf_cache: Path) -> None:
    with pytest.raises(MtkdError) as err:
        resolve_encoder_dir("org/absent")
    message = str(err.value)
    for needed in ("'org/absent'", "HF_HUB_OFFLINE=1", str(hf_cache), "fix:",
                   "local directory", "bundled:all-MiniLM-L6-v2"):
        assert needed in message, (needed, message)


def test_repo_without_safetensors_is_refused(hf_cache: Path, tiny_encoder_dir: Path) -> None:
    snapshot = add_snapshot(hf_cache, "org/pickled", SHA1, tiny_encoder_dir, weights=False)
    (snapshot / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(MtkdError, match=r"no \*.safetensors weights.*safetensors only"):
        resolve_encoder_dir("org/pickled")


def _validate(tmp_path: Path, cache: Path, encoder: str, layers: int = 2
              ) -> subprocess.CompletedProcess:
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "name": "exp", "storage_path": str(tmp_path / "runs"), "encoder": {"path": encoder},
        "tasks": [{"name": "rotten_tomatoes", "max_length": 32}],
        "student": {"num_layers": layers}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mtkd", "validate", str(config)], cwd=tmp_path,
                          env=env, text=True, capture_output=True, timeout=120)


def test_mtkd_validate_offline(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    """Uncached id with HF_HUB_OFFLINE=1: exit 2 naming it; a cached one is read from the
    cache and checked (its 2 layers against student.num_layers)."""
    cache = tmp_path / "hf"
    add_snapshot(cache, "org/tiny", SHA1, tiny_encoder_dir)
    missing = _validate(tmp_path, cache, "org/absent")
    assert missing.returncode == 2, missing.stderr
    assert "encoder.path" in missing.stderr and "'org/absent'" in missing.stderr
    assert "HF_HUB_OFFLINE=1" in missing.stderr and "Traceback" not in missing.stderr
    cached = _validate(tmp_path, cache, "org/tiny")
    assert cached.returncode == 0, cached.stderr
    assert "not checked here" not in cached.stdout
    too_deep = _validate(tmp_path, cache, "org/tiny", layers=3)
    assert too_deep.returncode == 2 and "has 2 layers" in too_deep.stderr
