"""An mtkd MT-DNN task as a transformers sequence-classification model.

Written by ``mtkd export``; needs only torch and transformers (no mtkd). Load it with::

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    pipeline("text-classification", model=folder, trust_remote_code=True)

The model is the mtkd encoder (without its pooler) followed by mtkd's own pooling and
head, so it gives the same outputs as mtkd's prediction:

* ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the encoder uses segment
  types) [B, T] → ``logits`` [B, num_labels]: class logits (linear head), log-probabilities
  (SAN head; softmax gives back the probabilities) or one score (regression; ranking
  tasks export a (query, candidate) scorer: softmax over a query's candidates' scores).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_mtkd import MtkdConfig


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """hidden [B, T, H], attention_mask [B, T] → [B, H]: the first token (``cls``) or the
    mean over real tokens (``mean``)."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class LinearHead(nn.Module):
    """pooled [B, H] → dropout → linear → [B, num_outputs]."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, num_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled))


def _attend(memory: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """memory [B, T, H], scores [B, T], mask [B, T] → attention summary [B, H]."""
    fill = torch.finfo(torch.float32).min / 2
    scores = scores.float().masked_fill(~mask.bool(), fill)
    weights = torch.softmax(scores, dim=-1).to(memory.dtype)
    return torch.bmm(weights.unsqueeze(1), memory).squeeze(1)


class SANHead(nn.Module):
    """Stochastic answer network (Liu et al. 2018) as mtkd trains it, in eval mode (every
    reasoning step is averaged). memory [B, T, H] with memory / query masks [B, T] →
    log of the averaged class probabilities [B, C]. The GRU cell is computed from the
    ``nn.GRUCell`` weights by hand so that the ONNX exporter sees plain matrix products."""

    def __init__(self, hidden_size: int, num_outputs: int, num_steps: int = 5) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.summary = nn.Linear(hidden_size, 1)
        self.attend = nn.Linear(hidden_size, hidden_size, bias=False)
        self.gru = nn.GRUCell(hidden_size, hidden_size)
        self.classifier = nn.Linear(4 * hidden_size, num_outputs)

    def _gru(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gi = F.linear(x, self.gru.weight_ih, self.gru.bias_ih)
        gh = F.linear(h, self.gru.weight_hh, self.gru.bias_hh)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                query_mask: torch.Tensor) -> torch.Tensor:
        state = _attend(memory, self.summary(memory).squeeze(-1), query_mask)
        total = None
        for _ in range(self.num_steps):
            scores = torch.bmm(memory, self.attend(state).unsqueeze(-1)).squeeze(-1)
            x = _attend(memory, scores, memory_mask)
            state = self._gru(x, state)
            features = torch.cat([state, x, (state - x).abs(), state * x], dim=-1)
            probs = torch.softmax(self.classifier(features).float(), -1)
            total = probs if total is None else total + probs
        mean = total / self.num_steps
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


def san_masks(attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """SAN memory (segment 0) and query (segment 1) masks [B, T]; rows without a second
    segment use the whole sequence for both."""
    real = attention_mask.bool()
    if token_type_ids is None:
        return real, real
    premise, hypothesis = real & (token_type_ids == 0), real & (token_type_ids == 1)
    has_pair = hypothesis.any(-1, keepdim=True)
    single = real & ~has_pair  # (and/or, not where: onnxruntime has no boolean Where)
    return (premise & has_pair) | single, (hypothesis & has_pair) | single


def build_encoder(encoder_config: dict[str, Any], attn_implementation: str | None = None
                  ) -> PreTrainedModel:
    """The encoder from its config dict, without a pooler (mtkd pools itself)."""
    values = dict(encoder_config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    kwargs: dict[str, Any] = {}
    model_cls = AutoModel._model_mapping.get(type(config), None)
    if model_cls is not None and "add_pooling_layer" in inspect.signature(model_cls).parameters:
        kwargs["add_pooling_layer"] = False
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    encoder = AutoModel.from_config(config, **kwargs)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


class MtkdForSequenceClassification(PreTrainedModel):
    """The encoder plus one mtkd task head (see the module docstring)."""

    config_class = MtkdConfig
    base_model_prefix = "mtkd"
    main_input_name = "input_ids"

    def __init__(self, config: MtkdConfig) -> None:
        super().__init__(config)
        self.encoder = build_encoder(config.encoder)
        hidden = int(self.encoder.config.hidden_size)
        if config.head == "san":
            self.head: nn.Module = SANHead(hidden, config.num_labels, config.san_steps)
        else:
            self.head = LinearHead(hidden, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Weights always come from the exported file; nothing to initialize."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> Any:
        """input_ids / attention_mask / token_type_ids [B, T] → logits [B, num_labels];
        with ``labels`` also the loss (MSE for regression, cross-entropy otherwise)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if (
            self.config.uses_token_types and token_type_ids is not None) else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              return_dict=True, **extra).last_hidden_state
        if isinstance(self.head, SANHead):
            logits = self.head(hidden, *san_masks(attention_mask, token_type_ids))
        else:
            logits = self.head(pool(hidden, attention_mask, self.config.pooling))
        loss = None
        if labels is not None:
            if self.config.problem_type == "regression":
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
            else:
                loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = ["MtkdForSequenceClassification"]
