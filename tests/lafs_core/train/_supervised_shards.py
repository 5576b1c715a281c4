"""Test support for the supervised stages: a small labelled LFW shard set (4 real images per identity)."""

from __future__ import annotations

import shutil
from pathlib import Path

from data_tools.shards.precompute import precompute
from lafs_core.config import load_config
from lafs_core.config.data import ShardsConfig


def lfw_k4_shards(lfw_root: Path, root: Path, people: int = 12) -> tuple[Path, Path]:
    """(face folder, shard folder) of 4 real LFW images for each of ``people`` identities (grid landmarks)."""
    faces = root / "faces"
    chosen = [p for p in sorted(lfw_root.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 4][:people]
    for person in chosen:
        (faces / person.name).mkdir(parents=True)
        for image in sorted(person.glob("*.jpg"))[:4]:
            shutil.copy(image, faces / person.name / image.name)
    shards = root / "shards"
    cfg = load_config(ShardsConfig, preset="tiny", overrides=["shard_size=16", "align=lfw-deepfunneled"])
    precompute(faces, shards, cfg)
    return faces, shards
