"""How the config loader names types in its messages and in docs/CONFIG.md."""

from __future__ import annotations

from typing import Literal

import pytest

from mtkd.config.loader import _type_name


@pytest.mark.parametrize(("tp", "name"), [
    (int, "an integer"),
    (int | None, "an integer or null"),
    (str | int, "a string or an integer"),
    (list[str | int] | None, "a list of a string or an integer or null"),
    (list[str | None], "a list of a string or null"),
    (Literal["a", "b"] | None, "one of 'a', 'b' or null"),
    (dict[str, float], "a mapping of a number"),
])
def test_type_names_say_null_once_and_only_when_allowed(tp: object, name: str) -> None:
    assert _type_name(tp) == name
