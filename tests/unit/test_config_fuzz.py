"""Config fuzzer: every leaf and list item of jobs/configs/quickstart.yaml set to a value of
each wrong type, an unknown key in every mapping, and whole-file breakages. Each must end
in exit 2 through the CLI entry function (in-process), naming the key path, without a
traceback and without writing anything under the experiment.

Which values are wrong comes from the schema's type hints, read here by a small oracle
independent of mtkd.config.loader.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from mtkd.cli import main
from mtkd.config.schema import ExperimentConfig

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = yaml.safe_load((REPO / "jobs" / "configs" / "quickstart.yaml").read_text())
SAMPLES: dict[str, Any] = {"string": "x", "integer": 7, "float": 2.5, "bool": True,
                           "list": [1], "mapping": {"a": 1}, "null": None}


def _hint(path: list[str]) -> Any:
    """The declared type at a key path (list items by index)."""
    tp: Any = ExperimentConfig
    for part in path:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
            origin = typing.get_origin(tp)
        if origin is list:
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            tp = typing.get_type_hints(tp)[part]
    return tp


def _accepts(tp: Any, value: Any) -> bool:
    """Whether ``value`` has the declared type ``tp`` (the oracle)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is Literal:
        return any(value == c and type(value) is type(c) for c in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_accepts(typing.get_args(tp)[0], v)
                                               for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_accepts(typing.get_args(tp)[1], v)
                                               for v in value.values())
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if tp is float:
        return type(value) in (int, float)
    return type(value) is tp


def _places(data: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    """Every leaf and every list item (and the mappings themselves) as (path, value)."""
    found = [(path, data)] if path else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += _places(value, [*path, str(key)])
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _places(value, [*path, str(i)])
    return found


def _set(data: Any, path: list[str], value: Any) -> None:
    target = data
    for part in path[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(path[-1])] = value
    else:
        target[path[-1]] = value


def _cases() -> list[tuple[str, list[str], Any]]:
    cases = []
    for path, _ in _places(QUICKSTART, []):
        for kind, sample in SAMPLES.items():
            if not _accepts(_hint(path), sample):
                cases.append((f"{'.'.join(path)}={kind}", path, sample))
    return cases


CASES = _cases()


def _run(tmp_path: Path, data: Any, capsys: pytest.CaptureFixture[str],
         command: str = "validate", raw: bytes | None = None) -> tuple[int, str]:
    config = tmp_path / "exp.yaml"
    if raw is None:
        if isinstance(data, dict):
            data.setdefault("storage_path", str(tmp_path / "runs"))
        raw = yaml.safe_dump(data).encode()
    config.write_bytes(raw)
    args = [command, str(config)] + (["--to", "prepare"] if command == "run" else [])
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _base(tmp_path: Path) -> dict[str, Any]:
    data = copy.deepcopy(QUICKSTART)
    data["storage_path"] = str(tmp_path / "runs")
    return data


def test_the_fuzzer_covers_every_leaf_and_the_base_is_valid(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert len(CASES) > 300  # ~70 places x ~5 wrong types
    assert {p[0] for _, p, _ in CASES} >= {"name", "tasks", "teachers", "student", "report"}
    assert _run(tmp_path, _base(tmp_path), capsys)[0] == 0


@pytest.mark.parametrize(("label", "path", "value"), CASES, ids=[c[0] for c in CASES])
def test_wrong_type_is_exit_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             label: str, path: list[str], value: Any) -> None:
    data = _base(tmp_path)
    _set(data, path, copy.deepcopy(value))
    code, output = _run(tmp_path, data, capsys)
    key = ".".join(path)
    assert code == 2, output
    assert "Traceback" not in output and output.startswith("mtkd: error:")
    # the key path itself, or (when its whole section is replaced) the section's path
    assert f"  - {key}" in output or (key == "storage_path" and "storage_path" in output), \
        output
    assert not (tmp_path / "runs").exists()


MAPPINGS = [path for path, value in _places(QUICKSTART, []) if isinstance(value, dict)]
MAPPINGS.append([])


@pytest.mark.parametrize("path", MAPPINGS, ids=[".".join(p) or "(top)" for p in MAPPINGS])
def test_unknown_key_in_every_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      path: list[str]) -> None:
    data = _base(tmp_path)
    target: Any = data
    for part in path:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target["zz_unknown"] = 1
    code, output = _run(tmp_path, data, capsys, command="run")
    key = ".".join([*path, "zz_unknown"])
    assert code == 2 and f"  - {key}" in output and "unknown key" in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("name", "raw", "expected"), [
    ("empty", b"", "tasks"),
    ("only a comment", b"# nothing here\n", "tasks"),
    ("binary with NUL bytes", bytes(range(256)) * 4, "not a text file"),
    ("binary, control characters", b"\x07\x01\x02name: x\n", "not a YAML text file"),
    ("not UTF-8", b"name: caf\xe9\n", "not UTF-8"),
    ("a list, not a mapping", b"- name: x\n- tasks: []\n", "top level is a list"),
    ("a scalar", b"just words\n", "top level is a str"),
    ("syntax error", b"name: x\ntasks: [\n  - {name: trec\n", "invalid YAML"),
    ("tab indentation", b"name: x\nteachers:\n\tsize: 3\n", "invalid YAML"),
    ("two documents", b"name: a\n---\nname: b\n", "invalid YAML"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_whole_file_breakage_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       name: str, raw: bytes, expected: str,
                                       command: str) -> None:
    code, output = _run(tmp_path, None, capsys, command=command, raw=raw)
    assert code == 2, output
    assert expected in output and "exp.yaml" in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "runs").exists() and not Path("runs/x").exists()
