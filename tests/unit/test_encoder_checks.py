"""Checks of the encoders a config names: tokenizers are grouped (mixed tokenizers are
allowed, each gets its own tokenization), too many layers are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import SPECIAL, WORDS, make_tiny_bert
from transformers import BertTokenizer

from mtkd.config import config_from_dict
from mtkd.encoder_checks import (
    check_encoders,
    encoder_keys,
    tokenizer_difference,
    tokenizer_groups,
)
from mtkd.errors import ConfigError
from mtkd.tokenizations import encoders_in_use, prepare_slice_extra

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    ref = make_tiny_bert(root / "ref")
    out = {"ref": ref, "same_tokenizer_other_model": make_tiny_bert(root / "other", seed=3,
                                                                     layers=1)}
    # only tokenizer_config.json differs (max length): the same ids, allowed
    shutil.copytree(ref, root / "longer")
    cfg = json.loads((root / "longer" / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 4096
    (root / "longer" / "tokenizer_config.json").write_text(json.dumps(cfg))
    out["same_ids_other_config"] = root / "longer"
    # another vocabulary: the same words in another order
    shuffled = make_tiny_bert(root / "shuffled")
    (shuffled / "vocab.txt").write_text("\n".join(SPECIAL + WORDS[::-1]) + "\n")
    BertTokenizer(str(shuffled / "vocab.txt")).save_pretrained(shuffled)
    out["other_vocabulary"] = shuffled
    # the same vocabulary, cased instead of uncased
    cased = make_tiny_bert(root / "cased")
    BertTokenizer(str(cased / "vocab.txt"), do_lower_case=False).save_pretrained(cased)
    out["cased"] = cased
    return out


@pytest.mark.parametrize(("other", "differs"), [
    ("ref", False),
    ("same_tokenizer_other_model", False),
    ("same_ids_other_config", False),
    ("other_vocabulary", True),
    ("cased", True),
])
def test_tokenizer_difference(encoders: dict[str, Path], other: str, differs: bool) -> None:
    found = tokenizer_difference(encoders["ref"], encoders[other])
    assert (found is not None) == differs, found
    if other == "cased":
        assert "casing or normalisation" in found


def config_with(encoders: dict[str, Path], tmp_path: Path, **keys: object) -> dict:
    data = {"name": "exp", "storage_path": str(tmp_path / "runs"),
            "encoder": {"path": str(encoders["ref"])},
            "tasks": [{"name": "rotten_tomatoes", "max_length": 32}],
            "student": {"num_layers": 1}}  # encoders here have 1 or 2 layers
    for key, value in keys.items():
        section, _, leaf = key.partition("__")
        data.setdefault(section, {})
        if leaf == "variation":
            data[section]["variation"] = value
        else:
            data[section][leaf] = value
    return data


def test_every_encoder_key_is_listed_and_mixed_tokenizers_are_grouped(
        encoders: dict[str, Path], tmp_path: Path) -> None:
    """Encoders with other tokenizers are accepted (each gets its own tokenization) and
    grouped by tokenizer, encoder.path's first, for `mtkd validate` to show."""
    data = config_with(
        encoders, tmp_path, student__encoder=str(encoders["cased"]),
        teachers__variation={"strategy": "grid",
                             "encoder": [str(encoders["ref"]),
                                         str(encoders["other_vocabulary"]),
                                         str(encoders["same_tokenizer_other_model"])]})
    config = config_from_dict(data)
    assert encoder_keys(config) == {
        "teachers.variation.encoder.1": str(encoders["other_vocabulary"]),
        "teachers.variation.encoder.2": str(encoders["same_tokenizer_other_model"]),
        "student.encoder": str(encoders["cased"])}
    assert check_encoders(config, "exp.yaml") == []
    groups, unchecked = tokenizer_groups(config)
    assert unchecked == []
    assert [keys for _, _, keys in groups] == [
        ["encoder.path", "teachers.variation.encoder.2"], ["teachers.variation.encoder.1"],
        ["student.encoder"]]
    assert "vocabularies differ" in groups[1][1] and "casing" in groups[2][1]
    listed = config_from_dict({**data, "student": {"num_layers": 1}, "teachers": {
        "size": 1, "variation": {"strategy": "list", "members": [
            {"encoder": str(encoders["other_vocabulary"])}]}}})
    assert check_encoders(listed, "exp.yaml") == []
    assert [k for _, _, k in tokenizer_groups(listed)[0]] == [
        ["encoder.path"], ["teachers.variation.members.0.encoder"]]


def test_encoders_in_use_follow_the_plan(encoders: dict[str, Path], tmp_path: Path) -> None:
    """Prepare tokenizes for the encoders models really use: planned members (not grid
    entries no member draws), the student; per_task members that start from the shared
    multi-task model read encoder.path's. prepare's manifest lineage names the others."""
    ref, other = str(encoders["ref"]), str(encoders["other_vocabulary"])
    grid = config_from_dict(config_with(encoders, tmp_path, teachers__size=1,
                                        teachers__variation={"strategy": "grid",
                                                             "encoder": [ref, other]}))
    assert list(encoders_in_use(grid)) == [ref] and prepare_slice_extra(grid) == {}
    two = config_from_dict(config_with(encoders, tmp_path, teachers__size=2,
                                       student__encoder=str(encoders["cased"]),
                                       teachers__variation={"strategy": "grid",
                                                            "encoder": [ref, other]}))
    assert encoders_in_use(two) == {ref: ["encoder.path", "member m000"],
                                    other: ["member m001"],
                                    str(encoders["cased"]): ["student"]}
    assert prepare_slice_extra(two) == {"tokenizer_encoders": sorted(
        [other, str(encoders["cased"])])}
    data = config_with(encoders, tmp_path, teachers__size=2, teachers__shape="per_task",
                       teachers__init_from_multitask=True,
                       teachers__variation={"strategy": "grid", "encoder": [ref, other]})
    assert list(encoders_in_use(config_from_dict(data))) == [ref]


def test_validate_shows_the_distinct_tokenizers(encoders: dict[str, Path],
                                                tmp_path: Path) -> None:
    data = config_with(encoders, tmp_path, student__encoder=str(encoders["other_vocabulary"]))
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "mtkd", "validate", str(path)], cwd=REPO,
                            text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tokenizers: 2 distinct" in result.stdout, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert lines[0].endswith(": encoder.path") and "WordPiece" in lines[0]
    assert lines[1].endswith(": student.encoder") and "vocabularies differ" in lines[1]
    assert not (tmp_path / "runs" / "exp" / "config.yaml").exists()


@pytest.mark.parametrize(("keys", "refused"), [
    ({"student": {"num_layers": 2}}, set()),              # the tiny encoder has 2 layers
    ({"student": {"num_layers": 99}}, {"student.num_layers"}),
    ({"encoder__num_layers": 3}, {"encoder.num_layers"}),
])
def test_more_layers_than_the_encoder_has_is_refused(encoders: dict[str, Path],
                                                     tmp_path: Path, keys: dict,
                                                     refused: set) -> None:
    data = config_with(encoders, tmp_path)
    for key, value in keys.items():
        if key == "encoder__num_layers":
            data["encoder"]["num_layers"] = value
        else:
            data[key] = value
    config = config_from_dict(data)
    if not refused:
        assert check_encoders(config, "exp.yaml") == []
        return
    with pytest.raises(ConfigError) as error:
        check_encoders(config, "exp.yaml", local_only=True)
    assert {p.path for p in error.value.problems} == refused
    assert "has 2 layers" in str(error.value)
