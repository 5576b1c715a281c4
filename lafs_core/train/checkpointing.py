"""Atomic, world-size-independent training checkpoints with ``--resume auto`` and save-on-SIGTERM.

A checkpoint is one ``torch.save`` dict of tensors and plain Python values (it loads with
``weights_only=True``). It is written to a temporary file and renamed, so a crash never leaves a partial
checkpoint where resume would find it.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from lafs_core.errors import ConfigError

_STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


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
    """Interpret ``--resume``: ``auto`` (latest in the run folder, or none), ``none``/empty, or a file path."""
    if resume in (None, "", "none", "no", "false"):
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"{path}: resume checkpoint not found")
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
