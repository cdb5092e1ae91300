"""The shared encoder: load a transformers checkpoint offline, keep its first k layers, pool.

Works for any checkpoint ``AutoModel`` knows whose layers sit in one ``nn.ModuleList``
(BERT, RoBERTa, ELECTRA, DeBERTa(-v2), MPNet: ``encoder.layer``; DistilBERT:
``transformer.layer``). MPNet's relative position bias lives in the encoder itself
(``encoder.relative_attention_bias``, shared by all layers), so keeping the first k layers
keeps it.
The pooler layer (BERT's dense + tanh on [CLS]) is dropped where the architecture allows it:
MT-DNN heads pool the token states themselves (:func:`pool`), and an unused parameter
would only confuse DDP/DeepSpeed.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from mtkd.errors import MtkdError

LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")
"""Where architectures keep their list of transformer blocks, tried in order."""
DROPOUT_ATTRS = ("hidden_dropout_prob", "attention_probs_dropout_prob",  # BERT family
                 "dropout", "attention_dropout")  # DistilBERT
POOLINGS = ("cls", "mean")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars; we check the loading info."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def find_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """``(parent, attribute, layers)`` of the model's transformer-block list."""
    for path in LAYER_PATHS:
        *parents, attr = path.split(".")
        parent: nn.Module | None = model
        for name in parents:
            parent = getattr(parent, name, None)
        layers = getattr(parent, attr, None) if parent is not None else None
        if isinstance(layers, nn.ModuleList) and parent is not None:
            return parent, attr, layers
    raise MtkdError(f"cannot find the layer list of {type(model).__name__} (looked for "
                    f"{', '.join(LAYER_PATHS)}); fix: use a BERT, RoBERTa, ELECTRA, DeBERTa, "
                    "MPNet or DistilBERT checkpoint, or leave encoder num_layers unset")


def truncate_layers(model: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """Keep the first ``num_layers`` transformer blocks (in place) and fix the config."""
    layers = find_layers(model)[2]
    if not 1 <= num_layers <= len(layers):
        raise MtkdError(f"cannot keep {num_layers} layers of a {len(layers)}-layer "
                        f"{model.config.model_type} encoder (fix: set num_layers between 1 "
                        f"and {len(layers)})")
    return select_layers(model, range(num_layers))


def select_layers(model: PreTrainedModel, indices: Sequence[int]) -> PreTrainedModel:
    """Keep the transformer blocks at ``indices`` (0-based, in that order; in place) and
    fix the config's layer count (and ``layer_types`` where the config has them)."""
    parent, attr, layers = find_layers(model)
    indices = list(indices)
    if not indices or any(not 0 <= i < len(layers) for i in indices):
        raise MtkdError(f"layer indices {indices} are outside the {len(layers)} layers "
                        f"of the {model.config.model_type} encoder")
    setattr(parent, attr, nn.ModuleList([layers[i] for i in indices]))
    model.config.num_hidden_layers = len(indices)
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list):
        model.config.layer_types = [layer_types[i] for i in indices]
    return model


def _set_dropout(config: PretrainedConfig, dropout: float) -> None:
    names = [a for a in DROPOUT_ATTRS if isinstance(getattr(config, a, None), float | int)]
    if not names:
        raise MtkdError(f"cannot set dropout of a {config.model_type} encoder: its config has "
                        f"none of {', '.join(DROPOUT_ATTRS)} (fix: leave dropout unset)")
    for name in names:
        setattr(config, name, float(dropout))


def load_encoder(encoder_dir: str | Path, num_layers: int | None = None,
                 dropout: float | None = None, *, strict: bool = False,
                 safetensors_only: bool = False) -> PreTrainedModel:
    """Load the encoder in ``encoder_dir`` (local files only), in float32, in train mode.

    ``num_layers`` keeps the first k blocks; ``dropout`` overrides the config's hidden and
    attention dropout. Uses PyTorch SDPA attention where the architecture supports it,
    eager otherwise. ``strict`` turns missing weights (randomly initialized encoder
    parameters) into an error instead of a warning; ``safetensors_only`` refuses pickled
    ``*.bin`` weights. Input ``input_ids`` [B, T] → ``last_hidden_state`` [B, T, H].
    """
    path = Path(encoder_dir)
    if not (path / "config.json").is_file():
        raise MtkdError(f"encoder directory {path} has no config.json (fix: point at a "
                        "checkpoint saved with save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise MtkdError(f"cannot read {path / 'config.json'}: {err}") from err
    if dropout is not None:
        _set_dropout(config, dropout)
    kwargs: dict = {"config": config, "local_files_only": True, "dtype": torch.float32,
                    "output_loading_info": True}
    if safetensors_only:
        kwargs["use_safetensors"] = True
    model_cls = AutoModel._model_mapping.get(type(config), None)
    if model_cls is not None and "add_pooling_layer" in inspect.signature(model_cls).parameters:
        kwargs["add_pooling_layer"] = False
    model, info = None, {}
    with quiet_transformers():
        for attn in ("sdpa", "eager"):
            try:
                model, info = AutoModel.from_pretrained(str(path), attn_implementation=attn,
                                                        **kwargs)
                break
            except ValueError as err:
                if attn == "eager" or "attention" not in str(err).lower():
                    raise MtkdError(f"cannot load encoder {path}: {err}") from err
            except (OSError, SafetensorError) as err:
                raise MtkdError(f"cannot load encoder weights from {path} (missing or "
                                f"corrupt weights file): {err}") from err
    assert model is not None
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        message = (f"encoder {path} lacks {len(missing)} weight(s), randomly initialized: "
                   f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if strict:
            raise MtkdError(f"{message} (fix: re-save the model; the file is incomplete)")
        warnings.warn(message, stacklevel=2)
    if getattr(model, "pooler", None) is not None:  # no add_pooling_layer for this arch
        model.pooler = None
    if num_layers is not None:
        truncate_layers(model, num_layers)
    model.train()
    return model


def uses_token_types(encoder: PreTrainedModel) -> bool:
    """Whether the encoder has segment (token type) embeddings worth feeding (BERT: yes,
    RoBERTa: one type only, DeBERTa-v2 and MPNet: none; MPNet's forward takes no
    ``token_type_ids``)."""
    return int(getattr(encoder.config, "type_vocab_size", 0) or 0) > 1


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "cls") -> torch.Tensor:
    """One vector per sequence: hidden [B, T, H], attention_mask [B, T] → [B, H].

    ``cls``: the first token's state (MT-DNN); ``mean``: the mean over real tokens
    (sentence-transformers, the pooling all-MiniLM-L6-v2 was trained with).
    """
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    raise MtkdError(f"unknown pooling {how!r} (fix: use one of {', '.join(POOLINGS)})")


__all__ = ["POOLINGS", "find_layers", "load_encoder", "pool", "quiet_transformers",
           "select_layers", "truncate_layers", "uses_token_types"]
