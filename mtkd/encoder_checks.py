"""Checks of a config against the encoders it names, before anything runs.

The prepare stage tokenizes every task once, with ``encoder.path``'s tokenizer; every
member and the student read those token ids. An encoder with another tokenizer would
train on ids that mean different words to its embeddings, and its saved model would
tokenize differently at ``mtkd predict`` than in training. Until mixed tokenizers are
supported, such configs are refused here, naming the key and both tokenizers.

Used by ``mtkd validate`` (``local_only``: encoders already on this machine — a local
folder or a cached bundled asset — are checked; others are named as not checked) and
before a run writes anything (every encoder, downloading as the stages would).
"""

from __future__ import annotations

from pathlib import Path

from mtkd.config import ExperimentConfig
from mtkd.errors import ConfigError, Problem

PROBES = ("Hello World! It's 3:45pm in São Paulo, naïve café.",
          "the QUICK brown fox; don't-stop 12345 ünïcödé 日本語 🙂")
"""Texts whose token ids two tokenizers must agree on (case, accents, digits, CJK,
emoji and punctuation: where uncased/cased, WordPiece/BPE vocabularies differ)."""


def encoder_keys(config: ExperimentConfig) -> dict[str, str]:
    """Every config key naming an encoder other than ``encoder.path``: {key: path}."""
    keys: dict[str, str] = {}
    variation = config.teachers.variation
    for i, path in enumerate(variation.encoder):
        keys[f"teachers.variation.encoder.{i}"] = path
    for i, member in enumerate(variation.members):
        if member.encoder:
            keys[f"teachers.variation.members.{i}.encoder"] = member.encoder
    if config.student.encoder:
        keys["student.encoder"] = config.student.encoder
    return {key: path for key, path in keys.items() if path != config.encoder.path}


def tokenizer_difference(first: Path, second: Path) -> str | None:
    """None when the two encoder folders' tokenizers give the same token ids (same
    vocabulary, same normalisation), else how they differ."""
    from mtkd.data.tokenize import load_tokenizer
    from mtkd.pretrained import tokenizer_fingerprint

    if tokenizer_fingerprint(first) == tokenizer_fingerprint(second):
        return None
    a, b = load_tokenizer(first), load_tokenizer(second)
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a != vocab_b:
        return (f"{type(a).__name__} with {len(vocab_a)} tokens vs {type(b).__name__} with "
                f"{len(vocab_b)} tokens; vocabularies differ")
    words = [w for w in sorted(vocab_a, key=vocab_a.__getitem__) if w.isalpha()][:300]
    for text in (*PROBES, " ".join(w.capitalize() for w in words), " ".join(words).upper()):
        ids_a, ids_b = a(text)["input_ids"], b(text)["input_ids"]
        if ids_a != ids_b:
            return (f"same vocabulary but {text!r} becomes {a.convert_ids_to_tokens(ids_a)} vs "
                    f"{b.convert_ids_to_tokens(ids_b)} (casing or normalisation differ)")
    return None


def _available(path: str) -> bool:
    """Whether ``path`` resolves without a download."""
    from mtkd import assets
    from mtkd.pretrained import BUNDLED_PREFIX

    if path.startswith(BUNDLED_PREFIX):
        name = path[len(BUNDLED_PREFIX):]
        return any(a.name == name and a.present for a in assets.list_assets())
    return "://" not in path


def tokenizer_problems(config: ExperimentConfig, local_only: bool = False
                       ) -> tuple[list[Problem], list[str]]:
    """Problems with encoders whose tokenizer differs from ``encoder.path``'s, and the keys
    left unchecked (with ``local_only``: encoders that would need a download)."""
    from mtkd.errors import MtkdError
    from mtkd.pretrained import resolve_encoder_dir

    others = encoder_keys(config)
    if not others:
        return [], []
    if local_only and not _available(config.encoder.path):
        return [], sorted(others)
    try:
        reference = resolve_encoder_dir(config.encoder.path)
    except MtkdError as exc:
        return [Problem("encoder.path", str(exc), "see the fix above")], []
    problems, unchecked = [], []
    for key, path in others.items():
        if local_only and not _available(path):
            unchecked.append(key)
            continue
        try:
            folder = resolve_encoder_dir(path)
        except MtkdError as exc:
            problems.append(Problem(key, str(exc), "point it at an encoder folder"))
            continue
        difference = tokenizer_difference(reference, folder)
        if difference:
            problems.append(Problem(
                key, f"{path!r} has another tokenizer than encoder.path "
                f"{config.encoder.path!r} ({difference}); every task is tokenized once with "
                "encoder.path's tokenizer, so this encoder would read ids of another "
                "vocabulary",
                "use an encoder with the same tokenizer as encoder.path (e.g. the same "
                "model family), or remove the key (mixed tokenizers are not supported yet)"))
    return problems, unchecked


def check_tokenizers(config: ExperimentConfig, source: str, local_only: bool = False
                     ) -> list[str]:
    """Raise ConfigError (exit 2) listing every tokenizer problem; returns the keys not
    checked (``local_only``)."""
    problems, unchecked = tokenizer_problems(config, local_only)
    if problems:
        raise ConfigError(problems, source)
    return unchecked
