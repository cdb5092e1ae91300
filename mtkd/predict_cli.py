"""``mtkd predict``: run a saved MT-DNN on a file of texts and write JSON lines.

```
mtkd predict MODEL_DIR --task T --input FILE [--output OUT] [--text-column text]
             [--pair-column text_pair] [--batch-size 32] [--device cpu|cuda]
             [--precision fp32|bf16|fp16]
```

* ``MODEL_DIR``: a directory written by :func:`mtkd.model.io.save_mtdnn`, local or
  ``s3://`` (downloaded to a temporary folder first).
* ``--input``: CSV, TSV, JSONL or Parquet (by extension), local or ``s3://``, read and
  checked like a task file (:func:`mtkd.tasks.files.read_table`): the text column, the
  pair column for pair tasks (optional for regression: used when present), the candidates
  column (a list, or a JSON list in CSV/TSV) for ranking, and ``uid`` if the file has it.
* ``--output``: default ``<input stem>.predictions.jsonl`` next to a local input (an
  ``s3://`` input needs ``--output``); written atomically through :class:`Storage`.

One JSON object per input row, in input order::

    {"row": 0, "uid": "a1", "label": "pos", "probabilities": {"neg": 0.1, "pos": 0.9}}
    {"row": 1, "score": 3.2}                                  # regression
    {"row": 2, "best_candidate": 1, "scores": [-0.3, 1.7]}    # ranking (one per candidate)

``row`` is the 0-based position of the record in the file (blank lines do not count);
``uid`` is present only when the input has a uid column. Classification probabilities are
the softmax of the head's outputs; ranking scores are the raw candidate scores.

User mistakes raise :class:`MtkdError` (the CLI prints it and exits 2). The cheap checks
(model directory, task name, input columns) run before torch and the model are imported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from mtkd.config.schema import Precision
from mtkd.errors import DataError, MtkdError

if TYPE_CHECKING:
    from mtkd.storage import Storage
    from mtkd.tasks.files import Table
    from mtkd.tasks.spec import TaskSpec

PRECISIONS = get_args(Precision)  # auto, fp32, bf16, fp16
META_FILE = "mtdnn.json"  # = mtkd.model.io.META_FILE (not imported: that pulls in torch)
CHUNK_BATCHES = 8
"""Rows are sorted by length and handed to predict_texts this many batches at a time (the
progress bar moves once per chunk)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mtkd predict`` (stdlib only, so building the parser stays fast)."""
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="saved model directory (local or s3://), e.g. "
                             "runs/<experiment>/student/student/final")
    parser.add_argument("--task", required=True, help="which of the model's tasks to predict")
    parser.add_argument("--input", required=True, metavar="FILE",
                        help="CSV, TSV, JSONL or Parquet file (by extension), local or s3://")
    parser.add_argument("--output", metavar="OUT",
                        help="JSON lines to write (default: <input stem>.predictions.jsonl "
                             "next to a local input; required for an s3:// input)")
    parser.add_argument("--text-column", metavar="COLUMN",
                        help="column with the text (default: text; ranking: query if the "
                             "file has it, else text)")
    parser.add_argument("--pair-column", metavar="COLUMN",
                        help="column with the second text of pair tasks (default: text_pair; "
                             "optional for regression)")
    parser.add_argument("--candidates-column", metavar="COLUMN", default="candidates",
                        help="ranking: column with the list of candidate texts (in CSV/TSV a "
                             "JSON list) (default: candidates)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                        help="examples per forward pass (default: 32)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="where to run the model (default: cuda if available, else cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: the best for the device (bf16 on CUDA >= 8.0 and CPUs "
                             "with native bf16, fp16 on CUDA 7.x, else fp32); or fp32, "
                             "bf16, fp16 (cuda only) (default: auto)")


# ------------------------------------------------------------------------ model


def local_model_dir(uri: str, stack: contextlib.ExitStack) -> Path:
    """The model directory on local disk (an s3:// one is downloaded to a temporary dir)."""
    if uri.startswith("s3://"):
        from mtkd.storage import Storage

        local = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtkd-model-")))
        Storage.from_uri(uri).download_dir("", local)
        return local
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise MtkdError(f"model directory {path} does not exist (fix: point at a directory "
                        "written by save_mtdnn, e.g. runs/<experiment>/student/student/"
                        "final)")
    if not path.is_dir():
        raise MtkdError(f"{path} is a file, not a model directory (fix: give the directory "
                        f"that holds {META_FILE}, encoder/ and heads.safetensors)")
    return path


def model_specs(model_dir: Path, shown: str) -> list[TaskSpec]:
    """The saved tasks, read from ``mtdnn.json`` without importing torch; anything unusual
    is left to :func:`mtkd.model.io.read_meta`, which names the problem."""
    from mtkd.tasks.spec import TaskSpec

    path = model_dir / META_FILE
    if not path.is_file():
        raise MtkdError(f"{shown} is not a saved model: {META_FILE} is missing (fix: point at "
                        "a directory written by save_mtdnn, e.g. "
                        "runs/<experiment>/student/student/final)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta["format"] == "mtkd.mtdnn" and meta["version"] == 1:
            return [TaskSpec.from_json(t) for t in meta["tasks"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        pass
    from mtkd.model.io import read_meta

    return list(read_meta(model_dir)["specs"])


# ------------------------------------------------------------------------ input


def _strict_rows(task: str) -> Any:
    """BadRows for prediction: the first bad row is an error (every row needs an output),
    and the message suggests no ``tasks.N.bad_rows`` setting."""
    from mtkd.tasks.validation import BadRow, BadRows

    class StrictRows(BadRows):
        def report(self, file: str, row: int | None, column: str | None, reason: str,
                   detail: str, fix: str = "") -> None:
            bad = BadRow(file, row, column, reason, detail)
            raise DataError(f"{bad} (fix: {fix})" if fix else str(bad))

    return StrictRows("error", "predict", task)


def _roles(spec: TaskSpec, args: argparse.Namespace, file: str, found: list[str]
           ) -> dict[str, str]:
    """Role -> column of the input file; DataError naming the column and those found."""
    kind = spec.kind
    text = args.text_column or kind.layout.text_column(found)
    wanted: dict[str, tuple[str, bool, str]] = {"text": (text, True, "--text-column")}
    if kind.layout.candidates:
        wanted["candidates"] = (args.candidates_column, True, "--candidates-column")
    if kind.takes_text_pair is not False:
        explicit = args.pair_column is not None
        wanted["text_pair"] = (args.pair_column or "text_pair", bool(kind.pair) or explicit,
                               "--pair-column")
    elif args.pair_column is not None:
        raise MtkdError(f"task {spec.name!r} is a {spec.type} task: it takes no "
                        "--pair-column (fix: leave it out)")
    roles: dict[str, str] = {}
    for role, (column, required, flag) in wanted.items():
        if column in found:
            roles[role] = column
        elif required:
            raise DataError(f"{file}: column {column!r} ({role} of {spec.type} task "
                            f"{spec.name!r}) not found; columns found: "
                            f"{', '.join(found) or '(none)'} (fix: pass {flag} with one of "
                            "them, or rename the column in the file)")
    if "uid" in found:
        roles["uid"] = "uid"
    return roles


def _read_input(path: str, spec: TaskSpec, args: argparse.Namespace) -> Table:
    from mtkd.tasks.files import EXTENSIONS, file_format, read_table

    try:
        fmt = file_format(path, "auto", "predict", spec.name)
    except DataError:
        raise DataError(f"cannot tell the format of {path} from its extension (fix: name it "
                        f"*{', *'.join(EXTENSIONS)})") from None
    table = read_table(path, fmt, lambda found: _roles(spec, args, path, found),
                       _strict_rows(spec.name))
    if not table.rows:
        if table.columns:  # a header but no records
            raise DataError(f"{path} has no rows to predict (fix: give a file with at least "
                            "one row)")
        raise DataError(f"{path} is empty (fix: give a file with a header and rows)")
    return table


def _examples(table: Table) -> tuple[list[str], list[Any] | None, list[str | None] | None]:
    """Texts, pairs (texts or candidate lists; None if the task has none) and uids (None
    without a uid column; an empty uid cell is None)."""
    from mtkd.tasks.validation import RowProblem, as_text, cell_candidates, cell_text

    roles, data = table.roles, table.data
    texts: list[str] = []
    pairs: list[Any] | None = [] if "text_pair" in roles or "candidates" in roles else None
    uids: list[str | None] | None = [] if "uid" in roles else None
    for i, row in enumerate(table.rows):
        column = roles["text"]
        try:
            texts.append(cell_text(data[column][i], "text"))
            if "candidates" in roles:
                column = roles["candidates"]
                pairs.append(cell_candidates(data[column][i]))  # type: ignore[union-attr]
            elif "text_pair" in roles:
                column = roles["text_pair"]
                pairs.append(cell_text(data[column][i], "text_pair"))  # type: ignore[union-attr]
        except RowProblem as problem:
            fix = f" (fix: {problem.fix})" if problem.fix else ""
            raise DataError(f"{table.file}, row {row}, column {column!r}: {problem.detail}"
                            f"{fix}") from None
        if uids is not None:
            uids.append(as_text(data[roles["uid"]][i]))
    return texts, pairs, uids


# ------------------------------------------------------------------------ output


def _split_uri(uri: str) -> tuple[Storage, str]:
    """(Storage of the parent folder, file name) of a local path or s3:// object."""
    from mtkd.storage import Storage

    if uri.startswith("s3://"):
        parent, _, name = uri.rstrip("/").rpartition("/")
        if not name or parent == "s3:/":
            raise MtkdError(f"{uri!r} names no object (fix: use s3://bucket/path/file.jsonl)")
        return Storage.from_uri(parent), name
    path = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    if os.path.isdir(path):
        raise MtkdError(f"output {path} is a directory (fix: give a file name, e.g. "
                        f"{os.path.join(path, 'predictions.jsonl')})")
    return Storage.from_uri(os.path.dirname(path)), os.path.basename(path)


def _output_uri(args: argparse.Namespace) -> str:
    if args.output:
        return str(args.output)
    if args.input.startswith("s3://"):
        raise MtkdError(f"--output is required for an s3:// input ({args.input}) (fix: add "
                        "--output s3://bucket/path/predictions.jsonl or a local file)")
    path = Path(args.input.removeprefix("file://")).expanduser()
    return str(path.with_name(f"{path.stem}.predictions.jsonl"))


def _record(spec: TaskSpec, row: int, uids: list[str | None] | None, value: Any,
            n_candidates: int) -> dict[str, Any]:
    out: dict[str, Any] = {"row": row}
    if uids is not None:
        out["uid"] = uids[row]
    kind = spec.kind
    if kind.layout.candidates:
        scores = [float(s) for s in value[:n_candidates]]
        out["best_candidate"] = max(range(len(scores)), key=scores.__getitem__)
        out["scores"] = scores
    elif kind.is_regression:
        out["score"] = float(value)
    else:
        labels = list(spec.labels) or [str(i) for i in range(len(value))]
        probs = [float(p) for p in value]
        out["label"] = labels[max(range(len(probs)), key=probs.__getitem__)]
        out["probabilities"] = dict(zip(labels, probs, strict=True))
    return out


# ------------------------------------------------------------------------ command


def device_and_precision(device: str | None, precision: str, device_key: str = "--device",
                         precision_key: str = "--precision") -> tuple[str, Any]:
    """The device to predict on (None: cuda if torch sees a GPU, else cpu) and the
    precision resolved there (:func:`mtkd.precision.resolve_here`: ``auto`` is bf16 on
    CUDA >= 8.0 and CPUs with native bf16, fp16 on CUDA 7.x, else fp32; an impossible one
    raises PrecisionError). MtkdError for cuda without a GPU. ``*_key`` name the setting
    in messages (``mtkd predict``'s flags, or the Python API's arguments)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise MtkdError(f"{device_key} {device}: unknown device (fix: use cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise MtkdError(f"{device_key} cuda: no CUDA GPU is available to torch (fix: use "
                        f"{device_key} cpu, or install the CUDA build of torch)")
    from mtkd.precision import resolve_here

    return device, resolve_here(precision, device, precision_key)


def _device_and_precision(args: argparse.Namespace) -> tuple[str, str]:
    """The device and the resolved precision, announced on stderr."""
    device, resolved = device_and_precision(args.device, args.precision)
    if resolved.warning:
        print(f"warning: {resolved.warning}", file=sys.stderr)
    elif not getattr(args, "quiet", False):
        print(f"precision {resolved.describe()}", file=sys.stderr)
    return device, resolved.precision


def run_predict(args: argparse.Namespace) -> int:
    """The ``mtkd predict`` command; returns the exit code (user mistakes raise MtkdError)."""
    out_store, out_name = _split_uri(_output_uri(args))
    with contextlib.ExitStack() as stack:
        model_dir = local_model_dir(args.model_dir, stack)
        specs = {s.name: s for s in model_specs(model_dir, args.model_dir)}
        if args.task not in specs:
            raise MtkdError(f"model {args.model_dir} has no task {args.task!r} (fix: use one "
                            f"of its tasks: {', '.join(specs)})")
        spec = specs[args.task]
        table = _read_input(args.input, spec, args)
        texts, pairs, uids = _examples(table)
        device, precision = _device_and_precision(args)

        from mtkd.model.io import load_mtdnn

        model, tokenizer = load_mtdnn(model_dir, device=device)
        values, seconds = _predict(model, tokenizer, spec, texts, pairs, args, device,
                                   precision)

    lines = []
    for i, value in enumerate(values):
        n_candidates = len(pairs[i]) if spec.kind.layout.candidates and pairs else 0
        record = _record(spec, i, uids, value, n_candidates)
        lines.append(json.dumps(record, ensure_ascii=False))
    out_store.write_atomic(out_name, ("\n".join(lines) + "\n").encode("utf-8"))
    rate = len(values) / max(seconds, 1e-9)
    print(f"wrote {len(values)} predictions to {out_store.uri_of(out_name)} ({rate:.1f} ex/s)")
    return 0


def _predict(model: Any, tokenizer: Any, spec: TaskSpec, texts: list[str],
             pairs: list[Any] | None, args: argparse.Namespace, device: str,
             precision: str) -> tuple[list[Any], float]:
    """predict_texts over length-sorted chunks, with a progress bar; input order restored."""
    from tqdm import tqdm

    from mtkd.model.predict import predict_texts

    def size(i: int) -> int:
        if pairs is None:
            return len(texts[i])
        if isinstance(pairs[i], list):
            return (len(texts[i]) + max(map(len, pairs[i]))) * len(pairs[i])
        return len(texts[i]) + len(pairs[i])

    order = sorted(range(len(texts)), key=size)
    chunk = args.batch_size * CHUNK_BATCHES
    probs = spec.kind.has_classes
    outputs: list[Any] = [None] * len(texts)
    start = time.perf_counter()
    with tqdm(total=len(texts), unit="ex", desc=f"predict {spec.name}", file=sys.stderr,
              disable=bool(getattr(args, "quiet", False)), dynamic_ncols=True) as bar:
        for first in range(0, len(order), chunk):
            ids = order[first:first + chunk]
            result = predict_texts(
                model, tokenizer, spec.name, [texts[i] for i in ids],
                [pairs[i] for i in ids] if pairs is not None else None,
                batch_size=args.batch_size, device=device, probs=probs, precision=precision)
            for i, value in zip(ids, result, strict=True):
                outputs[i] = value
            bar.update(len(ids))
    return outputs, time.perf_counter() - start
