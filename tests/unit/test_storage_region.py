"""Which S3 region a Storage uses (issue 20 item 5): AWS_REGION, else on AWS the bucket's
own region (looked up once per process), else us-east-1 for S3-compatible servers."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from mtkd import storage
from mtkd.errors import StorageError
from mtkd.storage import Storage

ENV = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the network lookup: buckets named 'eu-*' live in eu-west-1, others fail."""
    asked: list[str] = []

    def resolve(bucket: str) -> str:
        asked.append(bucket)
        if bucket.startswith("eu-"):
            return "eu-west-1"
        raise OSError("When resolving region for bucket: AWS Error NETWORK_CONNECTION")

    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pafs, "resolve_s3_region", resolve)
    storage.bucket_region.cache_clear()
    yield asked
    storage.bucket_region.cache_clear()


@pytest.mark.parametrize(("env", "uri", "region", "asked"), [
    ({"AWS_REGION": "ap-south-1"}, "s3://eu-data/x", "ap-south-1", []),
    ({"AWS_DEFAULT_REGION": "us-west-2"}, "s3://eu-data/x", "us-west-2", []),
    ({"AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "us-west-2"}, "s3://b/x",
     "ap-south-1", []),
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:8333"}, "s3://eu-data/x", "us-east-1", []),
    ({"AWS_ENDPOINT_URL_S3": "http://minio:9000"}, "s3://eu-data", "us-east-1", []),
    ({}, "s3://eu-data/runs/exp", "eu-west-1", ["eu-data"]),
])
def test_region_comes_from_env_else_the_bucket(
        lookups: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str], uri: str,
        region: str, asked: list[str]) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert Storage.from_uri(uri).filesystem.region == region
    assert lookups == asked


def test_bucket_region_is_looked_up_once_per_bucket(lookups: list[str]) -> None:
    for uri in ("s3://eu-data/a", "s3://eu-data/b", "s3://eu-other", "s3://eu-data"):
        Storage.from_uri(uri)
    assert lookups == ["eu-data", "eu-other"]


def test_failed_lookup_names_the_bucket_and_the_fix(lookups: list[str]) -> None:
    with pytest.raises(StorageError) as info:
        Storage.from_uri("s3://my-bucket/runs")
    text = str(info.value)
    assert "'my-bucket'" in text and "set AWS_REGION" in text and "NETWORK_CONNECTION" in text
