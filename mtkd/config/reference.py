"""The config reference (docs/CONFIG.md), generated from the schema's field docstrings.

Field docstrings are the string literals right after each field in
:mod:`mtkd.config.schema`; Python drops them at runtime, so they are read from the
source with :mod:`ast`. ``python -m mtkd.config.reference > docs/CONFIG.md`` refreshes
the reference, and a test keeps it in step with the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from typing import Any

from mtkd.config import schema
from mtkd.config.loader import _type_name


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass ``cls`` to its docstring ('' when it has none)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, following in zip(body, [*body[1:], None], strict=True):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            text = ""
            if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                text = " ".join(following.value.value.split())
            docs[stmt.target.id] = text
    return docs


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(section)"
    return "null" if value is None else repr(value)


def _sections(cls: type, prefix: str) -> list[tuple[str, type]]:
    out = [(prefix, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if dataclasses.is_dataclass(inner):
            suffix = ".N" if typing.get_origin(tp) is list else ""
            out += _sections(inner, f"{prefix}.{f.name}{suffix}" if prefix else f.name + suffix)
    return out


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_reference() -> str:
    """Markdown reference of every config key, its type, default and meaning."""
    lines = ["# Config reference", "",
             "Generated from `mtkd/config/schema.py` by `python -m mtkd.config.reference`;",
             "do not edit by hand. Any key can be overridden on the command line as",
             "`key.path=value` (list items by index: `tasks.0.max_length=64`).", ""]
    seen: set[tuple[str, type]] = set()
    for prefix, cls in _sections(schema.ExperimentConfig, ""):
        if (prefix, cls) in seen:
            continue
        seen.add((prefix, cls))
        title = prefix or "top level"
        lines += [f"## `{title}`", "", " ".join((cls.__doc__ or "").split()), "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            kind = _escape(_type_name(hints[f.name]))
            meaning = _escape(docs.get(f.name, ""))
            lines.append(f"| `{key}` | {kind} | `{_default_text(f)}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_reference(), end="")
