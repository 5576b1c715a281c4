"""Atomic, world-size-independent training checkpoints with ``--resume auto`` and save-on-SIGTERM.

A checkpoint is one ``torch.save`` dict of tensors and plain Python values (it loads with
``weights_only=True``). It is written to a temporary file and renamed, so a crash never leaves a partial
checkpoint where resume would find it. Files damaged later (a full disk, a copy cut short) or not written by us are
still met: ``--resume auto`` skips every newer checkpoint that is damaged (a record fails its CRC-32, which torch
itself never checks), truncated or refused, saying which and why, and resumes from the newest intact one; loading a
file that is truncated, not a checkpoint or a pickle naming code gives one :class:`DataError` line.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
import zipfile
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from lafs_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); DataError (one line) for a missing, damaged or foreign file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(path, "checkpoint not found") from None
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # torch.load raises many types for a bad file: each becomes the same one-line error
        raise DataError(path, load_problem(exc)) from None
    if not isinstance(state, dict):
        raise DataError(path, f"not a checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


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
        state = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # as in load_checkpoint
        return load_problem(exc)
    return None if isinstance(state, dict) else f"not a checkpoint (holds a {type(state).__name__}, not a dict)"


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run keeps its periodic checkpoints."""
    return Path(run_dir) / "checkpoints"


def step_checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """The file name of the checkpoint taken after ``step`` optimiser steps."""
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete periodic checkpoints of a run as (step, path), oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, if any."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """Interpret ``--resume``: ``auto`` (the newest checkpoint of the run folder that opens, or none), ``none``/empty,
    or a file path.

    ``auto`` warns about each newer checkpoint it skips and why, and raises DataError when checkpoints exist but none
    opens (rather than silently starting over). A given path that does not open raises DataError.
    """
    if resume in (None, "", "none", "no", "false"):
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        skipped = []
        for _, path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                if skipped:
                    log.warning("resuming from %s, the newest intact checkpoint", path)
                return path
            log.warning("skipping checkpoint %s: %s", path, problem)
            skipped.append(f"{path.name}: {problem}")
        if skipped:
            raise DataError(checkpoint_dir(run_dir), f"no intact checkpoint to resume from ({'; '.join(skipped)})")
        return None
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"{path}: resume checkpoint not found")
    if problem := checkpoint_problem(path):
        raise DataError(path, problem)
    return path


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest periodic checkpoints."""
    for _, path in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


class StopRequest:
    """Turns SIGTERM (and SIGINT) into a flag the training loop polls, so it can checkpoint and exit cleanly."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signum = signum

    def restore(self) -> None:
        """Put back the signal handlers that were active before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
