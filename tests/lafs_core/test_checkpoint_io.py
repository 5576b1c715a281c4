"""Checkpoint files: saved atomically, loaded only with ``weights_only``, and a bad file is one line naming it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lafs_core.checkpoint_io import atomic_torch_save, read_checkpoint
from lafs_core.errors import DataError
from lafs_core.train.checkpointing import resolve_resume


def test_failed_save_leaves_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    atomic_torch_save({"ok": torch.ones(1)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"bad": Unpicklable()}, target)
    assert torch.equal(read_checkpoint(target)["ok"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_load_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"fn": os.getcwd}, path)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported global"):
        read_checkpoint(path)


def test_a_bad_checkpoint_file_is_one_line_naming_it(tmp_path: Path) -> None:
    evil, cut, other = tmp_path / "evil.pt", tmp_path / "cut.pt", tmp_path / "list.pt"
    torch.save({"fn": os.system}, evil)
    atomic_torch_save({"w": torch.ones(256, 256)}, cut)
    cut.write_bytes(cut.read_bytes()[:-100])
    torch.save([1, 2], other)
    cases = [
        (evil, "refused by weights_only loading: its pickle names posix.system"),
        (cut, "truncated or not a checkpoint"),
        (other, "not a checkpoint (holds a list, not a dict)"),
    ]
    for path, problem in cases:
        for call in (resolve_resume, lambda p, _: read_checkpoint(p)):
            with pytest.raises(DataError) as caught:
                call(str(path), tmp_path)
            assert str(caught.value).startswith(f"{path}: {problem}") and "\n" not in str(caught.value)
