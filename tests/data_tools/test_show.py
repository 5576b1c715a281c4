"""`lafs data show`: a PNG grid of the first samples; a damaged shard is refused in one line, not shown."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_tools.shards.precompute import precompute
from data_tools.show import landmark_grid, write_png
from lafs_core.config import load_config
from lafs_core.config.data import ShardsConfig
from lafs_core.errors import DataError


def test_grid_of_an_intact_set_and_refusal_of_a_damaged_shard(shared_datasets: Path, tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    shutil.copytree(shared_datasets / "att_faces" / "att_faces" / "s1", faces / "s1")
    cfg = load_config(ShardsConfig, preset="tiny", overrides=["shard_size=4", "align=none", "workers=1"])
    precompute(faces, tmp_path / "shards", cfg)
    grid = landmark_grid(tmp_path / "shards", 6)
    assert grid.shape == (2 * 224, 3 * 224, 3)  # 6 tiles of 112 px drawn at 2x, 3 columns
    assert write_png(grid, tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    shard = tmp_path / "shards" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"shard-000000\.tar: sha256 differs from the manifest \(damaged\)"):
        landmark_grid(tmp_path / "shards", 6)
