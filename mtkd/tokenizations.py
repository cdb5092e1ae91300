"""Mixed tokenizers: which encoders an experiment uses, and which tokenization each reads.

Members (``teachers.variation.encoder``, a listed member's ``encoder``) and the student
(``student.encoder``) may use encoders with other tokenizers than ``encoder.path``'s. The
prepare stage tokenizes every task once per distinct tokenizer; a **tokenization** is
identified by the content fingerprint of the tokenizer files
(:func:`mtkd.pretrained.tokenizer_fingerprint`); the tokenization settings (each task's
``max_length``, truncation) enter every tokenized task's lineage, as for the default one.

* ``encoder.path``'s tokenization keeps the original layout, ``data/<task>/<split>.parquet``
  and ``data/<task>/meta.json``; in code it is ``None``.
* Any other is ``data/<task>/tok-<first 10 hex of its fingerprint>/`` with the same files.
  An encoder whose tokenizer files equal ``encoder.path``'s reads the default one.

Every tokenization is made from the same canonical rows, so uids, labels, rows and splits
are identical across them; only ``input_ids``/``token_type_ids``/``length`` differ. Soft
targets and predictions join by uid, so any teacher can teach any student.

The prepare manifest records the mapping (``encoders``: {encoder path: fingerprint},
``tokenizer``: the default fingerprint, ``tokenizations``: {fingerprint: {encoders, dir,
tasks: {task: {lineage, content, path}}}}); the later stages, their workers and the report
look an encoder up there (:func:`mtkd.data.prepared.encoder_tokenization`).

This module imports no torch, transformers or datasets (the pipeline computes prepare's
config slice from it on every run).
"""

from __future__ import annotations

from mtkd.config import ExperimentConfig

TOKENIZATION_PREFIX = "tok-"


def tokenization_dir(tokenization: str) -> str:
    """The folder name of a non-default tokenization under ``data/<task>/``."""
    return f"{TOKENIZATION_PREFIX}{tokenization[:10]}"


def member_reads_encoder(config: ExperimentConfig, encoder: str, init_model: str | None
                         ) -> str:
    """The encoder whose tokenization a member reads (and whose tokenizer it ships): its
    own, unless it fine-tunes the shared multi-task model (``init_from_multitask``), which
    was trained with ``encoder.path``."""
    return config.encoder.path if init_model else encoder


def encoders_in_use(config: ExperimentConfig) -> dict[str, list[str]]:
    """Every encoder some model of the experiment reads its inputs with, in a stable
    order: {encoder path: [who uses it]}. ``encoder.path`` always comes first (prepare
    tokenizes with it whatever the others are); members come from the plan (only the
    encoders of members that exist), the student from ``student.encoder``."""
    from mtkd.teachers.plan import plan_members

    users: dict[str, list[str]] = {config.encoder.path: ["encoder.path"]}
    if config.student.distill:
        for member in plan_members(config):
            path = member_reads_encoder(config, member.encoder, member.init_model)
            users.setdefault(path, []).append(f"member {member.name}")
    student = config.student.encoder or config.encoder.path
    users.setdefault(student, []).append("student")
    return users


def prepare_slice_extra(config: ExperimentConfig) -> dict[str, list[str]]:
    """What prepare's manifest lineage adds to its declared values: the other encoders
    (sorted) when there are any, so changing which tokenizations exist makes a prepared
    experiment stale for ``--only``/``--from``; empty (the slice as before mixed
    tokenizers) when every model reads ``encoder.path``."""
    others = sorted(p for p in encoders_in_use(config) if p != config.encoder.path)
    return {"tokenizer_encoders": others} if others else {}
