"""Reading and writing checkpoint files: the one ``weights_only`` load and the one atomic save.

A checkpoint is one ``torch.save`` dict of tensors and plain Python values, so it loads with ``weights_only=True``.
It is written to a temporary file, fsynced and renamed, so a crash never leaves a partial file where a reader would
find it. A file damaged later (a full disk, a copy cut short) or not written by us gives one :class:`DataError` line
saying why, never a traceback.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from lafs_core.errors import DataError

_REFUSED_GLOBAL = re.compile(r"(?i)unsupported global:?(?: GLOBAL)? ([\w.]+)")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_problem(exc: BaseException) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` failed on a file."""
    text = str(exc).strip()
    if match := _REFUSED_GLOBAL.search(text):
        return (
            f"refused by weights_only loading: its pickle names {match.group(1)}, which no checkpoint holds "
            "(not a checkpoint of this project, or a hostile file)"
        )
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, EOFError) or "central directory" in first or "_use_new_zipfile_serialization" in first:
        return f"truncated or not a checkpoint ({first})"
    if "weights" in first.lower() and "only" in first.lower():
        return f"refused by weights_only loading ({first})"
    return f"unreadable checkpoint ({type(exc).__name__}: {first})"


def _load(path: Path, map_location: str | torch.device, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a dict; DataError (one line) for anything else."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise DataError(path, "checkpoint not found") from None
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # torch.load raises many types for a bad file: each becomes the same one-line error
        raise DataError(path, load_problem(exc)) from None
    if not isinstance(state, dict):
        raise DataError(path, f"not a checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``); DataError for a missing, damaged or foreign file."""
    return _load(Path(path), map_location)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why a checkpoint cannot be loaded, or ``None``: every record of its zip archive must match its CRC-32 (a
    truncated or bit-flipped file fails; ~1 s per GB), then its pickle must load with ``weights_only``
    (memory-mapped, so the tensors are not read twice)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"truncated or not a checkpoint (not a complete zip archive: {exc})"
    if damaged is not None:
        return f"damaged: record {damaged} fails its CRC-32 check"
    try:
        _load(Path(path), "cpu", mmap=True)
    except DataError as exc:
        return exc.problem
    return None
