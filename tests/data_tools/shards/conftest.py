"""Fixtures of the shard tests: a small real face folder (AT&T images) with one corrupt JPEG among them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lafs_core.config import load_config
from lafs_core.config.data import ShardsConfig


def copy_att(datasets_root: Path, dest: Path, people: int, per_person: int = 10) -> Path:
    """Copy ``people`` AT&T identities (``per_person`` images each) into ``dest``."""
    src = datasets_root / "att_faces" / "att_faces"
    for i in range(1, people + 1):
        (dest / f"s{i}").mkdir(parents=True)
        for j in range(1, per_person + 1):
            shutil.copy(src / f"s{i}" / f"{j}.pgm", dest / f"s{i}" / f"{j}.pgm")
    return dest


@pytest.fixture(scope="session")
def face_folder(datasets_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 AT&T people x 10 images plus ``s1/corrupt.jpg`` (a JPEG header followed by garbage)."""
    root = copy_att(datasets_root, tmp_path_factory.mktemp("faces"), people=6)
    (root / "s1" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    return root


def shards_config(**overrides: object) -> ShardsConfig:
    """Tiny-preset shard config (49 grid landmarks) with small shards and batches."""
    items = {"shard_size": 8, "batch_size": 4, "workers": 2, "align": "none", **overrides}
    return load_config(ShardsConfig, preset="tiny", overrides=[f"{k}={v}" for k, v in items.items()])


@pytest.fixture
def make_config() -> Callable[..., ShardsConfig]:
    """``make_config(**overrides)``: the tiny shard config with small shards."""
    return shards_config
