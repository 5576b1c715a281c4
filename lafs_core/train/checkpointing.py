"""The checkpoints of a run folder: periodic step files, ``--resume auto`` and save-on-SIGTERM.

Periodic checkpoints are ``<run>/checkpoints/step_NNNNNNNN.pt``, written atomically
(:func:`lafs_core.checkpoint_io.atomic_torch_save`). ``--resume auto`` skips every newer checkpoint that is damaged
(a record fails its CRC-32, which torch itself never checks), truncated or refused, saying which and why, and resumes
from the newest intact one.
"""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path
from types import FrameType

from lafs_core.checkpoint_io import checkpoint_problem
from lafs_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")


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
