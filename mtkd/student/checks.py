"""Checks of the student's shape and representation teacher against the encoders, before
anything runs (``mtkd validate`` and the pipeline's pre-flight, through
:func:`mtkd.encoder_checks.check_encoders`), and the one-line shape ``mtkd validate``
prints.

* **Shape**: ``student.num_layers`` / ``layer_selection`` / ``hidden_size`` must fit the
  student's encoder (a width that is a multiple of its head size, a BERT-layout encoder).
* **Representation teacher** (``student.kd.hidden_weight`` > 0, or a stage's
  ``loss.hidden`` > 0): a named ``student.kd.hidden_teacher`` must be a planned member and
  read the student's inputs, i.e. its encoder's tokenizer must be the student's; with
  ``best``, at least one planned member must; ``student.kd.hidden_layers`` needs one entry
  per student layer.

Encoders not on this machine yet are skipped here (``local_only``), as the other encoder
checks do; the student stage refuses the same mistakes when it starts.
"""

from __future__ import annotations

from pathlib import Path

from mtkd.config import ExperimentConfig
from mtkd.errors import MtkdError, Problem


def _student_encoder(config: ExperimentConfig) -> tuple[str, str]:
    """(path, key) of the student's encoder."""
    if config.student.encoder:
        return config.student.encoder, "student.encoder"
    return config.encoder.path, "encoder.path"


def shape_problems(config: ExperimentConfig, local: Path | None) -> list[Problem]:
    """student.hidden_size against the student's encoder in ``local`` (None: not
    checked). Its depth is checked by :func:`mtkd.encoder_checks.depth_problems`."""
    from mtkd.model.shape import EncoderShape, shaped_parameters

    width = config.student.hidden_size
    if local is None or width is None:
        return []
    try:
        shaped_parameters(local, EncoderShape(hidden_size=width))
    except MtkdError as exc:
        return [Problem("student.hidden_size", str(exc))]
    except (OSError, ValueError):
        return []  # an unreadable config.json is named by length_problems
    return []


def hidden_teacher_problems(config: ExperimentConfig,
                            local: dict[str, Path | None]) -> list[Problem]:
    """The representation teacher against the plan and the tokenizers. ``local``: {encoder
    path: its folder on this machine, or None when not here}."""
    from mtkd.pretrained import tokenizer_fingerprint
    from mtkd.teachers.plan import plan_members
    from mtkd.tokenizations import member_reads_encoder

    kd = config.student.kd
    if not config.student.hidden_distillation or not config.student.distill:
        return []
    members = plan_members(config)
    named = kd.hidden_teacher
    if named != "best":
        members = [m for m in members if m.name == named]
        if not members:
            planned = ", ".join(m.name for m in plan_members(config)[:6])
            return [Problem("student.kd.hidden_teacher", f"{named!r} is not a planned member",
                            f"name one (planned: {planned}, ...) or use best")]
    path, key = _student_encoder(config)
    student_dir = local.get(path)
    if student_dir is None:
        return []
    mine = tokenizer_fingerprint(student_dir)
    differing = []
    for member in members:
        encoder = member_reads_encoder(config, member.encoder, member.init_model)
        folder = local.get(encoder)
        if folder is None:
            return []  # not checkable here
        if tokenizer_fingerprint(folder) != mine:
            differing.append(f"{member.name} ({encoder})")
    if len(differing) < len(members):
        return []
    return [Problem("student.kd.hidden_teacher",
                    f"{named}: the representation teacher reads the student's inputs, but "
                    f"the tokenizer of {', '.join(differing[:3])} differs from the student's "
                    f"({key}: {path})",
                    "name a member whose encoder has the student's tokenizer, give the "
                    "student such an encoder (student.encoder), or set "
                    "student.kd.hidden_weight: 0")]


def layer_map_problems(config: ExperimentConfig, local: Path | None) -> list[Problem]:
    """student.kd.hidden_layers needs one teacher layer per student layer."""
    import json

    given = config.student.kd.hidden_layers
    if given is None or not config.student.hidden_distillation:
        return []
    layers = config.student.num_layers
    if layers is None and local is not None:
        try:
            layers = json.loads((local / "config.json").read_text())["num_hidden_layers"]
        except (OSError, ValueError, KeyError):
            return []
    if layers is None or len(given) == layers:
        return []
    return [Problem("student.kd.hidden_layers", f"has {len(given)} entries for a "
                    f"{layers}-layer student", f"give {layers} teacher layers, or null")]


def student_problems(config: ExperimentConfig, local: dict[str, Path | None]
                     ) -> list[Problem]:
    """Every problem of the student's shape and representation teacher (module
    docstring); ``local`` maps encoder paths to their folders here (None: not here)."""
    student_dir = local.get(_student_encoder(config)[0])
    return (shape_problems(config, student_dir) + hidden_teacher_problems(config, local)
            + layer_map_problems(config, student_dir))


def describe_student(config: ExperimentConfig, local: Path) -> str:
    """One line: the student's layers, width, heads and parameter count (encoder; heads
    add hidden x outputs per task), e.g. ``student: layers 2, 4, 6 of 6 (every_nth),
    hidden 256 of 384, 8 heads, intermediate 1024: 8.1M encoder parameters``."""
    import json

    from mtkd.model.shape import layer_indices, shaped_parameters, student_shape

    student = config.student
    original = json.loads((local / "config.json").read_text())
    total = int(original["num_hidden_layers"])
    count, shaped = shaped_parameters(local, student_shape(student))
    keep = student.num_layers or total
    layers = [i + 1 for i in layer_indices(total, keep, student.layer_selection)]
    width = int(shaped.hidden_size)
    return (f"student: layers {', '.join(map(str, layers))} of {total} "
            f"({student.layer_selection}), hidden {width}"
            + (f" of {original['hidden_size']}" if width != original["hidden_size"] else "")
            + f", {shaped.num_attention_heads} heads, intermediate "
            f"{getattr(shaped, 'intermediate_size', '?')}: {count / 1e6:.1f}M encoder "
            "parameters")
