"""The one resumable-checkpoint format of every trainer: teacher members (one process, or
several data-parallel ranks) and student runs write and read it through their
:class:`~mtkd.training.backend.Backend`.

A checkpoint is a folder; every rank writes its part into its own local folder and hands
it to Ray Tune / Ray Train, which merge the ranks' files into one checkpoint in storage:

* the backend's state (weights, optimizer, schedule, loss scaler), by
  ``Backend.save_state``: :class:`~mtkd.training.backend.TorchBackend` writes
  ``torch_state.pt`` from rank 0 (data-parallel ranks hold the same state),
  :class:`~mtkd.student.deepspeed_backend.DeepSpeedBackend` its ZeRO shard under ``ds/``
  from every rank;
* ``rng_rank<r>.pt``: every rank's Python, numpy and torch (and CUDA) RNG states;
* ``best.safetensors`` (rank 0, optional): the weights of the best evaluation when they
  are not the current ones (a teacher member keeps its best in memory);
* ``checkpoint.json`` (rank 0, written last): ``{"format": "mtkd.checkpoint",
  "version": 1, "loop": LoopState, "attempts": [...]}``, the loop's position (step, epoch,
  batch of the epoch, best score, history) and the attempts so far.

Checkpoints of earlier mtkd versions are read too, so that a run interrupted before an
upgrade resumes: a teacher's (``state.json``, and ``backend.pt`` holding backend state,
rank 0's RNG and the best weights) and a student's (``loop_state.json``; its DeepSpeed
files and RNG files are the same as now). A folder with none of these files raises
:class:`CheckpointError`. Everything is loaded with ``torch.load(weights_only=True)`` or
safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mtkd.errors import MtkdError
from mtkd.training.loop import LoopState, capture_rng

if TYPE_CHECKING:
    from mtkd.storage import Storage
    from mtkd.training.backend import Backend

FORMAT, VERSION = "mtkd.checkpoint", 1
META_FILE = "checkpoint.json"
BEST_FILE = "best.safetensors"
LEGACY_META_FILES = ("state.json", "loop_state.json")
"""What teachers and the student wrote in place of META_FILE before format 1."""
LEGACY_TEACHER_STATE = "backend.pt"
"""A teacher's backend state, rank 0's RNG and best weights, before format 1."""


class CheckpointError(MtkdError):
    """A checkpoint folder mtkd cannot resume from (names the folder and the fix)."""


@dataclass
class Resume:
    """Where a run continues from; the backend's state is already loaded."""

    state: LoopState
    rng: dict[str, Any]
    """This rank's RNG states (:func:`mtkd.training.loop.restore_rng`)."""
    attempts: list[dict[str, Any]]
    best: dict[str, torch.Tensor] | None
    """The best evaluation's weights when they differ from the checkpoint's own."""


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def save_checkpoint(folder: Path, backend: Backend, state: LoopState, *, rank: int = 0,
                    attempts: list[dict[str, Any]] | None = None,
                    best: dict[str, torch.Tensor] | None = None) -> None:
    """Write this rank's part of a checkpoint into the local ``folder`` (every rank must
    call it: a DeepSpeed save is a collective). ``best``: rank 0's best weights when they
    are not the current ones."""
    folder = Path(folder)
    backend.save_state(folder, rank)
    torch.save(capture_rng(), folder / rng_file(rank))
    if rank:
        return
    if best is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in best.items()}, str(folder / BEST_FILE))
    meta = {"format": FORMAT, "version": VERSION, "loop": state.to_json(),
            "attempts": list(attempts or [])}
    (folder / META_FILE).write_text(json.dumps(meta))


def parse_meta(text: str, where: str) -> dict[str, Any]:
    """A checkpoint's metadata (this format's or an earlier one's) from its JSON text;
    CheckpointError when it is not one."""
    try:
        meta = json.loads(text)
        LoopState.from_json(meta["loop"])
        if meta.get("format", FORMAT) != FORMAT or int(meta.get("version", 0)) > VERSION:
            raise CheckpointError(f"{where} is a checkpoint of a newer mtkd ({meta['format']} "
                                  f"version {meta['version']}) (fix: upgrade mtkd, or run "
                                  "with --force to train afresh)")
        list(meta["attempts"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where} is not an mtkd checkpoint ({exc}) (fix: delete it, "
                              "or run with --force to train afresh)") from None
    return meta


def _meta(folder: Path) -> dict[str, Any]:
    for name in (META_FILE, *LEGACY_META_FILES):
        if (folder / name).is_file():
            return parse_meta((folder / name).read_text(), str(folder / name))
    raise CheckpointError(f"{folder} holds no checkpoint ({META_FILE} is missing) (fix: "
                          "delete it, or run with --force to train afresh)")


def load_checkpoint(folder: Path, backend: Backend, rank: int = 0) -> Resume:
    """Load the backend's state from ``folder`` and return where this rank continues."""
    folder = Path(folder)
    meta = _meta(folder)
    best = None
    if "format" not in meta and (folder / LEGACY_TEACHER_STATE).is_file():
        old = torch.load(folder / LEGACY_TEACHER_STATE, weights_only=True, map_location="cpu")
        backend.load_state_dict(old["backend"])  # type: ignore[attr-defined]
        rng = old["rng"] if rank == 0 else _load(folder / rng_file(rank))
        best = old.get("best")
    else:
        backend.load_state(folder, rank)
        rng = _load(folder / rng_file(rank))
        if (folder / BEST_FILE).is_file():
            from safetensors.torch import load_file

            best = load_file(str(folder / BEST_FILE))
    return Resume(LoopState.from_json(meta["loop"]), rng, list(meta["attempts"]), best)


def verify_checkpoint(folder: Path) -> int:
    """Read every file of a checkpoint without using it (an upload cut short by a kill may
    leave one truncated); its step. Raises CheckpointError or the loader's error."""
    folder = Path(folder)
    meta = _meta(folder)
    for path in sorted(folder.rglob("*.pt")):
        torch.load(path, weights_only=True, map_location="cpu")
    if (folder / BEST_FILE).is_file():
        from safetensors.torch import load_file

        load_file(str(folder / BEST_FILE))
    return int(meta["loop"]["step"])


def stored_step(store: Storage, rel: str) -> int | None:
    """The step of the checkpoint at ``rel`` in ``store`` from its metadata alone; None
    when it has none that parses (not a checkpoint, or one still being uploaded)."""
    for name in (META_FILE, *LEGACY_META_FILES):
        try:
            return int(parse_meta(store.read_text(f"{rel}/{name}"), f"{rel}/{name}")
                       ["loop"]["step"])
        except MtkdError:  # missing (StorageError) or not a checkpoint's
            continue
    return None


def _load(path: Path) -> Any:
    return torch.load(path, weights_only=True, map_location="cpu")
