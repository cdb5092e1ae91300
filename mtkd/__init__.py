"""mtkd: multi-task knowledge distillation (MT-DNN-KD) on Ray.

The Python API (documented in :mod:`mtkd.api` and README.md, "Python API")::

    import mtkd
    config = mtkd.load_config("experiment.yaml", ["teachers.size=3"])
    result = mtkd.run(config)                 # -> mtkd.RunResult: where the results are
    student = mtkd.load_student("runs/exp/student/student/final")   # local or s3://
    student.predict("trec", ["what is the capital of France?"]).label

These names are imported on first use, so ``import mtkd`` imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "load_config": "mtkd.config",
    "ExperimentConfig": "mtkd.config",
    "run": "mtkd.api",
    "RunResult": "mtkd.api",
    "StageResult": "mtkd.api",
    "load_student": "mtkd.api",
    "Student": "mtkd.api",
    "Prediction": "mtkd.api",
    "UnknownTaskError": "mtkd.api",
    "MtkdError": "mtkd.errors",
    "ConfigError": "mtkd.errors",
    "DataError": "mtkd.errors",
    "StorageError": "mtkd.errors",
}

__all__ = [  # the keys of _API (a literal, for linters and IDEs)
    "ConfigError", "DataError", "ExperimentConfig", "MtkdError", "Prediction", "RunResult",
    "StageResult", "StorageError", "Student", "UnknownTaskError", "__version__",
    "load_config", "load_student", "run",
]

if TYPE_CHECKING:
    from mtkd.api import (
        Prediction,
        RunResult,
        StageResult,
        Student,
        UnknownTaskError,
        load_student,
        run,
    )
    from mtkd.config import ExperimentConfig, load_config
    from mtkd.errors import ConfigError, DataError, MtkdError, StorageError


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'mtkd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
