"""Models in experiment storage (local folder or s3://): save and load through Storage."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtkd.model.io import load_mtdnn, save_mtdnn
from mtkd.model.mtdnn import MTDNN
from mtkd.records import folder_fingerprint
from mtkd.storage import Storage


@dataclass(frozen=True)
class SavedModel:
    uri: str
    content: str
    """The model folder's content fingerprint (:func:`mtkd.records.folder_fingerprint`)."""


def save_model_to(store: Storage, rel: str, model: MTDNN, tokenizer: Any,
                  extra: dict[str, Any] | None = None) -> SavedModel:
    """Save a model directory (model/io.py format) at ``rel``; returns its uri and content
    fingerprint.

    Callers write their own record (e.g. member.json) after this returns, so a crash
    during the upload never leaves a model that is taken for complete.
    """
    with tempfile.TemporaryDirectory(prefix="mtkd-model-") as tmp:
        local = save_mtdnn(model, tokenizer, Path(tmp) / "model", extra=extra)
        content = folder_fingerprint(local)
        store.delete(rel)
        store.upload_dir(local, rel)
    return SavedModel(store.uri_of(rel), content)


def load_model_from(store: Storage, rel: str, local_dir: str | Path,
                    device: torch.device | str = "cpu") -> tuple[MTDNN, Any]:
    """Download the model directory at ``rel`` into ``local_dir`` and load it."""
    local = Path(local_dir)
    store.download_dir(rel, local)
    return load_mtdnn(local, device=device)
