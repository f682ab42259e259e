"""Errors shared by the settings and the command line (kept free of heavy imports)."""

from __future__ import annotations


class ConfigError(ValueError):
    """Settings that do not validate: one line per bad variable, each saying what to do."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class DatabaseError(RuntimeError):
    """The database cannot be used as it is; ``str()`` says what happened and what to do."""
