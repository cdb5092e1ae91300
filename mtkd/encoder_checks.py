"""Checks of a config against the encoders it names, before anything runs.

* **Tokenizers.** Encoders may use different tokenizers: the prepare stage tokenizes
  every task once per distinct tokenizer and every model reads its own encoder's
  tokenization (:mod:`mtkd.tokenizations`). :func:`tokenizer_groups` lists the distinct
  tokenizers and which keys use each (``mtkd validate`` prints them); nothing is refused.
* **Positions.** A task's ``max_length`` must fit every encoder's positions
  (:func:`mtkd.pretrained.max_tokens`): longer inputs would fail or be silently wrong.
* **Depth.** ``encoder.num_layers`` / ``student.num_layers`` may not exceed the layers of
  their encoder (it would fail in every worker, retried until the run gives up).
* **Student shape and representation teacher** (:mod:`mtkd.student.checks`): width and
  layer selection against the student's encoder; the representation teacher's tokenizer
  must be the student's.

Used by ``mtkd validate`` (``local_only``: encoders already on this machine — a local
folder, a cached bundled asset, s3:// copy or Hugging Face Hub snapshot — are checked;
a Hub id that is not cached while HF_HUB_OFFLINE=1 is an error; the others are named as not
checked) and by the pipeline before a run writes anything (every encoder, fetched as the
stages would fetch it).
"""

from __future__ import annotations

import json
from pathlib import Path

from mtkd import assets
from mtkd.config import ExperimentConfig
from mtkd.errors import ConfigError, MtkdError, Problem
from mtkd.pretrained import (
    BUNDLED_PREFIX,
    cached_hub_dir,
    max_tokens,
    parse_hub_id,
    s3_copy_dir,
)

TokenizerGroup = tuple[str, str, list[str]]
"""(tokenizer fingerprint, description, config keys of the encoders using it)."""

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


def local_encoder_dir(path: str) -> Path | None:
    """The encoder's directory if it can be read without a download, else None."""
    if path.startswith(BUNDLED_PREFIX):
        try:
            return assets.asset_dir(path[len(BUNDLED_PREFIX):], fetch=False)
        except MtkdError:
            return None
    if path.startswith("s3://"):
        local = s3_copy_dir(path)
        return local if (local / "config.json").is_file() else None
    hub = parse_hub_id(path)
    if hub is not None:
        return cached_hub_dir(*hub)
    local = Path(path).expanduser()
    return local if (local / "config.json").is_file() else None


def _hub_offline() -> bool:
    """Whether Hugging Face's offline mode is on (HF_HUB_OFFLINE=1): then an uncached Hub
    encoder can never be fetched, and ``mtkd validate`` says so instead of deferring."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def length_problems(config: ExperimentConfig) -> list[Problem]:
    """Problems of the tasks' max_length against every encoder the config uses (teachers'
    encoder.path, student.encoder, teachers.variation encoders): an input longer than the
    encoder's positions would fail or be silently wrong. Encoders that are not available
    without a download (an unfetched bundled asset, an uncached s3:// folder) are checked
    when the run fetches them (prepare)."""
    paths = {config.encoder.path: "encoder.path"}
    for key, path in encoder_keys(config).items():
        paths.setdefault(path, key)
    problems = []
    for path, key in paths.items():
        local = local_encoder_dir(path)
        if local is None:
            continue
        try:
            limit, why = max_tokens(local)
        except (OSError, ValueError) as exc:
            problems.append(Problem(key, f"cannot read {local / 'config.json'}: {exc}",
                                    "point it at a transformers checkpoint directory"))
            continue
        if limit is None:
            continue
        for index, task in enumerate(config.tasks):
            if task.max_length > limit:
                problems.append(Problem(
                    f"tasks.{index}.max_length", f"is {task.max_length} but the encoder "
                    f"{path} ({key}) takes at most {limit} tokens ({why})",
                    f"set tasks.{index}.max_length to {limit} or less"))
    return problems


def describe_tokenizer(encoder_dir: Path) -> str:
    """One phrase for a tokenizer: its class and vocabulary size."""
    from mtkd.data.tokenize import load_tokenizer

    tokenizer = load_tokenizer(encoder_dir)
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    kind = f" ({type(backend).__name__})" if backend is not None else ""
    return f"{type(tokenizer).__name__}{kind}, {len(tokenizer.get_vocab())} tokens"


def tokenizer_groups(config: ExperimentConfig, local_only: bool = False
                     ) -> tuple[list[TokenizerGroup], list[str]]:
    """The distinct tokenizers of the encoders the config names, ``encoder.path``'s
    first, each with its description and the keys using it; and the keys left unchecked
    (with ``local_only``: encoders that would need a download). Every distinct tokenizer
    gets its own tokenization of every task (:mod:`mtkd.tokenizations`)."""
    from mtkd.pretrained import resolve_encoder_dir, tokenizer_fingerprint

    keys = {"encoder.path": config.encoder.path, **encoder_keys(config)}
    groups: dict[str, TokenizerGroup] = {}
    first: Path | None = None
    unchecked = []
    for key, path in keys.items():
        if local_only and local_encoder_dir(path) is None:
            unchecked.append(key)
            continue
        try:
            folder = resolve_encoder_dir(path)
        except MtkdError:
            continue  # named by check_encoders (not local_only) or length_problems
        fp = tokenizer_fingerprint(folder)
        if fp not in groups:
            try:
                described = describe_tokenizer(folder)
                if first is not None and key != "encoder.path":
                    difference = tokenizer_difference(first, folder)
                    described += (f"; vs encoder.path's: {difference}" if difference else
                                  "; the same token ids as encoder.path's (other files)")
            except (OSError, ValueError) as exc:
                described = f"unreadable tokenizer ({exc})"
            groups[fp] = (fp, described, [])
        if key == "encoder.path":
            first = folder
        groups[fp][2].append(key)
    return list(groups.values()), unchecked


def depth_problems(config: ExperimentConfig) -> list[Problem]:
    """``encoder.num_layers`` (the teachers') and ``student.num_layers`` against the layers
    their encoders have (config.json's num_hidden_layers), for encoders on this machine:
    keeping more layers than exist would fail inside every worker."""
    wanted = [("encoder.num_layers", config.encoder.num_layers, config.encoder.path,
               "encoder.path"),
              ("student.num_layers", config.student.num_layers,
               config.student.encoder or config.encoder.path,
               "student.encoder" if config.student.encoder else "encoder.path")]
    problems = []
    for key, layers, path, where in wanted:
        local = local_encoder_dir(path) if layers else None
        if local is None:
            continue
        try:
            have = json.loads((local / "config.json").read_text(encoding="utf-8")).get(
                "num_hidden_layers")
        except (OSError, ValueError):
            continue  # named by length_problems
        if isinstance(have, int) and layers > have:
            problems.append(Problem(key, f"is {layers} but the encoder {path} ({where}) has "
                                    f"{have} layers", f"set {key} between 1 and {have}"))
    return problems


def check_encoders(config: ExperimentConfig, source: str, local_only: bool = False
                   ) -> list[str]:
    """Raise ConfigError (exit 2) listing every position and depth problem; returns the
    keys left unchecked (``local_only``: encoders not on this machine yet). Without
    ``local_only`` every encoder is fetched first, as the stages would."""
    from mtkd.pretrained import resolve_encoder_dir

    problems: list[Problem] = []
    if not local_only:
        for key, path in {"encoder.path": config.encoder.path, **encoder_keys(config)}.items():
            try:
                resolve_encoder_dir(path)
            except MtkdError as exc:
                problems.append(Problem(key, str(exc), "point it at an encoder folder"))
        if problems:
            raise ConfigError(problems, source)
    unchecked = []
    for key, path in {"encoder.path": config.encoder.path, **encoder_keys(config)}.items():
        if not local_only or local_encoder_dir(path) is not None:
            continue
        if parse_hub_id(path) is not None and _hub_offline():
            try:  # offline and not cached: it cannot be fetched later either
                resolve_encoder_dir(path)
            except MtkdError as exc:
                problems.append(Problem(key, str(exc)))
                continue
        unchecked.append(key)
    if problems:
        raise ConfigError(problems, source)
    from mtkd.student.checks import student_problems

    paths = {config.encoder.path, *encoder_keys(config).values()}
    problems = (length_problems(config) + depth_problems(config)
                + student_problems(config, {p: local_encoder_dir(p) for p in paths}))
    if problems:
        raise ConfigError(problems, source)
    return unchecked
