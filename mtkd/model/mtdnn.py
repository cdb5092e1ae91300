"""MT-DNN: one shared encoder, one small head per task (Liu et al. 2019, namisan/mt-dnn).

``model(task, input_ids, attention_mask, token_type_ids, candidate_mask)`` returns, with
B = batch size, T = sequence length, K = candidates, C = classes:

* classification / pair classification: logits [B, C] (SAN heads: log-probabilities);
* regression: scores [B];
* ranking (inputs [B, K, T], ``candidate_mask`` [B, K]): scores [B, K], padded candidates
  set to :data:`mtkd.padding.PAD_SCORE`; only real candidates are run through the encoder.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from mtkd.errors import MtkdError
from mtkd.model.encoder import POOLINGS, load_encoder, pool, uses_token_types
from mtkd.model.heads import LinearHead, RankingHead, SANClassifier
from mtkd.model.shape import EncoderShape
from mtkd.tasks.spec import TaskSpec

BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "candidate_mask")


@dataclass(frozen=True)
class HeadOptions:
    """How the heads are built; saved with the model (``mtdnn.json``)."""

    pooling: str = "cls"
    """"cls" (first token) or "mean" (mean of real tokens) for linear and ranking heads."""
    dropout: float = 0.1
    """Dropout before every head's output layer (and inside SAN)."""
    san: bool = False
    """Stochastic answer network heads for (pair) classification tasks."""
    san_steps: int = 5
    san_step_dropout: float = 0.1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeadOptions:
        return cls(pooling=str(data["pooling"]), dropout=float(data["dropout"]),
                   san=bool(data["san"]), san_steps=int(data["san_steps"]),
                   san_step_dropout=float(data["san_step_dropout"]))


def _seed_for(seed: int, task: str) -> int:
    """Per-task seed: a head's init depends on the seed and its task name only, so adding
    or reordering tasks leaves the other heads' init unchanged."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % 2**63


def build_heads(specs: Iterable[TaskSpec], hidden_size: int, options: HeadOptions,
                init_std: float = 0.02, seed: int = 0) -> nn.ModuleDict:
    """One head per task: ranking → RankingHead; classification → SAN if ``options.san``;
    otherwise (and for regression) LinearHead. Initialized reproducibly from ``seed``
    without touching the global RNG state."""
    heads = nn.ModuleDict()
    for spec in specs:
        if not spec.name or "." in spec.name:
            raise MtkdError(f"task name {spec.name!r} cannot name a head (fix: a non-empty "
                            "name without dots)")
        kind = spec.kind
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_for(seed, spec.name))
            if kind.head == "ranking":
                heads[spec.name] = RankingHead(hidden_size, options.dropout, init_std)
            elif kind.head != "linear":
                raise MtkdError(f"task {spec.name!r}: unknown head kind {kind.head!r}")
            elif options.san and not kind.is_regression:
                heads[spec.name] = SANClassifier(
                    hidden_size, spec.num_outputs, options.san_steps, options.san_step_dropout,
                    options.dropout, init_std)
            else:
                heads[spec.name] = LinearHead(hidden_size, spec.num_outputs, options.dropout,
                                              init_std)
    return heads


class MTDNN(nn.Module):
    """Shared encoder + per-task heads. ``specs`` and ``options`` say how heads were built."""

    def __init__(self, encoder: PreTrainedModel, heads: nn.ModuleDict,
                 specs: Sequence[TaskSpec], options: HeadOptions) -> None:
        super().__init__()
        if options.pooling not in POOLINGS:
            raise MtkdError(f"unknown pooling {options.pooling!r} (fix: one of {POOLINGS})")
        self.encoder = encoder
        self.heads = heads
        self.specs: dict[str, TaskSpec] = {s.name: s for s in specs}
        if len(self.specs) != len(specs) or set(self.specs) != set(heads.keys()):
            raise MtkdError("task names must be unique and match the heads one to one")
        self.options = options
        self.uses_token_types = uses_token_types(encoder)

    @property
    def pooling(self) -> str:
        return self.options.pooling

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: torch.Tensor | None = None,
               all_layers: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Token states: ids/masks [N, T] → (last layer [N, T, H], every layer's states
        (embeddings first, L + 1 tensors [N, T, H]) if ``all_layers`` else ())."""
        kwargs = {"token_type_ids": token_type_ids} if self.uses_token_types else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=all_layers, return_dict=True, **kwargs)
        return out.last_hidden_state, tuple(out.hidden_states or ()) if all_layers else ()

    def forward_with_hidden(
        self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None, candidate_mask: torch.Tensor | None = None,
        all_layers: bool = True,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """:meth:`forward` plus the encoder's hidden states (for hidden-state distillation).

        For ranking the states are those of the real candidates only, [N, T, H] with
        N = ``candidate_mask.sum()``, in row-major order."""
        head = self._head(task)
        if isinstance(head, RankingHead):
            mask = self._candidates(attention_mask, candidate_mask)
            ids, am, types = self.encoder_rows(task, input_ids, attention_mask, token_type_ids,
                                               candidate_mask)
            hidden, layers = self.encode(ids, am, types, all_layers)
            return head(pool(hidden, am, self.pooling), mask), layers
        hidden, layers = self.encode(input_ids, attention_mask, token_type_ids, all_layers)
        if isinstance(head, SANClassifier):
            return head(hidden, *_san_masks(attention_mask, token_type_ids)), layers
        out = head(pool(hidden, attention_mask, self.pooling))
        return (out.squeeze(-1) if self.specs[task].kind.is_regression else out), layers

    @staticmethod
    def _candidates(attention_mask: torch.Tensor,
                    candidate_mask: torch.Tensor | None) -> torch.Tensor:
        return (attention_mask.any(-1) if candidate_mask is None else candidate_mask).bool()

    def encoder_rows(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     token_type_ids: torch.Tensor | None = None,
                     candidate_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The rows ``task``'s batch puts through the encoder: (ids, attention mask, token
        types), each [N, T]. The batch itself (N = B) except for ranking, whose [B, K, T]
        inputs give their real candidates only (N = ``candidate_mask.sum()``, row-major).
        Another encoder that reads the same rows (a representation teacher) gets states
        that align with :meth:`forward_with_hidden`'s."""
        if not isinstance(self._head(task), RankingHead):
            return input_ids, attention_mask, token_type_ids
        mask = self._candidates(attention_mask, candidate_mask)
        types = token_type_ids[mask] if token_type_ids is not None else None
        return input_ids[mask], attention_mask[mask], types

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None,
                candidate_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs of ``task``'s head (shapes in the module docstring)."""
        return self.forward_with_hidden(task, input_ids, attention_mask, token_type_ids,
                                        candidate_mask, all_layers=False)[0]

    def forward_batch(self, task: str, batch: Mapping[str, Any]) -> torch.Tensor:
        """:meth:`forward` on a collated batch (extra keys such as labels are ignored)."""
        return self(task, **{k: batch[k] for k in BATCH_KEYS if batch.get(k) is not None})

    def _head(self, task: str) -> nn.Module:
        if task not in self.specs:
            raise MtkdError(f"the model has no task {task!r} (it has: {', '.join(self.specs)})")
        return self.heads[task]


def keep_tasks(model: MTDNN, tasks: Sequence[str]) -> MTDNN:
    """The same model with only ``tasks``' heads (shares the encoder; for per-task
    fine-tuning from a multi-task checkpoint)."""
    missing = [t for t in tasks if t not in model.specs]
    if missing:
        raise MtkdError(f"the model has no task(s) {', '.join(missing)} "
                        f"(it has: {', '.join(model.specs)})")
    heads = nn.ModuleDict({t: model.heads[t] for t in tasks})
    return MTDNN(model.encoder, heads, [model.specs[t] for t in tasks], model.options)


def _san_masks(attention_mask: torch.Tensor,
               token_type_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """SAN memory (premise: segment 0) and query (hypothesis: segment 1) masks [B, T];
    rows without a second segment use the whole sequence for both."""
    real = attention_mask.bool()
    if token_type_ids is None:
        return real, real
    premise, hypothesis = real & (token_type_ids == 0), real & (token_type_ids == 1)
    has_pair = hypothesis.any(-1, keepdim=True)
    return torch.where(has_pair, premise, real), torch.where(has_pair, hypothesis, real)


def build_mtdnn(encoder_dir: str | Path, specs: Sequence[TaskSpec], num_layers: int | None = None,
                dropout: float | None = 0.1, pooling: str = "cls", san: bool = False,
                seed: int = 0, san_steps: int = 5, san_step_dropout: float = 0.1, *,
                shape: EncoderShape | None = None) -> MTDNN:
    """A fresh MT-DNN: the pretrained encoder in ``encoder_dir`` (first ``num_layers``
    layers, or cut to ``shape``: layers and width, see :mod:`mtkd.model.shape`) and newly
    initialized heads for ``specs``.

    ``dropout`` is the heads' dropout and, unless None, also overrides the encoder's hidden
    and attention dropout (None keeps the checkpoint's, and heads use its hidden dropout).
    """
    if not specs:
        raise MtkdError("an MT-DNN needs at least one task")
    if shape is not None and num_layers is not None:
        raise ValueError("give num_layers or shape, not both")
    encoder = load_encoder(encoder_dir, num_layers=num_layers, dropout=dropout)
    if shape is not None:
        encoder = shape.apply(encoder)
    head_dropout = dropout if dropout is not None else float(
        getattr(encoder.config, "hidden_dropout_prob", 0.1))
    options = HeadOptions(pooling=pooling, dropout=head_dropout, san=san, san_steps=san_steps,
                          san_step_dropout=san_step_dropout)
    heads = build_heads(specs, encoder.config.hidden_size, options,
                        float(getattr(encoder.config, "initializer_range", 0.02)), seed)
    return MTDNN(encoder, heads, specs, options)


def _unique(params: Iterable[nn.Parameter]) -> dict[int, nn.Parameter]:
    return {id(p): p for p in params}


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of ``model`` (shared tensors counted once)."""
    return sum(p.numel() for p in _unique(model.parameters()).values()
               if p.requires_grad or not trainable_only)


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters outside the embedding tables (word, position, segment embeddings and their
    LayerNorm): N in the ≈ 6·N·tokens FLOPs of a training step (Kaplan et al. 2020)."""
    encoder = model.encoder if isinstance(model, MTDNN) else model
    embeddings = getattr(encoder, "embeddings", None)
    if not isinstance(embeddings, nn.Module) and hasattr(encoder, "get_input_embeddings"):
        embeddings = encoder.get_input_embeddings()
    skip = _unique(embeddings.parameters()) if isinstance(embeddings, nn.Module) else {}
    return sum(p.numel() for key, p in _unique(model.parameters()).items() if key not in skip)
