"""Configuration of an mtkd MT-DNN task exported for Hugging Face transformers.

Written by ``mtkd export``; needs only transformers (no mtkd). One folder holds one task:
the shared encoder (its own config, stored in ``encoder``) and that task's head.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

POOLINGS = ("cls", "mean")
HEADS = ("linear", "san")


class MtkdConfig(PretrainedConfig):
    """``encoder``: the encoder's config as a dict (``model_type`` included);
    ``pooling``: "cls" (first token) or "mean" (mean over real tokens), used by linear
    heads; ``head``: "linear" (dropout + linear on the pooled vector) or "san" (stochastic
    answer network over the token states, eval mode); ``san_steps``: SAN reasoning steps;
    ``uses_token_types``: whether ``token_type_ids`` are fed to the encoder (as mtkd does
    when the encoder has more than one segment type); ``mtkd_task``: the task's name, type,
    labels, metrics and max_length as mtkd saved them."""

    model_type = "mtkd_mtdnn"

    def __init__(self, encoder: dict[str, Any] | None = None, pooling: str = "cls",
                 head: str = "linear", san_steps: int = 5, uses_token_types: bool = False,
                 mtkd_task: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; one of {POOLINGS}")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; one of {HEADS}")
        self.encoder = dict(encoder or {})
        self.pooling = pooling
        self.head = head
        self.san_steps = int(san_steps)
        self.uses_token_types = bool(uses_token_types)
        self.mtkd_task = dict(mtkd_task or {})
        super().__init__(**kwargs)


__all__ = ["MtkdConfig"]
