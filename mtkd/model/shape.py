"""Student shapes: which layers of the initialising encoder a student keeps, and how wide it is.

Depth (XtremeDistil, Mukherjee, Awadallah, Gao 2021, section 3; DistilBERT, Sanh et al.
2019, section 3, takes every other layer): ``first`` keeps layers 1..k; ``every_nth`` keeps
k layers spread evenly over the L of the encoder, layer ``round((i + 1) * L / k)`` for
i = 0..k-1 (1-based), i.e. every n-th layer ending with the last when n = L / k is whole
(12 → 6: layers 2, 4, 6, 8, 10, 12).

Width (a student narrower than its initialisation, e.g. hidden 256 from MiniLM's 384): the
pretrained matrices are compressed, as XtremeDistil compresses its embeddings by SVD
(section 3.2). One orthonormal basis ``P`` [H, r] of the residual stream, the top-r right
singular vectors of the word-embedding matrix (truncated SVD), is applied to every matrix
that reads or writes the residual stream, so the residual additions stay consistent:

* embeddings (word, position, segment) ``E P``; every LayerNorm's bias ``P^T b`` and its
  scale ``diag(P^T diag(g) P)`` (the closest diagonal, in Frobenius norm, to the rotated
  scale);
* attention: the number of heads shrinks and the head size stays (so each kept head
  computes exactly what it did on the projected input, with the same 1/sqrt(d) scaling):
  ``r / head_size`` heads are kept per layer, those with the largest ||W_V,h|| ||W_O,h||
  (Frobenius norms of the head's value rows and output columns); query/key/value
  ``W[kept] P``, the output ``P^T W_O[:, kept]``;
* feed-forward: the intermediate width shrinks by the same ratio r / H (XtremeDistil's
  students keep BERT's 4x), keeping the neurons with the largest ||W_1,j|| ||W_2,j||;
  ``W_1[kept] P`` and ``P^T W_2[:, kept]``.

The result is a plain transformers model of the smaller config (``save_pretrained`` /
``from_pretrained`` as usual), so export, ``mtkd predict`` and ``mtkd export`` work
unchanged. Width reduction needs the BERT parameter layout (BERT, RoBERTa, MiniLM and
other ``BertModel``-style checkpoints); other architectures are refused naming
``student.hidden_size``.
"""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from mtkd.errors import MtkdError
from mtkd.model.encoder import find_layers, select_layers

LayerSelection = Literal["first", "every_nth"]
LAYER_SELECTIONS = ("first", "every_nth")


@dataclass(frozen=True)
class EncoderShape:
    """How a student encoder is cut from its initialising encoder."""

    num_layers: int | None = None
    """Layers kept (None: all)."""
    layers: LayerSelection = "first"
    """Which layers: the first k, or k spread evenly (:func:`layer_indices`)."""
    hidden_size: int | None = None
    """Residual-stream width (None: the encoder's); smaller widths are made by
    :func:`narrow_encoder`."""

    def apply(self, encoder: PreTrainedModel) -> PreTrainedModel:
        """The encoder cut to this shape (layers first, then width). Raises MtkdError for a
        shape the encoder cannot take."""
        if self.num_layers is not None:
            total = len(find_layers(encoder)[2])
            select_layers(encoder, layer_indices(total, self.num_layers, self.layers))
        if self.hidden_size is not None and self.hidden_size != encoder.config.hidden_size:
            encoder = narrow_encoder(encoder, self.hidden_size)
        return encoder


def student_shape(student: Any) -> EncoderShape:
    """The shape of a ``StudentConfig`` (student.num_layers, layer_selection,
    hidden_size)."""
    return EncoderShape(student.num_layers, student.layer_selection, student.hidden_size)


def spread(i: int, total: int, count: int) -> int:
    """round(i * total / count), halves rounded up, in integers: the i-th of ``count``
    points spread evenly over 1..``total`` (the uniform layer choice, of layers kept and of
    the representation-distillation layer map)."""
    return (2 * i * total + count) // (2 * count)


def layer_indices(total: int, keep: int, how: LayerSelection = "first") -> list[int]:
    """0-based indices of the ``keep`` layers of a ``total``-layer encoder that ``how``
    keeps: ``first`` 0..keep-1; ``every_nth`` round((i + 1) * total / keep) - 1
    (:func:`spread`)."""
    if not 1 <= keep <= total:
        raise MtkdError(f"cannot keep {keep} layers of a {total}-layer encoder (fix: set "
                        f"num_layers between 1 and {total})")
    if how == "first":
        return list(range(keep))
    if how == "every_nth":
        return [spread(i + 1, total, keep) - 1 for i in range(keep)]
    raise MtkdError(f"unknown layer selection {how!r} (fix: one of {', '.join(LAYER_SELECTIONS)})")


# --------------------------------------------------------------------------- width
_LAYER = r"encoder\.layer\.\d+\."
_RULES: tuple[tuple[str, str], ...] = (
    (r"embeddings\.(word|position|token_type)_embeddings\.weight", "embedding"),
    (r"(.*\.)?LayerNorm\.weight", "norm_scale"),
    (r"(.*\.)?LayerNorm\.bias", "stream_bias"),
    (_LAYER + r"attention\.self\.(query|key|value)\.weight", "head_in"),
    (_LAYER + r"attention\.self\.(query|key|value)\.bias", "head_bias"),
    (_LAYER + r"attention\.output\.dense\.weight", "head_out"),
    (_LAYER + r"attention\.output\.dense\.bias", "stream_bias"),
    (_LAYER + r"intermediate\.dense\.weight", "ffn_in"),
    (_LAYER + r"intermediate\.dense\.bias", "ffn_bias"),
    (_LAYER + r"output\.dense\.weight", "ffn_out"),
    (_LAYER + r"output\.dense\.bias", "stream_bias"),
)


def _rule(key: str) -> str | None:
    for pattern, rule in _RULES:
        if re.fullmatch(pattern, key):
            return rule
    return None


def residual_basis(word_embeddings: torch.Tensor, width: int) -> torch.Tensor:
    """P [H, r]: the top-``width`` right singular vectors of the word-embedding matrix
    E [V, H] (truncated SVD), orthonormal columns. Computed as the eigenvectors of E^T E
    (the same vectors, by decreasing singular value), which gives all H of them even for a
    vocabulary smaller than H."""
    e = word_embeddings.double()
    values, vectors = torch.linalg.eigh(e.T @ e)  # ascending eigenvalues
    order = torch.argsort(values, descending=True)[:width]
    return vectors[:, order].to(torch.float32).contiguous()


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in their original order."""
    return torch.sort(torch.topk(scores, k).indices).values


def narrowed_config(config: PretrainedConfig, hidden_size: int) -> PretrainedConfig:
    """The config of ``config``'s encoder at width ``hidden_size``: heads of the same size
    (hidden_size / head size of them), intermediate width scaled by hidden_size / H.
    Raises MtkdError when the width is not a positive multiple of the head size <= H."""
    width = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head = width // heads
    if not 0 < hidden_size <= width or hidden_size % head:
        raise MtkdError(
            f"student.hidden_size {hidden_size} does not fit the {config.model_type} encoder "
            f"(hidden {width}, {heads} heads of size {head}): the narrow student keeps the "
            f"head size and drops heads (fix: a multiple of {head} up to {width}, e.g. "
            f"{head * max(1, heads // 2)})")
    if not hasattr(config, "intermediate_size"):
        raise MtkdError(f"student.hidden_size: the {config.model_type} encoder has no "
                        "intermediate_size (fix: leave student.hidden_size unset)")
    out = copy.deepcopy(config)
    out.hidden_size = hidden_size
    out.num_attention_heads = hidden_size // head
    out.intermediate_size = max(1, round(int(config.intermediate_size) * hidden_size / width))
    return out


def narrow_encoder(model: PreTrainedModel, hidden_size: int) -> PreTrainedModel:
    """A new encoder of width ``hidden_size`` initialised from ``model``'s pretrained
    matrices (module docstring; Mukherjee et al. 2021, section 3.2). Float32, same mode
    (train/eval) and attention implementation as ``model``. Raises MtkdError for a width
    the encoder cannot take or an architecture without the BERT parameter layout."""
    config = model.config
    small = narrowed_config(config, hidden_size)
    check_layout(model)
    state = model.state_dict()
    p = residual_basis(state["embeddings.word_embeddings.weight"].float(), hidden_size)
    head = int(config.hidden_size) // int(config.num_attention_heads)
    kept = _kept_units(state, head, small)
    new_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        rule = _rule(key)
        layer = re.match(r"encoder\.layer\.(\d+)\.", key)
        heads, neurons = kept.get(int(layer.group(1)), (None, None)) if layer else (None, None)
        new_state[key] = _narrow(rule, value.float(), p, heads, neurons) if rule else value
    cls = type(model)
    kwargs: dict[str, Any] = {}
    if "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    small._attn_implementation = config._attn_implementation
    narrow = cls(small, **kwargs)
    if getattr(narrow, "pooler", None) is not None:
        narrow.pooler = None
    narrow.load_state_dict(new_state, strict=True)
    return narrow.float().train(model.training)


def check_layout(model: nn.Module) -> None:
    """Raise MtkdError unless every parameter of ``model`` (but a pooler, which MT-DNN
    drops) has a narrowing rule: the BERT parameter layout. Works on the meta device."""
    names = [k for k, _ in model.named_parameters() if not k.startswith("pooler.")]
    unknown = [k for k in names if _rule(k) is None]
    if "embeddings.word_embeddings.weight" not in names:
        unknown.insert(0, "no embeddings.word_embeddings")
    if unknown:
        raise MtkdError(f"student.hidden_size: cannot narrow a {model.config.model_type} "
                        f"encoder (outside the BERT parameter layout: {', '.join(unknown[:3])}"
                        ") (fix: a BERT/RoBERTa-style encoder, or leave student.hidden_size "
                        "unset)")


def _kept_units(state: dict[str, torch.Tensor], head: int, small: PretrainedConfig
                ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: the rows of the kept heads (all their head_size rows) and the kept
    feed-forward neurons."""
    kept = {}
    layers = sorted({int(m.group(1)) for k in state
                     if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        at = f"encoder.layer.{i}."
        w_v = state[at + "attention.self.value.weight"].float()  # [H_all, H]
        w_o = state[at + "attention.output.dense.weight"].float()  # [H, H_all]
        n_heads = w_v.shape[0] // head
        score = (w_v.reshape(n_heads, head, -1).flatten(1).norm(dim=1)
                 * w_o.T.reshape(n_heads, head, -1).flatten(1).norm(dim=1))
        heads = _top(score, int(small.num_attention_heads))
        rows = (heads[:, None] * head + torch.arange(head)).flatten()
        w_1 = state[at + "intermediate.dense.weight"].float()  # [I, H]
        w_2 = state[at + "output.dense.weight"].float()  # [H, I]
        neurons = _top(w_1.norm(dim=1) * w_2.norm(dim=0), int(small.intermediate_size))
        kept[i] = (rows, neurons)
    return kept


def _narrow(rule: str, value: torch.Tensor, p: torch.Tensor, heads: torch.Tensor | None,
            neurons: torch.Tensor | None) -> torch.Tensor:
    """One pretrained tensor brought to the narrow shape (see the module docstring)."""
    return _NARROWING[rule](value, p, heads, neurons)


_NARROWING: dict[str, Any] = {
    # rule: (value, p [H, h], kept head rows, kept feed-forward neurons) -> narrow value
    "embedding": lambda v, p, heads, neurons: v @ p,
    "norm_scale": lambda v, p, heads, neurons: (p * p).T @ v,
    "stream_bias": lambda v, p, heads, neurons: p.T @ v,
    "head_in": lambda v, p, heads, neurons: v[heads] @ p,
    "head_bias": lambda v, p, heads, neurons: v[heads],
    "head_out": lambda v, p, heads, neurons: p.T @ v[:, heads],
    "ffn_in": lambda v, p, heads, neurons: v[neurons] @ p,
    "ffn_bias": lambda v, p, heads, neurons: v[neurons],
    "ffn_out": lambda v, p, heads, neurons: p.T @ v[:, neurons],
}


def shaped_parameters(encoder_dir: str | Path, shape: EncoderShape
                      ) -> tuple[int, PretrainedConfig]:
    """(parameter count, config) of the encoder in ``encoder_dir`` cut to ``shape``,
    computed on the meta device (no weights read, no memory): what ``mtkd validate``
    prints. The pooler is not counted (MT-DNN heads pool themselves). Raises MtkdError
    for a shape the encoder cannot take (depth, width, architecture)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(encoder_dir), local_files_only=True)
    total = int(config.num_hidden_layers)
    if shape.num_layers is not None:
        layer_indices(total, shape.num_layers, shape.layers)  # raises for a bad depth
        config.num_hidden_layers = shape.num_layers
    narrow = shape.hidden_size is not None and shape.hidden_size != config.hidden_size
    if narrow:
        config = narrowed_config(config, shape.hidden_size)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    if narrow:
        check_layout(model)
    pooler = getattr(model, "pooler", None)
    skip = {id(p) for p in pooler.parameters()} if isinstance(pooler, nn.Module) else set()
    count = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()
                if id(p) not in skip)
    return count, config


__all__ = [
    "LAYER_SELECTIONS",
    "EncoderShape",
    "LayerSelection",
    "check_layout",
    "layer_indices",
    "narrow_encoder",
    "narrowed_config",
    "residual_basis",
    "shaped_parameters",
    "spread",
    "student_shape",
]
