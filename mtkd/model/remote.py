"""Models in experiment storage (local folder or s3://): save and load through Storage."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from mtkd.model.io import load_mtdnn, save_mtdnn
from mtkd.model.mtdnn import MTDNN
from mtkd.storage import Storage


def save_model_to(store: Storage, rel: str, model: MTDNN, tokenizer: Any,
                  extra: dict[str, Any] | None = None) -> str:
    """Save a model directory (model/io.py format) at ``rel``; returns its uri.

    Callers write their own marker (e.g. a member manifest) after this returns, so a
    crash during the upload never leaves a model that is taken for complete.
    """
    with tempfile.TemporaryDirectory(prefix="mtkd-model-") as tmp:
        local = save_mtdnn(model, tokenizer, Path(tmp) / "model", extra=extra)
        store.delete(rel)
        store.upload_dir(local, rel)
    return store.uri_of(rel)


def load_model_from(store: Storage, rel: str, local_dir: str | Path,
                    device: torch.device | str = "cpu") -> tuple[MTDNN, Any]:
    """Download the model directory at ``rel`` into ``local_dir`` and load it."""
    local = Path(local_dir)
    store.download_dir(rel, local)
    return load_mtdnn(local, device=device)
