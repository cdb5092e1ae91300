"""Storage against a local folder and a real S3 server (SeaweedFS), with the same tests."""

from __future__ import annotations

import pickle
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from s3server import RequestRecorder, S3Server, free_port, start_seaweedfs

from mtkd.errors import StorageError
from mtkd.storage import SINGLE_PUT_BYTES, Storage


@pytest.fixture
def store(storage_uri: str) -> Storage:
    storage = Storage.from_uri(storage_uri)
    storage.check_access()
    return storage


def _temp_leftovers(store: Storage) -> list[str]:
    return [p for p in store.list("", recursive=True) if ".tmp-" in p]


# ------------------------------------------------------------------ both backends


def test_round_trip_bytes_text_json(store: Storage) -> None:
    store.write_bytes("a/b.bin", b"\x00\x01data")
    store.write_text("a/c.txt", "héllo\n")
    store.write_json("a/d.json", {"b": 1, "a": [1.5, None]}, sort_keys=True)
    assert store.read_bytes("a/b.bin") == b"\x00\x01data"
    assert store.read_text("a/c.txt") == "héllo\n"
    assert store.read_json("a/d.json") == {"a": [1.5, None], "b": 1}
    assert store.read_text("a/d.json").startswith('{\n  "a"')
    store.write_bytes("a/b.bin", b"new")  # overwrite
    assert store.read_bytes("a/b.bin") == b"new"
    with store.open_output("s/stream.bin") as out:
        out.write(b"streamed")
    with store.open_input("s/stream.bin") as inp:
        assert inp.read() == b"streamed"


def test_exists_is_dir_and_list(store: Storage) -> None:
    for rel in ("x/1.txt", "x/2.txt", "x/sub/3.txt", "x/sub/deep/4.txt", "y.txt"):
        store.write_text(rel, rel)
    assert store.exists("x/1.txt") and not store.is_dir("x/1.txt")
    assert store.exists("x/sub") and store.is_dir("x/sub")
    assert not store.exists("nope") and not store.is_dir("nope")
    assert store.list() == ["x", "y.txt"]
    assert store.list("x") == ["1.txt", "2.txt", "sub"]
    assert store.list("x", recursive=True) == ["1.txt", "2.txt", "sub/3.txt", "sub/deep/4.txt"]
    assert store.list("", recursive=True) == [
        "x/1.txt", "x/2.txt", "x/sub/3.txt", "x/sub/deep/4.txt", "y.txt"]
    assert store.list("missing") == [] and store.list("missing", recursive=True) == []
    assert store.list("y.txt") == []


def test_copy_file_and_dir(store: Storage) -> None:
    store.write_text("src/a.txt", "A")
    store.write_text("src/d/b.txt", "B")
    store.copy("src/a.txt", "one/two/a-copy.txt")
    assert store.read_text("one/two/a-copy.txt") == "A"
    store.copy("src", "dst")
    assert store.list("dst", recursive=True) == ["a.txt", "d/b.txt"]
    assert store.read_text("dst/d/b.txt") == "B"
    assert store.read_text("src/a.txt") == "A"  # source untouched
    with pytest.raises(StorageError, match=r"not found: .*missing"):
        store.copy("missing", "x")


def test_delete_file_and_dir(store: Storage) -> None:
    store.write_text("keep.txt", "k")
    store.write_text("f.txt", "f")
    store.write_text("d/1.txt", "1")
    store.write_text("d/e/2.txt", "2")
    store.delete("f.txt")
    store.delete("d")
    store.delete("never-existed")
    store.delete("never/existed/either.txt")
    assert store.list("", recursive=True) == ["keep.txt"]
    store.delete("")  # empties the root, keeps it usable
    assert store.list("", recursive=True) == []
    store.write_text("again.txt", "a")
    assert store.read_text("again.txt") == "a"


def test_upload_download_round_trip(store: Storage, tmp_path: Path) -> None:
    src = tmp_path / "up"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "top.bin").write_bytes(bytes(range(256)) * 1000)
    (src / "nested" / "n.txt").write_text("n")
    (src / "nested" / "deeper" / "d.json").write_text('{"k": 1}')
    store.upload_dir(src, "ckpt/step-1")
    assert store.list("ckpt/step-1", recursive=True) == [
        "nested/deeper/d.json", "nested/n.txt", "top.bin"]
    dst = tmp_path / "down" / "here"
    store.download_dir("ckpt/step-1", dst)
    got = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert got == ["nested/deeper/d.json", "nested/n.txt", "top.bin"]
    assert (dst / "top.bin").read_bytes() == (src / "top.bin").read_bytes()
    with pytest.raises(StorageError, match="not found"):
        store.download_dir("ckpt/missing", tmp_path / "x")
    with pytest.raises(StorageError, match="local folder not found"):
        store.upload_dir(tmp_path / "no-such-dir", "x")


def test_write_atomic_replaces_content(store: Storage) -> None:
    store.write_atomic("manifests/m.json", b"old")
    assert store.read_bytes("manifests/m.json") == b"old"
    store.write_json_atomic("manifests/m.json", {"status": "done", "n": 2})
    assert store.read_json("manifests/m.json") == {"status": "done", "n": 2}
    store.write_atomic("top-level.txt", b"t")
    assert store.read_bytes("top-level.txt") == b"t"
    assert _temp_leftovers(store) == []


def test_write_atomic_failure_keeps_old_content(
        store: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write_json_atomic("manifests/m.json", {"v": 1})

    with pytest.raises(TypeError):  # serialisation fails before anything is written
        store.write_json_atomic("manifests/m.json", {"v": object()})
    assert store.read_json("manifests/m.json") == {"v": 1}

    def crash(self: Storage, tmp: str, rel: str) -> None:
        assert store.exists(tmp)  # the new content is fully written, but not yet committed
        raise KeyboardInterrupt("killed before commit")

    monkeypatch.setattr(Storage, "_commit", crash)
    # On S3 only a write above the single-PUT size goes through a temporary.
    big = {"v": 2, "pad": "x" * (SINGLE_PUT_BYTES + 1)}
    with pytest.raises(KeyboardInterrupt):
        store.write_json_atomic("manifests/m.json", big)
    assert store.read_json("manifests/m.json") == {"v": 1}
    assert _temp_leftovers(store) == []
    assert store.list("manifests") == ["m.json"]


def test_child_views(store: Storage) -> None:
    exp = store.child("experiments", "exp1")
    exp.write_text("config.yaml", "a: 1\n")
    assert store.read_text("experiments/exp1/config.yaml") == "a: 1\n"
    assert exp.uri == store.uri_of("experiments/exp1")
    assert exp.child("data").uri_of("x") == store.uri_of("experiments/exp1/data/x")
    assert exp.filesystem is store.filesystem
    assert exp.list() == ["config.yaml"]
    assert store.child().uri == store.uri


def test_locations_work_with_pyarrow_directly(store: Storage) -> None:
    store.write_text("d/f.txt", "via pyarrow")
    path = store.full_path("d/f.txt")
    assert path == f"{store.root}/d/f.txt"
    with store.filesystem.open_input_stream(path) as f:
        assert f.read() == b"via pyarrow"
    assert store.uri_of("d/f.txt") in (path, f"s3://{path}")
    assert store.uri_of("d//f.txt/") == store.uri_of("d/f.txt")
    with pytest.raises(StorageError, match="inside the storage root"):
        store.read_text("../outside.txt")


def test_missing_file_read_names_the_uri(store: Storage) -> None:
    for read in (store.read_bytes, store.read_text, store.read_json, store.open_input):
        with pytest.raises(StorageError) as info:
            read("no/such/file.json")
        assert f"not found: {store.uri_of('no/such/file.json')}" in str(info.value)


def test_invalid_json_is_a_storage_error(store: Storage) -> None:
    store.write_text("bad.json", "{nope")
    with pytest.raises(StorageError, match="not valid JSON"):
        store.read_json("bad.json")


# ------------------------------------------------------------------ local only


def test_local_paths_and_check_access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = Storage.from_uri("runs/exp")
    assert rel.uri == str(tmp_path / "runs" / "exp") == rel.root
    assert Storage.from_uri(f"file://{tmp_path}/runs/exp").uri == rel.uri
    assert not (tmp_path / "runs").exists()
    rel.check_access()
    assert (tmp_path / "runs" / "exp").is_dir()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        Storage.from_uri(str(tmp_path / "a-file")).check_access()
    with pytest.raises(StorageError, match="cannot create"):
        Storage.from_uri(str(tmp_path / "a-file" / "below")).check_access()
    with pytest.raises(StorageError, match="unsupported storage scheme"):
        Storage.from_uri("gs://bucket/x")


# ------------------------------------------------------------------ S3 only


@pytest.mark.s3
def test_s3_uri_endpoint_and_no_secrets(s3_env: str, s3_server: S3Server) -> None:
    store = Storage.from_uri(s3_env)
    bucket = s3_env.split("/")[2]
    assert store.uri == s3_env and store.root == f"{bucket}/prefix"
    assert repr(store) == str(store) == f"Storage({s3_env!r})"
    assert isinstance(store.filesystem, pafs.S3FileSystem)
    store.write_text("x.txt", "x")
    # what Ray would ship to workers carries no credentials
    pickled = pickle.dumps(store) + pickle.dumps(store.filesystem)
    assert s3_server.secret_key.encode() not in pickled
    assert pickle.loads(pickle.dumps(store)).read_text("x.txt") == "x"
    # the object really is in the bucket, under the prefix
    body = s3_server.client().get_object(Bucket=bucket, Key="prefix/x.txt")["Body"].read()
    assert body == b"x"
    with pytest.raises(StorageError, match="contains credentials") as info:
        Storage.from_uri("s3://AKIAXX:hunter22@bucket/p")
    assert "hunter22" not in str(info.value)
    with pytest.raises(StorageError, match="names no bucket"):
        Storage.from_uri("s3://")


@pytest.mark.s3
def test_s3_wrong_secret_is_clear_fast_and_secret_free(
        s3_env: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "wrong-" + s3_server.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    store = Storage.from_uri(s3_env)
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.check_access()
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "instance profile" in message and s3_env.split("/")[2] in message
    for op in (lambda: store.read_text("x"), lambda: store.write_text("x", "y"), store.list):
        with pytest.raises(StorageError) as info:
            op()
        assert "AWS_SECRET_ACCESS_KEY" in str(info.value)
        assert wrong not in str(info.value) and s3_server.secret_key not in str(info.value)
    assert wrong not in message and s3_server.secret_key not in message
    assert wrong not in repr(store)


@pytest.mark.s3
def test_s3_atomic_write_is_one_put_up_to_the_single_put_size(
        s3_env: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """An atomic write of a manifest to S3 is exactly one PUT of the final key (S3 shows an
    object whole or not at all); above SINGLE_PUT_BYTES it goes through a temporary."""
    with RequestRecorder(s3_server.endpoint_url) as recorder:
        monkeypatch.setenv("AWS_ENDPOINT_URL", recorder.endpoint_url)
        store = Storage.from_uri(s3_env)
        bucket, prefix = s3_env[len("s3://"):].split("/", 1)
        cases = [("manifests/small.json", b"{}"),
                 ("manifests/edge.bin", b"e" * SINGLE_PUT_BYTES),
                 ("manifests/big.bin", b"b" * (SINGLE_PUT_BYTES + 1))]
        sent = {}
        for rel, data in cases:
            recorder.requests.clear()
            store.write_atomic(rel, data)
            sent[rel] = list(recorder.requests)
            assert store.read_bytes(rel) == data
    for rel, _ in cases[:2]:
        assert sent[rel] == [("PUT", f"/{bucket}/{prefix}/{rel}")], sent[rel]
    big = sent["manifests/big.bin"]
    final = f"/{bucket}/{prefix}/manifests/big.bin"
    assert big[0][0] == "PUT" and "/manifests/.big.bin.tmp-" in big[0][1], big
    assert ("PUT", final) in big, big  # the server-side copy onto the final key
    assert [r for r in big if r[1] == final] == [("PUT", final)], big
    assert _temp_leftovers(store) == []


def test_s3_missing_bucket_is_named(s3_env: str) -> None:
    store = Storage.from_uri("s3://no-such-bucket-mtkd/prefix")
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.check_access()
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "'no-such-bucket-mtkd' does not exist" in message and "create it" in message
    with pytest.raises(StorageError, match="not found: s3://no-such-bucket-mtkd/prefix/f"):
        store.read_text("f")


@pytest.mark.s3
def test_s3_unreachable_endpoint_fails_fast(
        s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    store = Storage.from_uri(s3_env)
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.check_access()
    assert time.monotonic() - start < 15
    assert dead.removeprefix("http://") in str(info.value)
    assert "AWS_ENDPOINT_URL" in str(info.value)
    with pytest.raises(StorageError, match="no answer from the S3 endpoint"):
        store.read_bytes("f")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://user:pw@host")
    with pytest.raises(StorageError, match="must be an http") as info:
        Storage.from_uri(s3_env)
    assert "pw" not in str(info.value)


@pytest.mark.s3
def test_s3_silent_endpoint_times_out_fast(
        s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint that accepts connections but never answers (hung server, wrong service)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        store = Storage.from_uri(s3_env)
        start = time.monotonic()
        with pytest.raises(StorageError, match="no answer from the S3 endpoint"):
            store.check_access()
        assert time.monotonic() - start < 15



# ------------------------------------------------------------------ a server that fails writes


@pytest.fixture(scope="module")
def full_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS with room for one bucket's data: its first bucket takes the only
    volume, so every write into another bucket is answered with a 500 (InternalError)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("full-seaweedfs"), max_volumes=1)
    try:
        server.client().put_object(Bucket=server.create_bucket(), Key="first", Body=b"x")
        yield server
    finally:
        server.stop(timeout_s=3)  # it may hang on its failed writes; killed then


def _full_store(full_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Storage:
    for var, value in (("AWS_ENDPOINT_URL", full_s3.endpoint_url),
                       ("AWS_ACCESS_KEY_ID", full_s3.access_key),
                       ("AWS_SECRET_ACCESS_KEY", full_s3.secret_key),
                       ("AWS_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(var, value)
    return Storage.from_uri(f"s3://{full_s3.create_bucket()}/prefix", max_attempts=1)


def _model_folder(root: Path) -> Path:
    (root / "encoder").mkdir(parents=True)
    (root / "encoder" / "config.json").write_text('{"hidden_size": 4}')
    (root / "mtdnn.json").write_text('{"specs": []}')
    (root / "heads.safetensors").write_bytes(bytes(range(256)) * 64)
    return root


# Every way mtkd writes to S3, each given a failing server: each must raise a StorageError
# naming the location, and leave no object behind that looks written. (pyarrow's
# copy_files, which upload_dir used, swallowed the 500 and left empty objects: a model
# "uploaded" that way loaded as "mtdnn.json is not valid JSON".)
WRITES = {
    "write_bytes": lambda store, tmp: store.write_bytes("a/b.bin", b"payload"),
    "write_json": lambda store, tmp: store.write_json("a/c.json", {"k": 1}),
    "write_atomic small": lambda store, tmp: store.write_atomic("m.json", b"{}"),
    "write_atomic large": lambda store, tmp: store.write_atomic(
        "m.bin", b"x" * (SINGLE_PUT_BYTES + 1)),
    "upload_dir": lambda store, tmp: store.upload_dir(_model_folder(tmp / "model"), "model"),
    "upload_dir multipart": lambda store, tmp: store.upload_dir(_big_folder(tmp / "big"), "big"),
    "open_output": lambda store, tmp: _write_stream(store),
}


def _big_folder(root: Path) -> Path:
    root.mkdir()
    (root / "weights.bin").write_bytes(b"w" * (12 * 1024 * 1024))  # above one 10 MB part
    return root


def _write_stream(store: Storage) -> None:
    with store.open_output("stream.bin") as out:
        out.write(b"chunk")


@pytest.mark.s3
@pytest.mark.parametrize("write", list(WRITES))
def test_a_failed_s3_write_raises_and_leaves_nothing(
        write: str, full_s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = _full_store(full_s3, monkeypatch)
    with pytest.raises(StorageError, match=rf"{re.escape(store.uri)}/\S+ failed: "
                                           r".*(INTERNAL_FAILURE|InternalError)"):
        WRITES[write](store, tmp_path)
    left = full_s3.client().list_objects_v2(Bucket=store.uri.split("/")[2])
    assert left.get("Contents", []) == []
