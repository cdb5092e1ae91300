"""Save and load an MT-DNN as one self-contained directory, without pickles:

```
<model_dir>/
  encoder/            config.json, model.safetensors, tokenizer files (save_pretrained)
  heads.safetensors   the heads' state dict
  mtdnn.json          format version, task specs, head options, provenance ("extra")
```

Loading needs only torch, transformers and safetensors (no Ray, no DeepSpeed). With
DeepSpeed ZeRO-3 gather the parameters before saving (the encoder is saved as it is).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mtkd.errors import MtkdError
from mtkd.model.encoder import load_encoder, quiet_transformers
from mtkd.model.mtdnn import MTDNN, HeadOptions, build_heads
from mtkd.tasks.spec import TaskSpec

FORMAT = "mtkd.mtdnn"
FORMAT_VERSION = 1
ENCODER_DIR = "encoder"
HEADS_FILE = "heads.safetensors"
META_FILE = "mtdnn.json"


def save_mtdnn(model: MTDNN, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` (replacing it) and return its path.

    Everything goes to a temporary sibling directory first, ``mtdnn.json`` last, and is
    then renamed into place, so a crash never leaves a half-written model at ``out_dir``.
    ``extra`` (JSON-serializable, e.g. provenance) is stored in ``mtdnn.json``.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with quiet_transformers():  # transformers 5 always writes safetensors
            model.encoder.save_pretrained(str(tmp / ENCODER_DIR))
            tokenizer.save_pretrained(str(tmp / ENCODER_DIR))
        heads = {k: v.detach().to("cpu", copy=True).contiguous()
                 for k, v in model.heads.state_dict().items()}
        save_file(heads, str(tmp / HEADS_FILE), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "tasks": [spec.to_json() for spec in model.specs.values()],
            "options": model.options.to_json(),
            "model_type": model.encoder.config.model_type,
            "num_layers": int(model.encoder.config.num_hidden_layers),
            "hidden_size": int(model.encoder.config.hidden_size),
            "extra": extra or {},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
        swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def swap_into_place(tmp: Path, out: Path) -> None:
    """Replace the folder ``out`` with the finished folder ``tmp`` (a sibling, same disk):
    a rename, or with an old ``out`` two renames (the old one put back if the second
    fails), so ``out`` is always the old or the new folder, never a mix."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """The validated ``mtdnn.json`` of a saved model."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise MtkdError(f"{path} is missing (fix: point at a directory written by "
                        "save_mtdnn, e.g. runs/<experiment>/student/student/final)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MtkdError(f"{path} is not valid JSON ({err}); the model is corrupt") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MtkdError(f"{path} is not an mtkd MT-DNN description (format != {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise MtkdError(f"{path} has format version {meta.get('version')!r}; this mtkd "
                        f"reads version {FORMAT_VERSION} (fix: use the mtkd that saved it)")
    try:
        meta["specs"] = [TaskSpec.from_json(t) for t in meta["tasks"]]
        meta["head_options"] = HeadOptions.from_json(meta["options"])
    except (KeyError, TypeError, ValueError) as err:
        raise MtkdError(f"{path} has a malformed 'tasks' or 'options' entry: {err!r}") from err
    return meta


def load_mtdnn(model_dir: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[MTDNN, PreTrainedTokenizerBase]:
    """Load a model saved by :func:`save_mtdnn`, in eval mode on ``device``.

    Reads safetensors only (never unpickles); raises MtkdError naming the missing or
    corrupt file.
    """
    root = Path(model_dir)
    meta = read_meta(root)
    encoder_dir = root / ENCODER_DIR
    if not list(encoder_dir.glob("*.safetensors")):
        raise MtkdError(f"{encoder_dir} has no *.safetensors weights; the model is incomplete")
    encoder = load_encoder(encoder_dir, strict=True, safetensors_only=True)
    heads = build_heads(meta["specs"], encoder.config.hidden_size, meta["head_options"])
    heads_path = root / HEADS_FILE
    if not heads_path.is_file():
        raise MtkdError(f"{heads_path} is missing; the model is incomplete")
    try:
        state = load_file(str(heads_path))
    except (OSError, SafetensorError) as err:
        raise MtkdError(f"{heads_path} is corrupt: {err}") from err
    try:
        heads.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise MtkdError(f"{heads_path} does not match the tasks in {META_FILE}: {err}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    except (OSError, ValueError) as err:
        raise MtkdError(f"cannot load the tokenizer from {encoder_dir}: {err}") from err
    model = MTDNN(encoder, heads, meta["specs"], meta["head_options"])
    return model.to(device).eval(), tokenizer
