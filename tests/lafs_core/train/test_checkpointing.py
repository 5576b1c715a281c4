"""A run folder's checkpoints: found by ``--resume auto`` (the newest intact one), pruned; SIGTERM is a flag."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from lafs_core.checkpoint_io import atomic_torch_save, read_checkpoint
from lafs_core.errors import ConfigError, DataError
from lafs_core.train.checkpointing import (
    StopRequest,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    resolve_resume,
    step_checkpoint_path,
)


def test_latest_ignores_temporary_files_and_prune_keeps_newest(tmp_path: Path) -> None:
    for step in (10, 30, 20):
        atomic_torch_save({"step": step, "w": torch.full((2,), float(step))}, step_checkpoint_path(tmp_path, step))
    (tmp_path / "checkpoints" / ".step_00000040.pt.abc.tmp").write_bytes(b"half written")
    latest = latest_checkpoint(tmp_path)
    assert latest == step_checkpoint_path(tmp_path, 30)
    assert read_checkpoint(latest)["step"] == 30
    prune_checkpoints(tmp_path, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [20, 30]


def test_resolve_resume(tmp_path: Path) -> None:
    assert resolve_resume("auto", tmp_path) is None
    assert resolve_resume("none", tmp_path) is None
    saved = atomic_torch_save({}, step_checkpoint_path(tmp_path, 5))
    assert resolve_resume("auto", tmp_path) == saved
    assert resolve_resume(str(saved), tmp_path) == saved
    with pytest.raises(ConfigError, match="not found"):
        resolve_resume(str(tmp_path / "nope.pt"), tmp_path)


def test_sigterm_sets_the_stop_flag() -> None:
    stop = StopRequest()
    try:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        assert stop.signum == signal.SIGTERM
    finally:
        stop.restore()


def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(tmp_path: Path, caplog) -> None:
    for step in (10, 20, 30, 40):
        atomic_torch_save({"step": step, "w": torch.full((64, 64), float(step))}, step_checkpoint_path(tmp_path, step))
    newest = step_checkpoint_path(tmp_path, 40)
    newest.write_bytes(newest.read_bytes()[:5000])
    torch.save({"fn": os.getcwd}, step_checkpoint_path(tmp_path, 30))
    with caplog.at_level("WARNING", logger="lafs_core.train.checkpointing"):
        chosen = resolve_resume("auto", tmp_path)
    assert chosen == step_checkpoint_path(tmp_path, 20) and read_checkpoint(chosen)["step"] == 20
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith(f"skipping checkpoint {newest}: truncated or not a checkpoint (")
    assert said[1].startswith(f"skipping checkpoint {step_checkpoint_path(tmp_path, 30)}: refused by weights_only")
    assert "posix.getcwd" in said[1] and said[2] == f"resuming from {chosen}, the newest intact checkpoint"
    flipped = bytearray(chosen.read_bytes())
    flipped[len(flipped) // 2] ^= 1
    chosen.write_bytes(bytes(flipped))
    assert resolve_resume("auto", tmp_path) == step_checkpoint_path(tmp_path, 10)
    assert "step_00000020.pt: damaged: record" in caplog.records[-2].getMessage()
    step_checkpoint_path(tmp_path, 10).write_bytes(b"")
    with pytest.raises(DataError, match=r"checkpoints: no intact checkpoint to resume from \(step_00000040\.pt: trunc"):
        resolve_resume("auto", tmp_path)
