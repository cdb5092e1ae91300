"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from s3server import S3Server, start_seaweedfs

# ------------------------------------------------------------------------ S3 (SeaweedFS)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One ``weed mini`` S3 server for the session (127.0.0.1, free ports, random keys)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_* variables pointing at ``s3_server`` and a fresh bucket: ``s3://<bucket>/prefix``."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return f"s3://{s3_server.create_bucket()}/prefix"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty storage root: a local folder, then an S3 prefix (same tests for both)."""
    if request.param == "s3":
        return str(request.getfixturevalue("s3_env"))
    return str(tmp_path / "store")


# ------------------------------------------------------------------------ tiny models


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer, hidden-32 BERT with a word-level tokenizer (see tests/tiny.py)."""
    from tiny import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def model_dir(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved MT-DNN (save_mtdnn) on the tiny encoder with the four task kinds of
    ``tiny.FOUR_TASKS`` (classification, regression, pair classification, ranking)."""
    from tiny import FOUR_TASKS
    from transformers import AutoTokenizer

    from mtkd.model.io import save_mtdnn
    from mtkd.model.mtdnn import build_mtdnn

    model = build_mtdnn(tiny_encoder_dir, FOUR_TASKS, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    return save_mtdnn(model, tokenizer, tmp_path_factory.mktemp("four-tasks") / "model")


# ------------------------------------------------------------------------ DeepSpeed


@pytest.fixture(scope="module")
def process_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-rank gloo process group, as Ray Train sets it up for one worker (DeepSpeed
    engines join it)."""
    import datetime

    import torch.distributed as dist

    init = tmp_path_factory.mktemp("pg") / "init"
    with pytest.MonkeyPatch.context() as env:
        # What Ray Train's torch setup exports for its worker (DeepSpeed checks LOCAL_RANK).
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                           "LOCAL_WORLD_SIZE": "1"}.items():
            env.setenv(key, value)
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=60))
        try:
            yield
        finally:
            dist.destroy_process_group()
