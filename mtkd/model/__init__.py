"""MT-DNN: the shared encoder, the task heads, save/load and prediction.

* :mod:`mtkd.model.encoder`: load a checkpoint offline, keep the first k layers, pool;
* :mod:`mtkd.model.heads`: linear, ranking and SAN heads;
* :mod:`mtkd.model.mtdnn`: the model, ``build_mtdnn`` and parameter counts;
* :mod:`mtkd.model.io`: one self-contained, pickle-free model directory;
* :mod:`mtkd.model.predict`: outputs for raw texts.
"""

from mtkd.model.encoder import load_encoder, pool, truncate_layers
from mtkd.model.heads import LinearHead, RankingHead, SANClassifier
from mtkd.model.io import load_mtdnn, read_meta, save_mtdnn
from mtkd.model.mtdnn import (
    MTDNN,
    HeadOptions,
    build_heads,
    build_mtdnn,
    non_embedding_parameters,
    num_parameters,
)
from mtkd.model.predict import predict_texts

__all__ = [
    "MTDNN",
    "HeadOptions",
    "LinearHead",
    "RankingHead",
    "SANClassifier",
    "build_heads",
    "build_mtdnn",
    "load_encoder",
    "load_mtdnn",
    "non_embedding_parameters",
    "num_parameters",
    "pool",
    "predict_texts",
    "read_meta",
    "save_mtdnn",
    "truncate_layers",
]
