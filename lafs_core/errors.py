"""User-facing errors: the CLI prints them as one line (no traceback) and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class LafsError(Exception):
    """An error caused by the user's input or configuration, reported without a traceback."""


class ConfigError(LafsError):
    """A configuration value, file or override is invalid."""


class DataError(LafsError):
    """An input file is missing, unreadable or malformed; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
