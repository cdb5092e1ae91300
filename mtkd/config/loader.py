"""Load, override, type-check and save experiment configs.

Typing is generic over the dataclasses of :mod:`mtkd.config.schema`: a dict from
YAML is walked field by field, every problem (unknown key, wrong type, bad value) is
collected with its key path and the YAML line it came from, and one
:class:`~mtkd.errors.ConfigError` lists them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from mtkd.config.schema import ExperimentConfig
from mtkd.errors import ConfigError, MtkdError, Problem

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it (about 10x faster)."""
_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|CREDENTIAL|PRIVATE|_KEY|^KEY)", re.IGNORECASE)
REDACTED = "***redacted***"


# ---------------------------------------------------------------- YAML with line numbers


def _read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file into plain data plus its node tree (for line numbers)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MtkdError(f"config file not found: {path} (fix: check the path)") from None
    except OSError as err:
        raise MtkdError(f"cannot read config file {path}: {err.strerror}") from None
    if b"\x00" in raw:
        raise MtkdError(f"{path}: is not a text file (it holds NUL bytes; fix: give the "
                        "experiment's YAML file, e.g. jobs/configs/quickstart.yaml)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MtkdError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}; fix: "
                        "save the file as UTF-8)") from None
    try:
        loader = _LOADER(text)
        try:  # parsed once: the node tree (line numbers) and the data built from it
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise MtkdError(f"{where}: invalid YAML: {err.problem} (fix: correct the syntax "
                        "at that line)") from None
    except yaml.YAMLError as err:  # e.g. a ReaderError: control characters, binary bytes
        raise MtkdError(f"{path}: not a YAML text file: {err} (fix: give the experiment's "
                        "YAML file, saved as UTF-8 text)") from None
    except RecursionError:
        raise MtkdError(f"{path}: YAML nested too deeply (fix: simplify the file)") from None
    _keep_label_text(data, node)
    return data, node


_SCALAR_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")


def _keep_label_text(data: Any, node: yaml.Node | None) -> None:
    """Label lists (``tasks.N.labels``, ``tasks.N.no_label``) keep their items' text as
    written: ``labels: [no, yes]`` names the classes "no" and "yes" (YAML would read
    false and true), ``[1.0, 2.0]`` "1.0" and "2.0" (mtkd.tasks.labels compares them by
    value)."""
    if not (isinstance(data, dict) and isinstance(node, yaml.MappingNode)):
        return
    tasks = next((v for k, v in node.value if getattr(k, "value", None) == "tasks"), None)
    if not (isinstance(tasks, yaml.SequenceNode) and isinstance(data.get("tasks"), list)):
        return
    for item, entry in zip(tasks.value, data["tasks"], strict=False):
        if not (isinstance(item, yaml.MappingNode) and isinstance(entry, dict)):
            continue
        for key, value in item.value:
            name = getattr(key, "value", None)
            if name not in ("labels", "no_label") or not isinstance(value, yaml.SequenceNode):
                continue
            values = entry.get(name)
            if not isinstance(values, list) or len(values) != len(value.value):
                continue
            for j, scalar in enumerate(value.value):
                if isinstance(scalar, yaml.ScalarNode) and scalar.tag in _SCALAR_TAGS:
                    values[j] = scalar.value


def _line_of(node: yaml.Node | None, path: str) -> int | None:
    """1-based line of the deepest node along a dotted key path, or None."""
    line = None
    for part in path.split(".") if path else []:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                key = next((k for k, _ in node.value if getattr(k, "value", None) == part), None)
                return key.start_mark.line + 1 if key is not None else line
            line, node = match.start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line


# ---------------------------------------------------------------- overrides


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> list[Problem]:
    """Apply ``key.path=value`` overrides in place; values are parsed as YAML scalars
    (``3`` is an int, ``true`` a bool, ``[1, 2]`` a list, ``null`` None)."""
    problems: list[Problem] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem(item, "is not an override", "write key.path=value"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        target: Any = data
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(parts[: depth + 1])
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            elif isinstance(target, dict):
                target = target.setdefault(part, {})
            else:
                problems.append(Problem(here, "cannot be indexed by the override " + item,
                                        "check the key path"))
                break
        else:
            last = parts[-1]
            if isinstance(target, list) and last.isdigit() and int(last) < len(target):
                target[int(last)] = value
            elif isinstance(target, dict):
                target[last] = value
            else:
                problems.append(Problem(key, "cannot be set by the override " + item,
                                        "check the key path; list items are addressed "
                                        "by index, e.g. tasks.0.max_length=64"))
    return problems


# ---------------------------------------------------------------- typed conversion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp))


def _convert(tp: Any, value: Any, path: str, problems: list[Problem]) -> Any:
    """Convert ``value`` to type ``tp``; on mismatch record a problem and return None."""
    origin = typing.get_origin(tp)
    wrong = Problem(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}",
                    f"set {path} to {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, path, problems)
        for arm in inner:  # e.g. a label: str | int | float | bool
            tried: list[Problem] = []
            converted = _convert(arm, value, path, tried)
            if not tried:
                return converted
        problems.append(Problem(path, f"expected {' or '.join(_type_name(a) for a in inner)}"
                                f", got {type(value).__name__} {value!r}",
                                f"set {path} to {_type_name(tp)}"))
        return None
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else wrong.fix
        problems.append(Problem(path, f"expected {_type_name(tp)}, got {value!r}", fix))
        return None
    if origin is list:
        if not isinstance(value, list):
            problems.append(wrong)
            return None
        (inner,) = typing.get_args(tp)
        items = [_convert(inner, v, f"{path}.{i}", problems) for i, v in enumerate(value)]
        bad = any(_failed(inner, v, c) for v, c in zip(value, items, strict=True))
        return None if bad else items  # a bad item: the whole list keeps its default
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(wrong)
            return None
        inner = typing.get_args(tp)[1]
        converted = {str(k): _convert(inner, v, f"{path}.{k}", problems)
                     for k, v in value.items()}
        bad = any(_failed(inner, v, converted[str(k)]) for k, v in value.items())
        return None if bad else converted
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(Problem(path, f"expected a mapping, got {type(value).__name__} "
                                    f"{value!r}", "write key: value pairs"))
            return None
        return _build(tp, value, path, problems)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and type(value) is tp:
        return value
    problems.append(wrong)
    return None


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The dataclass's resolved field types (cached: resolving string annotations costs
    about 5 ms per class)."""
    return typing.get_type_hints(cls)


def _failed(tp: Any, value: Any, converted: Any) -> bool:
    """Whether converting ``value`` to ``tp`` failed (gave None where None is not allowed)."""
    if converted is not None:
        return False
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and \
        type(None) in typing.get_args(tp)
    return not (value is None and optional)


def _build(cls: type, data: Any, path: str, problems: list[Problem]) -> Any:
    """Build dataclass ``cls`` from a mapping, keeping defaults for absent keys."""
    where = path or "config"
    if not isinstance(data, dict):
        problems.append(Problem(where, f"expected a mapping, got {type(data).__name__}",
                                "write key: value pairs"))
        return cls()
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            fix = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(names)}"
            problems.append(Problem(key_path, "unknown key", fix))
            continue
        converted = _convert(hints[key], value, key_path, problems)
        if not _failed(hints[key], value, converted):
            kwargs[key] = converted
    try:
        return cls(**kwargs)
    except TypeError:  # only possible if a non-optional field got None
        return cls()


def _all_problems(obj: Any, path: str) -> list[Problem]:
    """Value-rule problems of ``obj`` (its own ``problems``) and of nested dataclasses."""
    found = list(obj.problems(path)) if hasattr(obj, "problems") else []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        sub = f"{path}.{f.name}" if path else f.name
        if isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    found += _all_problems(item, f"{sub}.{i}")
        elif dataclasses.is_dataclass(value):
            found += _all_problems(value, sub)
    return found


# ---------------------------------------------------------------- public API


def config_from_dict(data: Any, source: str = "config",
                     node: yaml.Node | None = None) -> ExperimentConfig:
    """Type-check and validate a plain mapping; raise one ConfigError with every problem."""
    problems: list[Problem] = []
    config = _build(ExperimentConfig, data, "", problems)
    # Fields with a wrong type kept their defaults, so the value rules can still run and
    # report everything in one pass.
    problems += _all_problems(config, "")
    if problems:
        if node is not None:
            problems = [_with_line(p, source, node) for p in problems]
        raise ConfigError(problems, source)
    return config


def _with_line(problem: Problem, source: str, node: yaml.Node) -> Problem:
    line = _line_of(node, problem.path)
    if line is None:
        return problem
    return dataclasses.replace(problem, where=f"{source}:{line}")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a YAML experiment config, apply ``key.path=value`` overrides, validate."""
    path = Path(path)
    data, node = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem("config", f"top level is a {type(data).__name__}",
                                   "write the config as a YAML mapping")], str(path))
    problems = apply_overrides(data, list(overrides))
    if problems:
        raise ConfigError(problems, "overrides")
    return config_from_dict(data, str(path), node)


def config_to_dict(config: ExperimentConfig, redact: bool = True) -> dict[str, Any]:
    """Plain-data form of a config; with ``redact`` secret-looking env values are hidden."""
    data = dataclasses.asdict(config)
    if redact:
        data["ray"]["env_vars"] = {
            k: (REDACTED if _SECRET_NAME.search(k) else v)
            for k, v in data["ray"]["env_vars"].items()
        }
    return data


def config_to_yaml(config: ExperimentConfig) -> str:
    """The resolved config as YAML, secrets redacted: what is saved beside the results."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)


def stable_hash(value: Any) -> str:
    """Short content hash of plain data or a dataclass (stage manifests compare these)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
