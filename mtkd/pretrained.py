"""Where a pretrained encoder's files are: bundled asset, local folder, s3:// folder, or
a Hugging Face Hub repo.

Every model-loading path goes through :func:`resolve_encoder_dir`, so the rest of the
code only ever sees a local directory that ``AutoModel``/``AutoTokenizer`` can read
offline.

A Hub id (``org/name`` or ``name``, optionally ``@revision``) is downloaded through
``huggingface_hub.snapshot_download`` into Hugging Face's own cache (``HF_HUB_CACHE``,
default ``~/.cache/huggingface/hub``): config, tokenizer files and ``*.safetensors``
weights only (mtkd loads safetensors, never pickles). A branch or tag is mutable, so the
pipeline pins every Hub encoder to the commit it resolves to (:func:`pin_encoder_path`,
``org/name@<40-hex sha>``) before any lineage is computed: a moved ``main`` rebuilds what
was built from the old commit. ``HF_HUB_OFFLINE=1`` works from a populated cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtkd import assets
from mtkd.errors import MtkdError

if TYPE_CHECKING:
    from mtkd.config import ExperimentConfig

BUNDLED_PREFIX = "bundled:"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "merges.txt", "spm.model",
                   "sentencepiece.bpe.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


def bundled_encoders() -> list[str]:
    """Names of the pinned assets that are encoders (they hold a config.json):
    all-MiniLM-L6-v2 (default set) and all-mpnet-base-v2 (opt-in, fetched on first use)."""
    return [name for name, spec in assets.ASSETS.items()
            if any(f.name == "config.json" for f in spec.files)]


def s3_copy_dir(path: str, cache: str | Path | None = None) -> Path:
    """Where an ``s3://`` encoder is copied in the cache (it may not be there yet)."""
    return assets.cache_dir(cache) / "encoders" / hashlib.sha256(path.encode()).hexdigest()[:16]


def resolve_encoder_dir(path: str, cache: str | Path | None = None) -> Path:
    """A local directory holding the encoder's config, weights and tokenizer.

    ``bundled:NAME`` is a pinned encoder asset (:func:`bundled_encoders`; fetched on first
    use); ``s3://...`` is copied once into the cache; anything else must be an existing
    local directory.
    """
    if path.startswith(BUNDLED_PREFIX):
        name = path[len(BUNDLED_PREFIX):]
        if name not in bundled_encoders():
            choices = " or ".join(BUNDLED_PREFIX + n for n in bundled_encoders())
            raise MtkdError(f"unknown bundled encoder {name!r} (fix: use {choices}, or a "
                            "checkpoint directory)")
        return assets.asset_dir(name, cache)
    if path.startswith("s3://"):
        from mtkd.storage import Storage

        local = s3_copy_dir(path, cache)
        if not (local / "config.json").exists():
            tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
            Storage.from_uri(path).download_dir("", tmp)
            if local.exists():  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.replace(local)
        return local
    hub = parse_hub_id(path)
    if hub is not None:
        return resolve_hub(*hub).directory
    local = Path(path).expanduser()
    if not (local / "config.json").is_file():
        raise MtkdError(f"encoder directory {local} has no config.json (fix: point "
                        "encoder.path at a transformers checkpoint saved with "
                        "save_pretrained, a Hugging Face Hub id such as "
                        "sentence-transformers/all-MiniLM-L6-v2, or use "
                        "bundled:all-MiniLM-L6-v2 or bundled:all-mpnet-base-v2)")
    return local


# ------------------------------------------------------------------ Hugging Face Hub

HUB_PATTERNS = ("config.json", *TOKENIZER_FILES, "*.safetensors",
                "model.safetensors.index.json")
"""What is downloaded from a Hub repo: config, tokenizer files and safetensors weights
(never ``*.bin``/``pytorch_model*``: weights are loaded with safetensors only)."""

_HUB_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"^(?:{_HUB_NAME}/)?{_HUB_NAME}$")
_REVISION = re.compile(r"^[\w.-]+(?:/[\w.-]+)*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubSnapshot:
    """A Hub encoder resolved to one commit: the snapshot folder in the HF cache."""

    repo_id: str
    revision: str | None
    """What was asked for (None: the default branch)."""
    commit: str
    """The 40-hex commit sha the snapshot is (what lineages record)."""
    directory: Path


_RESOLVED: dict[tuple[str, str | None], HubSnapshot] = {}
"""Hub ids resolved in this process: one look-up per id, and one commit for a whole run
even if the branch moves meanwhile."""


def parse_hub_id(path: str) -> tuple[str, str | None] | None:
    """``(repo id, revision or None)`` when ``path`` reads as a Hugging Face Hub repo id
    (``org/name`` or ``name``, optionally ``@revision``), else None.

    An existing local path always wins; ``bundled:``, ``s3://`` and paths starting with
    ``/``, ``.`` or ``~`` (or holding ``\\``, ``..`` or ``--``) are never Hub ids."""
    if (not path or path.startswith((BUNDLED_PREFIX, "s3://", "/", ".", "~"))
            or "\\" in path or ":" in path):
        return None
    repo, _, revision = path.partition("@")
    if not _HUB_ID.match(repo) or ".." in repo or "--" in repo or repo.endswith(".git"):
        return None
    if "@" in path and not _REVISION.match(revision):
        return None
    if Path(path).expanduser().exists():
        return None
    return repo, revision or None


def _hub_error(repo: str, revision: str | None, err: BaseException) -> MtkdError:
    """An MtkdError naming the id, what failed, and the fixes."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    shown = f"{repo}@{revision}" if revision else repo
    other = ("or point encoder.path at a local directory holding a transformers checkpoint, "
             "or use bundled:all-MiniLM-L6-v2 / bundled:all-mpnet-base-v2")
    if isinstance(err, GatedRepoError):
        return MtkdError(f"Hugging Face Hub repo {shown!r} is gated and this machine has no "
                         "access (fix: accept its terms on huggingface.co and log in with "
                         f"`hf auth login` or set HF_TOKEN, {other})")
    if isinstance(err, RepositoryNotFoundError):
        return MtkdError(f"Hugging Face Hub has no repo {repo!r} that this machine may read "
                         "(unknown id, or private without a token) (fix: check the spelling, "
                         f"log in with `hf auth login` / HF_TOKEN for a private repo, {other})")
    if isinstance(err, RevisionNotFoundError):
        return MtkdError(f"Hugging Face Hub repo {repo!r} has no revision {revision!r} "
                         "(fix: use an existing branch, tag or commit sha after '@', or "
                         "leave '@...' out for the default branch)")
    cache = constants.HF_HUB_CACHE
    unreachable = isinstance(err, LocalEntryNotFoundError | ConnectionError) or (
        isinstance(err, OSError) and not isinstance(err, HfHubHTTPError))
    if unreachable:
        why = ("offline mode is on (HF_HUB_OFFLINE=1)" if constants.is_offline_mode()
               else f"the Hub could not be reached ({type(err).__name__})")
        return MtkdError(
            f"encoder {shown!r} (a Hugging Face Hub id) is not in the Hugging Face cache "
            f"{cache} (or only partly) and {why} (fix: download it once with network access "
            f"— any mtkd command that reads it, or `hf download {repo}` — after which "
            f"HF_HUB_OFFLINE=1 works from the cache; {other})")
    return MtkdError(f"cannot download encoder {shown!r} from the Hugging Face Hub: "
                     f"{type(err).__name__}: {err} (fix: retry, {other})")


def resolve_hub(repo: str, revision: str | None = None) -> HubSnapshot:
    """Download (or find in the HF cache) the encoder files of Hub repo ``repo`` at
    ``revision`` (None: the default branch) and return the snapshot.

    Honours ``HF_HUB_CACHE``/``HF_HOME``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``. Raises
    MtkdError naming the id, what failed and the fix: unknown, private or gated repo,
    unknown revision, not cached while offline or unreachable, no safetensors weights."""
    key = (repo, revision)
    if key in _RESOLVED:
        return _RESOLVED[key]
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, revision=revision,
                                        allow_patterns=list(HUB_PATTERNS)))
    except Exception as err:
        module = type(err).__module__
        if not (module.startswith(("huggingface_hub", "httpx", "requests", "urllib3"))
                or isinstance(err, OSError | ConnectionError)):
            raise
        raise _hub_error(repo, revision, err) from err
    shown = f"{repo}@{revision}" if revision else repo
    if not (folder / "config.json").is_file():
        raise MtkdError(f"Hugging Face Hub repo {shown!r} has no config.json at commit "
                        f"{folder.name} (fix: use a transformers model repo, e.g. "
                        "sentence-transformers/all-MiniLM-L6-v2)")
    if not any(folder.glob("*.safetensors")):
        raise MtkdError(f"Hugging Face Hub repo {shown!r} has no *.safetensors weights at "
                        f"commit {folder.name}; mtkd loads safetensors only, never pickled "
                        "*.bin files (fix: pick a revision with safetensors weights, e.g. the "
                        "Hub's automatic conversion `@refs/pr/N`, or convert it yourself and "
                        "point encoder.path at that directory)")
    snapshot = HubSnapshot(repo, revision, folder.name, folder)
    _RESOLVED[key] = snapshot
    _RESOLVED.setdefault((repo, folder.name), snapshot)
    return snapshot


def cached_hub_dir(repo: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of a Hub encoder if it is already in the HF cache (no network,
    no download), else None."""
    if (repo, revision) in _RESOLVED:
        return _RESOLVED[(repo, revision)].directory
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, revision=revision, local_files_only=True,
                                        allow_patterns=list(HUB_PATTERNS)))
    except Exception:
        return None
    return folder if (folder / "config.json").is_file() else None


def pin_encoder_path(path: str) -> str:
    """A Hub id pinned to the commit it resolves to now (``org/name@<sha>``); any other
    path (and an id already pinned to a commit sha) unchanged. Resolving downloads the
    snapshot (or finds it in the cache, e.g. with HF_HUB_OFFLINE=1)."""
    hub = parse_hub_id(path)
    if hub is None or (hub[1] is not None and _COMMIT.match(hub[1])):
        return path
    return f"{hub[0]}@{resolve_hub(*hub).commit}"


def pin_encoders(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with every Hub encoder (``encoder.path``, ``teachers.variation.encoder``,
    members' ``encoder``, ``student.encoder``) pinned to its commit (a copy; the same
    object when there is none), so lineages record the commit, not a mutable branch."""
    import copy

    paths = [config.encoder.path, *config.teachers.variation.encoder,
             *(m.encoder for m in config.teachers.variation.members if m.encoder),
             *([config.student.encoder] if config.student.encoder else [])]
    if not any(parse_hub_id(p) for p in paths):
        return config
    pinned = copy.deepcopy(config)
    pinned.encoder.path = pin_encoder_path(pinned.encoder.path)
    variation = pinned.teachers.variation
    variation.encoder = [pin_encoder_path(p) for p in variation.encoder]
    for member in variation.members:
        if member.encoder:
            member.encoder = pin_encoder_path(member.encoder)
    if pinned.student.encoder:
        pinned.student.encoder = pin_encoder_path(pinned.student.encoder)
    return pinned


def tokenizer_fingerprint(encoder_dir: Path) -> str:
    """Content hash of the tokenizer files, so re-tokenization happens only when they change."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        file = encoder_dir / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text",
                "xlm-roberta-xl", "roberta-prelayernorm")
"""Model types whose position ids start after the padding index (pad_token_id + 1): a
table of 514 positions holds 512 tokens."""


def max_tokens(encoder_dir: Path) -> tuple[int | None, str]:
    """The most tokens one input to the encoder may have, and where that comes from: its
    config.json's max_position_embeddings (less the padding offset of RoBERTa-style
    models; none for relative-position models such as DeBERTa-v2/v3 with
    position_biased_input false), capped by the tokenizer's model_max_length."""
    import json

    limit: int | None = None
    why = ""
    config = json.loads((encoder_dir / "config.json").read_text(encoding="utf-8"))
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and config.get("position_biased_input", True) is not False:
        offset = 0
        if config.get("model_type") in ROBERTA_LIKE:
            offset = int(config.get("pad_token_id") or 1) + 1
        limit = positions - offset
        why = (f"max_position_embeddings {positions}"
               + (f" less the padding offset {offset} ({config.get('model_type')})"
                  if offset else ""))
    tokenizer_config = encoder_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        cap = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(cap, int) and cap < 1_000_000 and (limit is None or cap < limit):
            limit, why = cap, f"the tokenizer's model_max_length {cap}"
    return limit, why
