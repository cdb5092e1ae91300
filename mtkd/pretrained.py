"""Where a pretrained encoder's files are: bundled asset, local folder, or s3:// folder.

Every model-loading path goes through :func:`resolve_encoder_dir`, so the rest of the
code only ever sees a local directory that ``AutoModel``/``AutoTokenizer`` can read
offline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from mtkd import assets
from mtkd.errors import MtkdError

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
    local = Path(path).expanduser()
    if not (local / "config.json").is_file():
        raise MtkdError(f"encoder directory {local} has no config.json (fix: point "
                        "encoder.path at a transformers checkpoint saved with "
                        "save_pretrained, or use bundled:all-MiniLM-L6-v2 or "
                        "bundled:all-mpnet-base-v2)")
    return local


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
