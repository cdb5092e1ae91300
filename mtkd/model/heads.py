"""Task heads of MT-DNN: linear (classification, regression), ranking, and SAN.

Every head is small and stateless apart from its weights; :class:`mtkd.model.MTDNN` picks
the head's input (pooled vector or token states) and reshapes its output per task type.
Linear layers start like BERT's own heads: weights ~ N(0, ``init_std``), biases 0.
"""

from __future__ import annotations

import torch
from torch import nn

from mtkd.padding import PAD_SCORE


def _init_linear(layer: nn.Linear, std: float) -> nn.Linear:
    nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class LinearHead(nn.Module):
    """pooled [B, H] → dropout → linear → [B, num_outputs] (class logits, or one score)."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float = 0.1,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = _init_linear(nn.Linear(hidden_size, num_outputs), init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled))


class RankingHead(nn.Module):
    """One score per (query, candidate) pair, as MT-DNN ranks QNLI answers.

    ``pooled`` is either [B*K, H] (every candidate slot, padding included) or [N, H] with
    N = ``candidate_mask.sum()`` (only the real candidates, row-major order, which is what
    :class:`MTDNN` passes so no compute goes to padding). ``candidate_mask`` [B, K] is
    True for real candidates. Returns scores [B, K], padded slots set to
    :data:`mtkd.padding.PAD_SCORE` (in any dtype), so ``softmax(scores, -1)`` is the
    distribution over candidates.
    """

    def __init__(self, hidden_size: int, dropout: float = 0.1, init_std: float = 0.02) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = _init_linear(nn.Linear(hidden_size, 1), init_std)

    def forward(self, pooled: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
        mask = candidate_mask.bool()
        scores = self.proj(self.dropout(pooled)).squeeze(-1)  # [B*K] or [N]
        fill = PAD_SCORE
        if scores.shape[0] == mask.numel():
            return scores.view(mask.shape).masked_fill(~mask, fill)
        if scores.shape[0] != int(mask.sum()):
            raise ValueError(f"ranking head got {scores.shape[0]} pooled rows for a "
                             f"candidate_mask {tuple(mask.shape)} with {int(mask.sum())} set")
        return scores.new_full(mask.shape, fill).masked_scatter(mask, scores)


def _attend(memory: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention summary: memory [B, T, H], scores [B, T], mask [B, T] → [B, H]."""
    # Token positions, not candidates: masked in float32 as the exported SAN head does.
    scores = scores.float().masked_fill(~mask.bool(), torch.finfo(torch.float32).min / 2)
    weights = torch.softmax(scores, dim=-1).to(memory.dtype)
    return torch.bmm(weights.unsqueeze(1), memory).squeeze(1)


class SANClassifier(nn.Module):
    """Stochastic answer network (Liu et al. 2018; MT-DNN's ``san.py``) for classification.

    Memory M = token states [B, T, H] of the premise (MT-DNN's memory; the whole sequence
    for single sentences). The initial state s0 is a self-attentive summary of the
    hypothesis tokens (or of M). Each of ``num_steps`` reasoning steps: x_t = attention of
    s_{t-1} over M (bilinear), s_t = GRU(x_t, s_{t-1}), P_t = softmax(W [s_t; x_t;
    |s_t − x_t|; s_t ∘ x_t]). Training drops whole steps with probability ``step_dropout``
    per example (stochastic prediction dropout; at least one step kept) and averages the
    kept P_t; eval averages all steps.

    Returns **log** of the averaged probabilities, [B, C] float32, used as logits:
    ``argmax`` is the prediction, ``softmax`` gives back the probabilities and
    ``cross_entropy`` on them is the negative log-likelihood.
    """

    def __init__(self, hidden_size: int, num_outputs: int, num_steps: int = 5,
                 step_dropout: float = 0.1, dropout: float = 0.1, init_std: float = 0.02) -> None:
        super().__init__()
        if num_steps < 1 or not 0.0 <= step_dropout < 1.0:
            raise ValueError(f"SAN needs num_steps >= 1 and 0 <= step_dropout < 1, got "
                             f"{num_steps}, {step_dropout}")
        self.num_steps, self.step_dropout = num_steps, step_dropout
        self.dropout = nn.Dropout(dropout)
        self.summary = _init_linear(nn.Linear(hidden_size, 1), init_std)
        self.attend = _init_linear(nn.Linear(hidden_size, hidden_size, bias=False), init_std)
        self.gru = nn.GRUCell(hidden_size, hidden_size)
        self.classifier = _init_linear(nn.Linear(4 * hidden_size, num_outputs), init_std)

    def _step_weights(self, batch: int, device: torch.device) -> torch.Tensor:
        """[B, K] 0/1 weights of the steps to average (all ones in eval)."""
        ones = torch.ones(batch, self.num_steps, device=device)
        if not self.training or self.step_dropout == 0.0:
            return ones
        keep = torch.bernoulli(ones * (1.0 - self.step_dropout))
        forced = torch.randint(self.num_steps, (batch,), device=device)
        return keep.index_put((torch.arange(batch, device=device), forced), ones[:, 0])

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """memory [B, T, H], memory_mask / query_mask [B, T] → log-probabilities [B, C]."""
        memory = self.dropout(memory)
        query_mask = memory_mask if query_mask is None else query_mask
        state = _attend(memory, self.summary(memory).squeeze(-1), query_mask)  # s0 [B, H]
        probs = []
        for _ in range(self.num_steps):
            scores = torch.bmm(memory, self.attend(state).unsqueeze(-1)).squeeze(-1)  # [B, T]
            x = _attend(memory, scores, memory_mask)
            state = self.gru(x, self.dropout(state))
            features = torch.cat([state, x, (state - x).abs(), state * x], dim=-1)
            probs.append(torch.softmax(self.classifier(self.dropout(features)).float(), -1))
        stacked = torch.stack(probs, dim=1)  # [B, K, C]
        weights = self._step_weights(stacked.shape[0], stacked.device).unsqueeze(-1)
        mean = (stacked * weights).sum(1) / weights.sum(1)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
