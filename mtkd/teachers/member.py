"""One ensemble member as a Ray Tune trial: train, checkpoint, resume, write the model.

The trial function reads only its ``trial_config`` (the experiment config as plain
data, the member, the storage uri): no globals. Every dev evaluation is reported to
Tune together with a checkpoint (model, optimizer, schedule, loop state, RNG), so a
retried trial continues from its last evaluation instead of step 0. When training ends,
the best model goes to ``teachers/<member>/model/`` and ``teachers/<member>/member.json``
is written last, atomically: only then does the member count as finished.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mtkd.config import config_from_dict
from mtkd.model.mtdnn import keep_tasks
from mtkd.model.remote import load_model_from, save_model_to
from mtkd.storage import Storage
from mtkd.teachers.plan import Member
from mtkd.training.loop import LoopHooks, LoopState, capture_rng
from mtkd.training.recipe import build_training_loop, load_prepared_tasks, run_training

log = logging.getLogger("mtkd")
CHECKPOINT_FILE, STATE_FILE = "backend.pt", "state.json"


def member_dir(member_name: str) -> str:
    return f"teachers/{member_name}"


def _flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    flat = {"score": float(record["score"]), "step": int(record["step"])}
    for task, metrics in record["metrics"].items():
        for name, value in metrics.items():
            flat[f"{task}/{name}"] = float(value)
    return flat


def _restore(checkpoint: Any) -> tuple[dict, LoopState, dict, list[dict]]:
    with checkpoint.as_directory() as folder:
        backend = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True,
                             map_location="cpu")
        saved = json.loads((Path(folder) / STATE_FILE).read_text())
    return backend["backend"], LoopState.from_json(saved["loop"]), backend["rng"], \
        saved["attempts"]


def train_member_trial(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable for one member (see module docstring).

    ``tune_config["trial"]`` holds: experiment (config as plain data), member, fingerprint,
    storage (absolute root uri).
    """
    from ray import tune

    trial_config = tune_config["trial"]
    started = time.time()
    config = config_from_dict(trial_config["experiment"])
    member = Member.from_json(trial_config["member"])
    resources = config.teachers.resources_per_member
    torch.set_num_threads(max(1, int(resources.cpu)))
    logging.basicConfig(level=logging.INFO if config.teachers.verbose else logging.WARNING,
                        format=f"[mtkd {member.name}] %(message)s")
    logging.getLogger("ray").setLevel(logging.WARNING)
    device = "cuda" if resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    store = Storage.from_uri(trial_config["storage"]).child(config.name)
    here = store.child(member_dir(member.name))
    data = load_prepared_tasks(store, member.tasks)

    resume, attempts = None, []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        backend_state, loop_state, rng, attempts = _restore(checkpoint)
        resume = (backend_state, loop_state, rng)
    attempts.append({"pid": os.getpid(), "start_step": resume[1].step if resume else 0,
                     "started_at": started})
    training = member.training(config.teachers.training)
    start_from = None
    if member.init_model:  # per_task member fine-tuned from the shared multi-task model
        local = Path(tempfile.mkdtemp(prefix="mtkd-init-"))
        shared, _ = load_model_from(store, member.init_model, local / "model")
        start_from = keep_tasks(shared, member.tasks)
    loop = build_training_loop(config, data, encoder=member.encoder,
                               num_layers=config.encoder.num_layers, training=training,
                               seed=member.seed, device=device, name=member.name,
                               model=start_from)

    def on_eval(state: LoopState, record: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="mtkd-ckpt-") as folder:
            torch.save({"backend": loop.backend.state_dict(), "rng": capture_rng()},
                       Path(folder) / CHECKPOINT_FILE)
            (Path(folder) / STATE_FILE).write_text(json.dumps(
                {"loop": state.to_json(), "attempts": attempts}))
            tune.report(_flat_metrics(record),
                        checkpoint=tune.Checkpoint.from_directory(folder))
        # For people and tests watching: the last step whose checkpoint was persisted.
        here.write_json_atomic("progress.json", {"pid": os.getpid(), "step": state.step,
                                                 "score": record["score"],
                                                 "attempt": len(attempts)})

    loop.hooks = LoopHooks(on_eval=on_eval)
    result = run_training(loop, member.encoder, member.seed, resume)
    state = result.state
    uri = save_model_to(here, "model", result.model, result.tokenizer,
                        extra={"member": member.to_json()})
    seconds = time.time() - started
    summary = {
        "name": member.name, "variant": member.variant(), "tasks": list(member.tasks),
        "fingerprint": trial_config["fingerprint"], "metrics": state.best_metrics,
        "average": state.best_score, "best_step": state.best_step, "steps": state.step,
        "model": uri, "wall_seconds": round(seconds, 2),
        "train_examples_per_s": round(state.examples / max(state.train_seconds, 1e-9), 2),
        "train_tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1),
        "attempts": attempts, "history": state.history,
    }
    here.write_json_atomic("member.json", summary)
    tune.report({"score": float(state.best_score or 0.0), "step": state.step, "finished": 1})
