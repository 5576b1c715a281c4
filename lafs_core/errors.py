"""User-facing errors: the CLI prints them as one line (no traceback) and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class LafsError(Exception):
    """An error caused by the user's input or configuration, reported without a traceback."""


class ConfigError(LafsError):
    """A configuration value, file or override is invalid."""


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (surrogate escapes) shown as ``\\xNN`` and line breaks as ``\\n``.

    File names that are not valid UTF-8 reach Python as surrogate escapes, which no terminal, Parquet column or
    UTF-8 file can hold; this form can, and still says which bytes the name has. One line, always.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").replace("\r", "\\r").replace("\n", "\\n")


class DataError(LafsError):
    """An input file is missing, unreadable or malformed; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{printable(self.path)}: {printable(problem)}")

    def __reduce__(self) -> tuple[type[DataError], tuple[str, str]]:
        """Pickle as (path, problem), so the error survives a trip from a worker process."""
        return type(self), (self.path, self.problem)
