"""``mtkd export``: turn a saved MT-DNN into one Hugging Face folder per task (and ONNX).

```
mtkd export MODEL_DIR OUT_DIR [--task NAME ...] [--onnx | --no-onnx] [--overwrite]
mtkd export --encoder-only MODEL_DIR OUT_DIR [--overwrite]   (mtkd/export_encoder.py)
```

``MODEL_DIR`` is a folder written by :func:`mtkd.model.io.save_mtdnn` (local or ``s3://``,
found as ``mtkd predict`` finds it). For every exported task, ``OUT_DIR/<task>/`` holds:

* ``config.json`` (``model_type`` "mtkd_mtdnn", ``auto_map`` to the two code files,
  ``id2label``/``label2id`` from the task's labels, the encoder's own config under
  ``encoder``, ``mtkd_task`` with the task as mtkd saved it), ``model.safetensors`` (the
  encoder without its pooler, and the task's head as ``head.*``);
* ``configuration_mtkd.py`` and ``modeling_mtkd.py`` (from :mod:`mtkd.hf`): torch and
  transformers only. mtkd pools the token states itself (first token or mean) and its
  heads are not BERT's pooler + classifier, so no stock ``*ForSequenceClassification``
  class gives its outputs: the folder loads with ``trust_remote_code=True``;
* the tokenizer the model was trained with, with ``model_max_length`` set to the task's
  ``max_length`` (call it with ``truncation=True`` to cut inputs as mtkd does);
* ``README.md``: a model card whose task, metrics, data and lineage come from the model's
  ``mtdnn.json`` and, when they are next to it and describe this very folder, the run's
  record (``student.json`` / ``member.json``) and the experiment's ``data/<task>/meta.json``.
  What is not known is said to be unknown;
* ``model.onnx`` (unless ``--no-onnx``): inputs ``input_ids``, ``attention_mask`` and,
  where the model uses segment ids, ``token_type_ids``, all int64 [batch, sequence];
  output ``logits`` float32 [batch, num_labels]; batch and sequence axes are dynamic.

Outputs per task type (``logits`` [B, num_labels]):

* classification / pair classification: class logits; with SAN heads
  (``heads.san``) the log of the averaged step probabilities (softmax gives them back);
* regression: one score (``problem_type`` "regression", num_labels 1);
* ranking: exported as a (query, candidate) **scorer** — one score per pair, like
  regression; a query's candidates are ranked by it, softmax over them gives mtkd's
  candidate distribution. A ranking model is not a per-text classifier, and the card says so.

Before the folder is renamed into place every task is loaded back and checked against the
mtkd model on a few probe inputs (and the ONNX file with onnxruntime): a difference above
:data:`TOLERANCE` is a bug and raises. Everything is written to a temporary sibling of
``OUT_DIR`` first, so an error leaves no half-written ``OUT_DIR`` behind.

User mistakes raise :class:`MtkdError` (exit 2 from the CLI): a missing model folder, a
folder that is not an mtkd model, an unknown ``--task``, an ``OUT_DIR`` that exists and is
not empty (without ``--overwrite``), ``--onnx`` without onnx/onnxruntime installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtkd.errors import MtkdError

if TYPE_CHECKING:
    import torch

    from mtkd.model.mtdnn import MTDNN
    from mtkd.tasks.spec import TaskSpec

TOLERANCE = 1e-4
"""Largest absolute difference allowed between mtkd's outputs and the exported ones."""
ONNX_OPSET = 17
ONNX_INSTALL = "pip install 'mtkd[export]' (or: pip install onnx onnxruntime)"
PROBE_TEXTS = ("the film was very good", "a", "what is the plot of this movie and who was in it")
PROBE_PAIRS = ("good", "the plot was not very good at all", "who")


@dataclass(frozen=True)
class ExportedTask:
    """One exported task folder and how closely it matched the mtkd model."""

    task: str
    path: Path
    onnx: bool
    max_diff: float
    """Largest absolute difference of the exported model's (and ONNX file's) outputs from
    mtkd's on the probe inputs."""


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mtkd export`` (stdlib only: building the parser stays fast)."""
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="saved model directory (local or s3://), e.g. "
                             "<storage_path>/<name>/student/student/final")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="local folder to write, one sub-folder per task")
    parser.add_argument("--task", action="append", dest="tasks", metavar="NAME",
                        help="export this task (repeatable; default: every task of the model)")
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                        help="also write model.onnx per task (default: when onnx and "
                             f"onnxruntime are installed; {ONNX_INSTALL})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR if it exists and is not empty")
    parser.add_argument("--encoder-only", action="store_true",
                        help="write the shared encoder alone (no heads) as a plain "
                             "transformers encoder folder for fine-tuning on other tasks "
                             "(AutoModel, or encoder.path of another experiment); see "
                             "mtkd/export_encoder.py")


def onnx_missing() -> list[str]:
    """The ONNX export's packages that are not installed (empty when it can run)."""
    return [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]


def _check_out_dir(out_dir: str, overwrite: bool) -> Path:
    if "://" in out_dir and not out_dir.startswith("file://"):
        raise MtkdError(f"OUT_DIR {out_dir} must be a local folder (fix: export locally, then "
                        "upload the folder)")
    out = Path(out_dir.removeprefix("file://")).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise MtkdError(f"OUT_DIR {out} is a file (fix: give a folder path)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MtkdError(f"OUT_DIR {out} exists and is not empty (fix: pass --overwrite to "
                        "replace it, or choose another folder)")
    return out


def _check_not_overlapping(model_dir: Path, out: Path) -> None:
    model, target = model_dir.resolve(), out.resolve()
    if target == model or target in model.parents or model in target.parents:
        raise MtkdError(f"OUT_DIR {out} overlaps the model folder {model_dir} (replacing it "
                        "would delete the model) (fix: choose a folder outside the model's)")


def _resolve_onnx(wanted: bool | None) -> bool:
    missing = onnx_missing()
    if wanted and missing:
        raise MtkdError(f"--onnx needs {' and '.join(missing)}, which is not installed (fix: "
                        f"{ONNX_INSTALL}, or pass --no-onnx)")
    if wanted is None and missing:
        print(f"note: skipping ONNX: {' and '.join(missing)} not installed ({ONNX_INSTALL})",
              file=sys.stderr)
        return False
    return bool(wanted is None or wanted)


def run_export(args: argparse.Namespace) -> int:
    """The ``mtkd export`` command; returns the exit code (user mistakes raise MtkdError)."""
    from mtkd.predict_cli import local_model_dir, model_specs

    if getattr(args, "encoder_only", False):
        from mtkd.export_encoder import run_encoder_export

        return run_encoder_export(args)

    out = _check_out_dir(args.out_dir, args.overwrite)
    with contextlib.ExitStack() as stack:
        model_dir = local_model_dir(args.model_dir, stack)
        _check_not_overlapping(model_dir, out)
        specs = [s.name for s in model_specs(model_dir, args.model_dir)]
        tasks = list(dict.fromkeys(args.tasks or specs))
        unknown = [t for t in tasks if t not in specs]
        if unknown:
            raise MtkdError(f"model {args.model_dir} has no task(s) {', '.join(map(repr, unknown))}"
                            f" (fix: use --task with one of its tasks: {', '.join(specs)})")
        onnx = _resolve_onnx(args.onnx)
        exported = export_model(model_dir, out, tasks, onnx=onnx, overwrite=args.overwrite,
                                source=args.model_dir)
    for item in exported:
        extra = " + model.onnx" if item.onnx else ""
        print(f"exported {item.task} to {item.path}{extra} (max difference from mtkd "
              f"{item.max_diff:.1e})")
    return 0


# ------------------------------------------------------------------------ export


def export_model(model_dir: str | Path, out_dir: str | Path, tasks: list[str] | None = None,
                 *, onnx: bool = True, overwrite: bool = False, source: str | None = None
                 ) -> list[ExportedTask]:
    """Export ``tasks`` (default: all) of the local saved model ``model_dir`` to
    ``out_dir/<task>/`` (see the module docstring); returns what was written.

    ``source`` is the model's uri as the user gave it (for the model card and to find the
    run's record next to an ``s3://`` model); default ``model_dir``. Raises MtkdError for an
    unknown task, an ``out_dir`` that is a file, is not empty without ``overwrite`` or
    overlaps ``model_dir``, and a model that is not an mtkd model; RuntimeError when an
    exported task does not reproduce the mtkd model's outputs within :data:`TOLERANCE`
    (a bug).
    """
    from mtkd.model.io import load_mtdnn, read_meta, swap_into_place

    model_dir = Path(model_dir)
    out = _check_out_dir(str(out_dir), overwrite)
    _check_not_overlapping(model_dir, out)
    meta = read_meta(model_dir)
    model, tokenizer = load_mtdnn(model_dir)
    tasks = list(dict.fromkeys(tasks or list(model.specs)))
    unknown = [t for t in tasks if t not in model.specs]
    if unknown:
        raise MtkdError(f"the model has no task(s) {', '.join(unknown)} (it has: "
                        f"{', '.join(model.specs)})")
    provenance = _provenance(model_dir, source or str(model_dir), list(model.specs))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    results = []
    try:
        tmp.mkdir()
        for task in tasks:
            results.append(_export_task(model, tokenizer, meta, task, tmp / task, onnx,
                                        provenance))
        _default_permissions(tmp)
        swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [ExportedTask(r.task, out / r.task, r.onnx, r.max_diff) for r in results]


def _default_permissions(root: Path) -> None:
    """Give every file and folder below ``root`` the mode the user's umask gives new ones
    (transformers' ``save_pretrained`` writes the weights through a private 0600 temporary
    file, which a serving container running as another user could not read)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _hf_config(model: MTDNN, spec: TaskSpec) -> Any:
    from mtkd.hf.configuration_mtkd import MtkdConfig
    from mtkd.model.heads import SANClassifier

    head = model.heads[spec.name]
    san = isinstance(head, SANClassifier)
    kind = spec.kind
    if not kind.has_classes:  # a score, or one (query, candidate) pair's score
        labels = ["score"]
        problem = "regression"
    else:
        labels = list(spec.labels) or [str(i) for i in range(spec.num_outputs)]
        problem = "single_label_classification"
    encoder = {k: v for k, v in model.encoder.config.to_dict().items()
               if k not in ("_name_or_path", "architectures", "transformers_version")}
    return MtkdConfig(
        encoder=encoder, pooling=model.options.pooling, head="san" if san else "linear",
        san_steps=head.num_steps if san else model.options.san_steps,
        uses_token_types=model.uses_token_types, mtkd_task=spec.to_json(),
        num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, problem_type=problem,
        pad_token_id=model.encoder.config.pad_token_id)


def _export_task(model: MTDNN, tokenizer: Any, meta: dict[str, Any], task: str, folder: Path,
                 onnx: bool, provenance: dict[str, Any]) -> ExportedTask:
    """Write one task's folder and check it against ``model``."""
    from mtkd.hf.configuration_mtkd import MtkdConfig
    from mtkd.hf.modeling_mtkd import MtkdForSequenceClassification
    from mtkd.model.encoder import quiet_transformers

    spec = model.specs[task]
    config = _hf_config(model, spec)
    hf = MtkdForSequenceClassification(config)
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    state.update({f"head.{k}": v for k, v in model.heads[task].state_dict().items()})
    hf.load_state_dict(state, strict=True)
    hf.eval()
    MtkdConfig.register_for_auto_class()
    MtkdForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    task_tokenizer = _copy_tokenizer(tokenizer, spec.max_length)
    with quiet_transformers():
        hf.save_pretrained(str(folder))
        task_tokenizer.save_pretrained(str(folder))
    for name in ("configuration_mtkd.py", "modeling_mtkd.py"):
        if not (folder / name).is_file():  # transformers' custom-code mechanism changed
            raise RuntimeError(f"save_pretrained did not copy {name} into {folder}")
    with quiet_transformers():
        loaded = MtkdForSequenceClassification.from_pretrained(str(folder)).eval()
    inputs = probe_inputs(task_tokenizer, spec)
    expected = mtkd_logits(model, task, inputs)
    diff = _max_diff(_hf_logits(loaded, inputs), expected)
    if onnx:
        export_onnx(loaded, folder / "model.onnx", inputs)
        diff = max(diff, _max_diff(onnx_logits(folder / "model.onnx", inputs), expected))
    if diff > TOLERANCE:
        raise RuntimeError(f"exported task {task!r} differs from the mtkd model by {diff:.2e} "
                           f"(> {TOLERANCE}); this is a bug in mtkd export")
    (folder / "README.md").write_text(model_card(model, spec, meta, provenance, onnx),
                                      encoding="utf-8")
    return ExportedTask(task, folder, onnx, diff)


def _copy_tokenizer(tokenizer: Any, max_length: int) -> Any:
    import copy

    copied = copy.deepcopy(tokenizer)
    copied.model_max_length = int(max_length)
    copied.init_kwargs["model_max_length"] = int(max_length)
    return copied


# ------------------------------------------------------------------------ parity


def onnx_input_names(config: Any) -> list[str]:
    """``input_ids``, ``attention_mask`` and ``token_type_ids`` where the model reads them
    (the encoder has segment types, or a SAN head uses them for its masks)."""
    names = ["input_ids", "attention_mask"]
    if config.uses_token_types or config.head == "san":
        names.append("token_type_ids")
    return names


def probe_inputs(tokenizer: Any, spec: TaskSpec) -> dict[str, torch.Tensor]:
    """A padded batch of probe texts tokenized as mtkd does (pairs for pair and ranking
    tasks; padding included, so the attention mask matters): int64 [3, T] tensors."""
    pair = spec.kind.pair
    enc = tokenizer(list(PROBE_TEXTS), list(PROBE_PAIRS) if pair else None, truncation=True,
                    max_length=spec.max_length, padding=True, return_tensors="pt")
    if "token_type_ids" not in enc:
        enc["token_type_ids"] = enc["input_ids"].new_zeros(enc["input_ids"].shape)
    return {k: enc[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")}


def mtkd_logits(model: MTDNN, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mtkd model's outputs as [B, num_labels] (regression and ranking scores [B, 1])."""
    import torch

    layout = model.specs[task].kind.layout
    with torch.inference_mode():  # ranking: each row is one (query, candidate) pair
        out = model(task, **layout.pairs_as_examples(inputs))
    return out.float().reshape(out.shape[0], -1)


def _hf_logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    import torch

    with torch.inference_mode():
        return model(**inputs).logits.float()


def _max_diff(a: Any, b: Any) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
                 .max())


class _OnnxWrapper:
    """Built lazily (needs torch): positional inputs → logits."""

    @staticmethod
    def make(model: Any, names: list[str]) -> torch.nn.Module:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: torch.Tensor) -> torch.Tensor:
                return self.model(**dict(zip(names, args, strict=True)), return_dict=False)[0]

        return Wrapper().eval()


def export_onnx(model: Any, path: Path, inputs: dict[str, torch.Tensor]) -> None:
    """Write ``model`` (an exported :class:`MtkdForSequenceClassification`) as ONNX with the
    TorchScript exporter (needs only ``onnx``): inputs named by :func:`onnx_input_names`,
    int64 [batch, sequence]; output ``logits`` float32 [batch, num_labels]. The encoder is
    traced with eager attention. ``inputs`` is an example batch with padding."""
    import torch

    names = onnx_input_names(model.config)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    previous = model.encoder.config._attn_implementation
    if hasattr(model.encoder, "set_attn_implementation"):
        model.encoder.set_attn_implementation("eager")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_OnnxWrapper.make(model, names), tuple(inputs[n] for n in names),
                              str(path), input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
    finally:
        if hasattr(model.encoder, "set_attn_implementation") and previous:
            model.encoder.set_attn_implementation(previous)
    model.eval()


def onnx_logits(path: Path, inputs: dict[str, torch.Tensor]) -> Any:
    """Run ``path`` with onnxruntime on the CPU: the inputs it declares, as int64 numpy."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    return session.run(["logits"], feed)[0]


# ------------------------------------------------------------------------ model card


def _provenance(model_dir: Path, source: str, tasks: list[str]) -> dict[str, Any]:
    """What is known about where the model came from: ``source``, its content fingerprint,
    and the run's record and the tasks' data records when they sit next to the model in an
    experiment folder and describe exactly this content."""
    from mtkd.records import MemberRecord, StudentRecord, TaskRecord, folder_fingerprint
    from mtkd.storage import Storage
    from mtkd.student.predictions import describes_model

    info: dict[str, Any] = {"source": source, "content": folder_fingerprint(model_dir),
                            "record": None, "record_note": None, "data": {}}
    parent_uri = source.rstrip("/").rpartition("/")[0] if "://" in source else str(
        Path(source).expanduser().absolute().parent)
    try:
        parent = Storage.from_uri(parent_uri)
        for name, kind in (("student.json", StudentRecord), ("member.json", MemberRecord)):
            if not parent.exists(name):
                continue
            try:
                record = kind.from_json(parent.read_json(name))
            except (TypeError, KeyError, ValueError, MtkdError):
                info["record_note"] = f"{name} next to the model does not parse; not used"
                break
            own = (describes_model(record.content, record.predictions, info["content"])
                   if isinstance(record, StudentRecord) else record.content == info["content"])
            if not own:
                info["record_note"] = (f"{name} next to the model describes other content "
                                       "(the model folder was changed or replaced); not used")
                break
            info["record"], info["record_kind"] = record, name
            experiment = Storage.from_uri(parent_uri.rstrip("/").rsplit("/", 2)[0])
            for task in tasks:
                rel = f"data/{task}/meta.json"
                if experiment.exists(rel):
                    with contextlib.suppress(TypeError, KeyError, ValueError, MtkdError):
                        info["data"][task] = TaskRecord.from_json(experiment.read_json(rel))
            break
    except MtkdError as err:  # unreachable storage: the card says what is unknown
        info["record_note"] = f"could not look for the run's record: {err}"
    return info


def _metric_line(values: dict[str, float] | None) -> str:
    if not values:
        return "unknown"
    return ", ".join(f"{k} {v:.2f}" for k, v in values.items())


def model_card(model: MTDNN, spec: TaskSpec, meta: dict[str, Any], provenance: dict[str, Any],
               onnx: bool) -> str:
    """The README.md of one exported task: front matter, task, usage, metrics, data and
    lineage, from ``mtdnn.json`` and the records in ``provenance`` only; anything they do
    not say is written as unknown."""
    from mtkd import __version__
    from mtkd.model.mtdnn import num_parameters

    kind, task = spec.kind, spec.name
    record, data = provenance.get("record"), provenance["data"].get(task)
    pair = bool(kind.pair)
    head = ("SAN (stochastic answer network)" if meta["head_options"].san and kind.has_classes
            else "linear")
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-classification",
        "tags:", "- mtkd", "- mt-dnn", "- knowledge-distillation", "---", "",
        f"# {task} ({spec.type}), exported from mtkd", "",
        f"One task of a multi-task MT-DNN trained with mtkd {__version__}'s pipeline, exported "
        "by `mtkd export`. The folder holds the shared encoder, this task's head, the "
        "tokenizer the model was trained with, and the modeling code (`modeling_mtkd.py`, "
        "torch + transformers only: load the model and the tokenizer with "
        "`trust_remote_code=True`; without it transformers asks before reading "
        "`config.json`).", "",
        "## Task", "",
        f"- name: `{task}`; type: `{spec.type}`",
    ]
    if kind.is_regression:
        lines.append("- output: one score (`logits[:, 0]`, `problem_type: regression`)")
    elif kind.layout.candidates:
        lines.append("- output: one score per (query, candidate) pair; rank a query's "
                     "candidates by it (softmax over them gives mtkd's candidate "
                     "probabilities). This is a scorer, not a per-text classifier: the "
                     "pipeline's `score` is the raw score")
    else:
        lines.append(f"- labels (head order): {', '.join(f'`{x}`' for x in spec.labels)}")
        if head.startswith("SAN"):
            lines.append("- outputs: log-probabilities (softmax gives the probabilities)")
    lines += [
        f"- inputs: {'a pair of texts (text, text_pair)' if pair else 'one text'}; at most "
        f"{spec.max_length} tokens (the tokenizer's `model_max_length`; pass "
        "`truncation=True` to cut longer inputs as mtkd did)",
        f"- reported metrics: {', '.join(spec.metrics or kind.metrics)}", "",
        "## Usage", "", "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline",
        "",
        'clf = pipeline("text-classification", model="PATH", trust_remote_code=True)',
    ]
    if pair:
        lines.append('clf({"text": "first text", "text_pair": "second text"}, '
                     "truncation=True)")
    else:
        lines.append('clf("some text", truncation=True)')
    lines += [
        "",
        'model = AutoModelForSequenceClassification.from_pretrained("PATH", '
        "trust_remote_code=True)",
        'tokenizer = AutoTokenizer.from_pretrained("PATH", trust_remote_code=True)',
        ("batch = tokenizer(texts, text_pairs, truncation=True, padding=True, "
         'return_tensors="pt")' if pair else
         'batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")'),
        "logits = model(**batch).logits",
        "```", "",
    ]
    if onnx:
        lines += [
            "`model.onnx` (onnxruntime) takes int64 `input_ids`, `attention_mask`"
            + (", `token_type_ids`" if model.uses_token_types or head.startswith("SAN")
               else "")
            + " [batch, sequence] from the same tokenizer (`return_tensors=\"np\"`) and "
            "returns `logits` [batch, num_labels].", ""]
    enc = model.encoder.config
    lines += [
        "## Model", "",
        f"- encoder: {enc.model_type}, {enc.num_hidden_layers} layers, hidden "
        f"{enc.hidden_size}; {num_parameters(model.encoder) + num_parameters(model.heads[task]):,}"
        " parameters with this head",
        f"- pooling: {model.options.pooling} (mtkd's; the encoder's own pooler is not used); "
        f"head: {head}", "",
        "## Metrics", "",
    ]
    if record is not None:
        kind_name = provenance["record_kind"]
        lines += [
            f"From the run's record `{kind_name}` next to the model (percent; its content "
            "fingerprint matches, so these are the scores of exactly these weights):", "",
            f"- dev: {_metric_line(record.metrics.get(task))}",
        ]
        tested = getattr(record, "test_metrics", None)
        if tested is not None:
            lines.append(f"- test: {_metric_line(tested.get(task))}" if tested.get(task)
                         else "- test: unknown (no labelled test split)")
        lines.append("")
    else:
        note = provenance.get("record_note") or (
            "no student.json or member.json next to the model")
        lines += [f"Unknown: {note}. Evaluate the exported model on your own data.", ""]
    lines += ["## Data", ""]
    if data is not None:
        splits = ", ".join(f"{name} {info.get('rows', '?')} rows"
                           for name, info in sorted(data.splits.items()))
        lines += [f"Tokenized splits (the experiment's `data/{task}/meta.json` at export "
                  f"time): {splits or 'unknown'}."]
        dropped = {k: v for k, v in (data.dropped or {}).items() if v}
        if dropped:
            lines.append(f"Dropped rows: {json.dumps(dropped, sort_keys=True)}.")
        lines.append("")
    else:
        lines += ["Unknown: the training data is not recorded in the model folder (the "
                  "experiment's `data/<task>/meta.json` was not found next to it).", ""]
    lines += ["## Lineage", "", f"- exported from: `{provenance['source']}`",
              f"- model content fingerprint: `{provenance['content']}`"]
    if record is not None:
        lines.append(f"- run lineage: `{record.lineage}`")
        name = getattr(record, "name", "")
        if provenance["record_kind"] == "student.json":
            lines.append(f"- student run `{name}`, seed {record.seed}, "
                         f"{'distilled' if record.distill else 'hard labels only (baseline)'}")
            source = record.distilled_from
            if source is not None:
                lines.append(f"- distilled from ensemble `{source.ensemble}` "
                             f"({len(source.members)} members)")
            if record.selected:
                lines.append(f"- weights: {json.dumps(record.selected, sort_keys=True)}")
        else:
            lines.append(f"- teacher member `{name}`, best step {record.best_step} of "
                         f"{record.steps}")
    extra = meta.get("extra") or {}
    if extra:
        lines.append(f"- saved with: `{json.dumps(extra, sort_keys=True)}`")
    lines.append("")
    return "\n".join(lines)


__all__ = ["ExportedTask", "add_export_arguments", "export_model", "export_onnx",
           "model_card", "onnx_logits", "onnx_missing", "probe_inputs", "run_export"]
