"""Checkpoints are atomic, found by ``--resume auto``, loaded safely, and SIGTERM becomes a flag."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from lafs_core.errors import ConfigError
from lafs_core.train.checkpointing import (
    StopRequest,
    atomic_torch_save,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
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
    assert load_checkpoint(latest)["step"] == 30
    prune_checkpoints(tmp_path, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [20, 30]


def test_failed_save_leaves_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    atomic_torch_save({"ok": torch.ones(1)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"bad": Unpicklable()}, target)
    assert torch.equal(load_checkpoint(target)["ok"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_load_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"fn": os.getcwd}, path)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported global"):
        load_checkpoint(path)


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
