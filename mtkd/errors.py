"""User-facing error types.

Every mistake a user can make (bad config, bad data, unreachable storage, missing
assets) raises a subclass of :class:`MtkdError`. The CLI prints its message and
exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class MtkdError(Exception):
    """A user mistake or environment problem with a message that says how to fix it."""


@dataclass(frozen=True)
class Problem:
    """One validation finding: where (``path``), what is wrong, and how to fix it."""

    path: str
    message: str
    fix: str = ""
    where: str = ""
    """File and line the value came from, e.g. ``exp.yaml:12`` (empty if unknown)."""

    def __str__(self) -> str:
        place = f" ({self.where})" if self.where else ""
        text = f"{self.path}{place}: {self.message}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class ConfigError(MtkdError):
    """The experiment config has one or more problems; all are listed at once."""

    def __init__(self, problems: list[Problem], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = [f"{source}: {len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class StorageError(MtkdError):
    """Storage is unreachable, misconfigured, or a path is missing."""


class DataError(MtkdError):
    """Input data is malformed; the message names file, row and column."""


class AssetError(MtkdError):
    """A pinned model/data asset cannot be fetched or fails verification."""
