"""How label values are compared: one normal form for config labels and file cells.

A label written in ``tasks.N.labels`` (YAML) and a label cell in a file match when their
*keys* are equal (:func:`label_key`):

* surrounding whitespace is ignored (`` 4`` is ``4``);
* a number written any usual way is its value: ``1``, ``1.0``, ``01``, ``+1``, ``1e0`` are
  all the number 1 (key ``"1"``); ``0.5`` and ``.50`` are ``"0.5"``;
* a truth value is ``true`` or ``false``: ``true``/``True``/``TRUE``/``yes``/``on`` (and
  YAML's or pandas' booleans) are ``"true"``; ``false``/``no``/``off`` are ``"false"`` (the
  words YAML 1.1 itself reads as booleans);
* anything else is its text, case-sensitive (``Pos`` and ``pos`` are different labels).

A label's *name* (what reports and saved models show) is its text as written in the
config (:func:`label_name`): ``labels: [no, yes]`` keeps the names ``no`` and ``yes``.

An *unlabelled* cell (``tasks.N.no_label``) is compared the same way; an empty cell (or
one of only whitespace and zero-width characters) is empty.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

TRUE_WORDS = frozenset({"true", "yes", "on"})
FALSE_WORDS = frozenset({"false", "no", "off"})
DEFAULT_NO_LABEL = ("-1", "-", "")
"""Unlabelled cells of a classification or ranking task (SNLI/MNLI's "no gold label"
``-``, GLUE test files' ``-1``, and empty)."""
DEFAULT_NO_LABEL_REGRESSION = ("-", "")
"""Unlabelled cells of a regression task (-1 is a score there)."""


def is_blank(text: str) -> bool:
    """True when ``text`` holds only whitespace and invisible format characters (Unicode
    category Cf: zero-width space/joiners, byte-order marks, direction marks)."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def label_name(value: Any) -> str:
    """The text of a label as written: booleans are ``true``/``false``, integral floats
    from YAML (``1.0``) stay ``1.0``, strings are kept verbatim."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def label_key(value: Any) -> str:
    """The normal form two labels are compared by (see the module docstring)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number_key(float(value)) if isinstance(value, float) else str(value)
    text = str(value).strip()
    if is_blank(text):
        return ""
    lower = text.lower()
    if lower in TRUE_WORDS:
        return "true"
    if lower in FALSE_WORDS:
        return "false"
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number) or "_" in text:  # "nan", "inf", "1_000" stay text
        return text
    if number.is_integer() and abs(number) < 2**53:
        try:  # exact for long integer strings
            return str(int(text))
        except ValueError:
            pass
    return _number_key(number)


def _number_key(number: float) -> str:
    if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(number)
