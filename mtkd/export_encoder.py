"""``mtkd export --encoder-only``: a saved MT-DNN's shared encoder as a plain encoder folder.

```
mtkd export --encoder-only MODEL_DIR OUT_DIR [--overwrite]
```

Task transfer (XtremeDistilTransformers, Mukherjee, Awadallah, Gao 2021, section 3): the
student distilled on source tasks (and unlabelled transfer text,
``student.kd.transfer_text``) is a task-agnostic small encoder once its heads are dropped;
it is then fine-tuned on other (target) tasks. ``OUT_DIR`` holds exactly what a
transformers encoder checkpoint holds, and nothing of mtkd:

* ``config.json`` (the encoder's own config: its architecture, layer count and width as
  the student was cut, e.g. 3 layers of all-MiniLM-L6-v2) and ``model.safetensors`` (its
  weights; no pooler: mtkd pools the token states itself, so ``AutoModel`` initialises a
  fresh pooler unless loaded with ``add_pooling_layer=False``; the token states
  ``last_hidden_state`` / ``hidden_states`` are the student's);
* the tokenizer the student was trained with;
* ``README.md``: what it is, where it came from (``MODEL_DIR``, its content fingerprint,
  the source tasks and, when the run's record sits next to it, its lineage).

It loads with ``AutoModel.from_pretrained(OUT_DIR)`` / ``AutoTokenizer.from_pretrained``,
and as ``encoder.path: OUT_DIR`` of another experiment (fine-tuning on target tasks).
Before the folder is renamed into place it is loaded back with ``AutoModel`` and every
layer's hidden states [B, T, H] on probe texts are compared with the MT-DNN encoder's: a
difference above :data:`mtkd.export.TOLERANCE` is a bug and raises RuntimeError. User
mistakes (missing or non-mtkd ``MODEL_DIR``, non-empty ``OUT_DIR`` without
``--overwrite``, ``--task`` or ``--onnx`` with ``--encoder-only``) raise MtkdError.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtkd.errors import MtkdError
from mtkd.export import (
    PROBE_TEXTS,
    TOLERANCE,
    _check_not_overlapping,
    _check_out_dir,
    _default_permissions,
    _max_diff,
    _provenance,
)


@dataclass(frozen=True)
class ExportedEncoder:
    """The written encoder folder and how closely it matched the MT-DNN's encoder."""

    path: Path
    max_diff: float
    """Largest absolute difference of any layer's hidden states on the probe texts."""


def run_encoder_export(args: argparse.Namespace) -> int:
    """``mtkd export --encoder-only``; returns the exit code (user mistakes raise)."""
    from mtkd.predict_cli import local_model_dir

    if args.tasks:
        raise MtkdError("--task does not apply to --encoder-only (the encoder is shared by "
                        "every task; fix: drop --task)")
    if args.onnx:
        raise MtkdError("--onnx is not written with --encoder-only (fix: drop --onnx; export "
                        "a task without --encoder-only for ONNX)")
    out = _check_out_dir(args.out_dir, args.overwrite)
    with contextlib.ExitStack() as stack:
        model_dir = local_model_dir(args.model_dir, stack)
        exported = export_encoder(model_dir, out, overwrite=args.overwrite,
                                  source=args.model_dir)
    print(f"exported the encoder to {exported.path} (max hidden-state difference from mtkd "
          f"{exported.max_diff:.1e}); use it as encoder.path: {exported.path}")
    return 0


def export_encoder(model_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                   source: str | None = None) -> ExportedEncoder:
    """Write the shared encoder of the local saved model ``model_dir`` (and its tokenizer
    and a README) to ``out_dir`` as a plain transformers encoder folder (module
    docstring); returns where, and the largest hidden-state difference found by the
    check. Raises MtkdError for a bad ``model_dir`` or ``out_dir``, RuntimeError when the
    written folder does not reproduce the encoder's hidden states (a bug)."""
    from mtkd.model.encoder import quiet_transformers
    from mtkd.model.io import load_mtdnn, swap_into_place

    model_dir = Path(model_dir)
    out = _check_out_dir(str(out_dir), overwrite)
    _check_not_overlapping(model_dir, out)
    model, tokenizer = load_mtdnn(model_dir)
    provenance = _provenance(model_dir, source or str(model_dir), list(model.specs))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with quiet_transformers():
            model.encoder.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
        diff = _check_encoder(model.encoder, tokenizer, tmp)
        (tmp / "README.md").write_text(encoder_card(model, provenance), encoding="utf-8")
        _default_permissions(tmp)
        swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportedEncoder(out, diff)


def encoder_states(encoder: Any, inputs: dict[str, Any]) -> tuple[Any, ...]:
    """Every layer's hidden states (embeddings first), each [B, T, H] float32, of a
    transformers encoder on a padded batch (``token_type_ids`` only where the encoder has
    segment embeddings)."""
    import torch

    from mtkd.model.encoder import uses_token_types

    kwargs = {k: v for k, v in inputs.items()
              if k != "token_type_ids" or uses_token_types(encoder)}
    with torch.inference_mode():
        out = encoder.eval()(**kwargs, output_hidden_states=True, return_dict=True)
    return tuple(h.float() for h in out.hidden_states)


def _check_encoder(encoder: Any, tokenizer: Any, folder: Path) -> float:
    """Load ``folder`` with AutoModel (as a user would) and compare every layer's states
    with ``encoder``'s on the probe texts; RuntimeError above TOLERANCE."""
    from transformers import AutoModel

    from mtkd.model.encoder import quiet_transformers

    inputs = dict(tokenizer(list(PROBE_TEXTS), padding=True, truncation=True,
                            return_tensors="pt"))
    with quiet_transformers():
        loaded = AutoModel.from_pretrained(str(folder), local_files_only=True)
    got, expected = encoder_states(loaded, inputs), encoder_states(encoder, inputs)
    if len(got) != len(expected):
        raise RuntimeError(f"the exported encoder has {len(got) - 1} layers, the model "
                           f"{len(expected) - 1}; this is a bug in mtkd export")
    diff = max(_max_diff(a, b) for a, b in zip(got, expected, strict=True))
    if diff > TOLERANCE:
        raise RuntimeError(f"the exported encoder's hidden states differ from the model's by "
                           f"{diff:.2e} (> {TOLERANCE}); this is a bug in mtkd export")
    return diff


def encoder_card(model: Any, provenance: dict[str, Any]) -> str:
    """README.md of an exported encoder: what it is, how to load it, where it came from."""
    from mtkd import __version__
    from mtkd.model.mtdnn import num_parameters

    config, record = model.encoder.config, provenance.get("record")
    tasks = ", ".join(f"`{name}` ({spec.type})" for name, spec in model.specs.items())
    lines = [
        "---", "library_name: transformers", "pipeline_tag: feature-extraction",
        "tags:", "- mtkd", "- knowledge-distillation", "- task-transfer", "---", "",
        f"# Task-agnostic encoder exported from mtkd {__version__}", "",
        "The shared encoder of an mtkd MT-DNN, without its task heads, written by "
        "`mtkd export --encoder-only` (task transfer, XtremeDistilTransformers, Mukherjee et "
        "al. 2021): fine-tune it on other tasks, e.g. as `encoder.path` of an mtkd "
        "experiment.", "",
        "## Model", "",
        f"- architecture: `{config.model_type}`, {config.num_hidden_layers} layers, hidden "
        f"size {config.hidden_size}, {num_parameters(model.encoder):,} parameters",
        "- no pooler: mtkd pools token states itself; load with "
        "`AutoModel.from_pretrained(path, add_pooling_layer=False)` to avoid a freshly "
        "initialised one",
        f"- trained on the tasks: {tasks}", "",
        "## Provenance", "",
        f"- exported from: `{provenance['source']}` (content `{provenance['content']}`)",
    ]
    if record is not None:
        lines.append(f"- run record ({provenance['record_kind']}): lineage "
                     f"`{record.lineage}`")
    else:
        note = provenance.get("record_note") or "none next to the model"
        lines.append(f"- run record: unknown ({note})")
    return "\n".join(lines) + "\n"
