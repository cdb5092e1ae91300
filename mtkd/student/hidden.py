"""Representation (hidden-state) distillation of the student (issue 18, item 2).

XtremeDistilTransformers (Mukherjee, Awadallah, Gao 2021, section 3) and TinyBERT (Jiao et
al. 2020, section 3.1, eq. 8) distil a teacher's internal representations as well as its
outputs: each student layer's hidden states are mapped through a learned linear projection
(when the widths differ) and matched by MSE to a teacher layer's. Here:

* the **representation teacher** is one ensemble member (``student.kd.hidden_teacher``:
  ``best`` = the finished member with the highest dev average among those that read the
  student's tokenization, or a member's name), chosen by the student stage's driver
  (:func:`representation_teacher`) and loaded in every student worker, frozen, in eval
  mode, without gradients, at the worker's resolved precision;
* the **layer map** (:func:`layer_map`) pairs student layer i (1..S) with teacher layer
  round(i * T / S) (``student.kd.hidden_layers`` overrides it; 0 is the embeddings);
* :class:`RepresentationDistillation` wraps the student for training: its parameters are
  the student's (same names, ``encoder.*`` and ``heads.*``) plus ``hidden_projection.*``
  (when the widths differ), so DeepSpeed trains and checkpoints the projection with the
  student; in train mode its forward returns :class:`~mtkd.losses.WithAuxLoss` (outputs
  and ``hidden_weight`` x :func:`~mtkd.losses.hidden_state_loss`), which the training loop
  adds to the batch's loss; in eval mode it is the student. Staged training
  (:mod:`mtkd.training.stages`) sets the weight per stage (:meth:`set_aux_weight`).
  :func:`student_weights` drops the projection from a state dict: the exported model is
  the plain student.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtkd.data.transfer import TRANSFER
from mtkd.errors import MtkdError
from mtkd.experiment import TEACHERS_SUMMARY, member_dir
from mtkd.losses import WithAuxLoss, hidden_state_loss
from mtkd.model.mtdnn import MTDNN
from mtkd.model.shape import spread
from mtkd.precision import autocast
from mtkd.storage import Storage

PROJECTION = "hidden_projection"
"""The projection's module name: its parameters are ``hidden_projection.*``."""


def layer_map(student_layers: int, teacher_layers: int,
              given: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 1-based (0 = the embeddings' output).

    Uniform by default: student layer i <- teacher layer round(i * T / S), halves up
    (6 -> 12: 2, 4, ..., 12; 3 -> 6: 2, 4, 6). ``given`` (student.kd.hidden_layers) names
    the teacher layer of every student layer. Raises MtkdError for a map that does not fit
    the two encoders."""
    if given is None:
        return [(i, spread(i, teacher_layers, student_layers))
                for i in range(1, student_layers + 1)]
    if len(given) != student_layers or any(not 0 <= t <= teacher_layers for t in given):
        raise MtkdError(f"student.kd.hidden_layers {list(given)} does not fit a "
                        f"{student_layers}-layer student and a {teacher_layers}-layer "
                        f"representation teacher (fix: {student_layers} teacher layers, each "
                        f"between 0 and {teacher_layers}, or null for the uniform map)")
    return [(i, int(t)) for i, t in enumerate(given, start=1)]


class RepresentationDistillation(nn.Module):
    """The student during training with representation distillation (module docstring).

    ``teacher`` is held outside the module tree (not trained, not saved, not moved by
    DeepSpeed); it follows the inputs' device at the first forward. ``precision`` is the
    resolved one (fp32, bf16, fp16) the teacher's forward runs at."""

    def __init__(self, student: MTDNN, teacher: MTDNN, weight: float,
                 layers: Sequence[int] | None = None, precision: str = "fp32") -> None:
        super().__init__()
        self.encoder = student.encoder
        self.heads = student.heads
        width_s = int(student.encoder.config.hidden_size)
        width_t = int(teacher.encoder.config.hidden_size)
        if width_s != width_t:
            setattr(self, PROJECTION, nn.Linear(width_s, width_t))
        teacher.eval().requires_grad_(False)
        self._models = (student, teacher)
        self.weight = float(weight)
        self.precision = precision
        self.pairs = layer_map(int(student.encoder.config.num_hidden_layers),
                               int(teacher.encoder.config.num_hidden_layers), layers)

    def set_aux_weight(self, weight: float) -> None:
        """The weight of the hidden-state term from now on (staged training sets each
        stage's loss.hidden at its start; 0 skips the teacher's forward)."""
        self.weight = float(weight)

    @property
    def student(self) -> MTDNN:
        return self._models[0]

    @property
    def teacher(self) -> MTDNN:
        return self._models[1]

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None,
                candidate_mask: torch.Tensor | None = None) -> torch.Tensor | WithAuxLoss:
        """Eval mode: the student's outputs. Train mode: WithAuxLoss(outputs, weight x
        hidden-state loss over the real tokens of the rows the encoder reads). A batch of
        unlabelled transfer text (``task`` :data:`~mtkd.data.transfer.TRANSFER`, which has
        no head; input_ids [B, T]) gives WithAuxLoss(None, weight x hidden-state loss):
        the loop trains on the representation loss alone."""
        student, teacher = self._models
        if task == TRANSFER and self.training:
            _, states = student.encode(input_ids, attention_mask, token_type_ids,
                                       all_layers=True)
            outputs, ids, mask, types = None, input_ids, attention_mask, token_type_ids
        elif not self.training:
            return student(task, input_ids, attention_mask, token_type_ids, candidate_mask)
        elif self.weight == 0:  # a stage without the term: no teacher forward
            outputs = student(task, input_ids, attention_mask, token_type_ids, candidate_mask)
            projection = getattr(self, PROJECTION, None)
            # the projection still gets a (zero) gradient: DeepSpeed reduces every parameter
            zero = (sum(p.sum() for p in projection.parameters()) * 0.0 if projection
                    is not None else outputs.new_zeros((), dtype=torch.float32))
            return WithAuxLoss(outputs, zero)
        else:
            outputs, states = student.forward_with_hidden(task, input_ids, attention_mask,
                                                          token_type_ids, candidate_mask)
            ids, mask, types = student.encoder_rows(task, input_ids, attention_mask,
                                                    token_type_ids, candidate_mask)
        if next(teacher.parameters()).device != ids.device:
            teacher.to(ids.device)
        with torch.no_grad(), autocast(ids.device, self.precision):
            _, targets = teacher.encode(ids, mask, types, all_layers=True)
        loss = hidden_state_loss([states[s] for s, _ in self.pairs],
                                 [targets[t] for _, t in self.pairs], mask,
                                 getattr(self, PROJECTION, None))
        return WithAuxLoss(outputs, loss * self.weight)


def student_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A training state dict without the projection: the student's own weights."""
    return {k: v for k, v in state.items() if not k.startswith(PROJECTION + ".")}


def representation_teacher(store: Storage, name: str, tokenization: str | None
                           ) -> dict[str, Any]:
    """The member (its ``teachers/teachers.json`` summary: name, lineage, average, ...) the
    student's hidden states learn from: ``name``, or with "best" the one with the highest
    dev average among the finished members whose tokenization is ``tokenization`` (the
    student's; None: encoder.path's). Raises MtkdError when there is none, or when the
    named member reads another tokenization."""
    members = store.read_json(TEACHERS_SUMMARY)["members"] if store.exists(
        TEACHERS_SUMMARY) else []
    if name != "best":
        found = [m for m in members if m["name"] == name]
        if not found:
            raise MtkdError(f"student.kd.hidden_teacher {name!r} is not a finished member "
                            f"(finished: {', '.join(m['name'] for m in members) or 'none'}); "
                            "fix: name one of them, or best")
        if found[0].get("tokenization") != tokenization:
            raise MtkdError(f"student.kd.hidden_teacher {name!r} reads another tokenization "
                            "than the student (its encoder's tokenizer differs); fix: name a "
                            "member with the student's encoder's tokenizer, or best")
        return found[0]
    usable = [m for m in members if m.get("tokenization") == tokenization
              and m.get("average") is not None]
    if not usable:
        raise MtkdError("student.kd.hidden_weight > 0 but no finished member reads the "
                        "student's tokenization (fix: give the student an encoder with a "
                        "member's tokenizer, or set student.kd.hidden_weight: 0)")
    return min(usable, key=lambda m: (-float(m["average"]), m["name"]))  # ties: first name


def load_teacher(store: Storage, member: str, device: torch.device | str = "cpu") -> MTDNN:
    """The member's saved MT-DNN, frozen, in eval mode on ``device``."""
    from mtkd.model.remote import load_model_from

    with tempfile.TemporaryDirectory(prefix="mtkd-hidden-teacher-") as tmp:
        model, _ = load_model_from(store, f"{member_dir(member)}/model", Path(tmp) / "model",
                                   device=device)
    return model.eval().requires_grad_(False)
