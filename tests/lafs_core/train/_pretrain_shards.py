"""Test support: a small LFW shard set (real images, grid landmarks) written with the shard writer's functions.

LFW deep-funneled faces are 250x250; the fixed crop keeps the central 112x112 region scaled from [69, 181) as
the shards' lfw-deepfunneled alignment does (close enough for training tests). Identities with several images come
first so that the probe has same-identity pairs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from data_tools.shards.landmark_sources import GridSource, flip_permutation
from data_tools.shards.manifest import landmark_stats, write_info, write_manifest
from data_tools.shards.writer import ShardSample, encode_jpeg, write_shard
from lafs_core.data.shard_format import FORMAT


def lfw_images(lfw_dir: Path, max_images: int, min_per_identity: int = 2) -> list[tuple[str, Path]]:
    """(identity, image path) of up to ``max_images`` LFW faces from identities with >= ``min_per_identity``."""
    out: list[tuple[str, Path]] = []
    for person in sorted(p for p in lfw_dir.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"))
        if len(files) < min_per_identity:
            continue
        out.extend((person.name, f) for f in files[:4])
        if len(out) >= max_images:
            break
    return out[:max_images]


def aligned(path: Path, size: int = 112) -> np.ndarray:
    """RGB uint8 (size, size, 3) central face crop of a 250x250 deep-funneled LFW image."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    crop = bgr[69:181, 69:181] if bgr.shape[:2] == (250, 250) else bgr
    return cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def write_lfw_shards(
    lfw_dir: Path, out_dir: Path, num_landmarks: int, max_images: int = 240, shard_size: int = 80
) -> dict:
    """Write shards + manifest + _info.json of ``max_images`` LFW faces with an n x n grid of landmarks."""
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = GridSource(num_landmarks)
    items = lfw_images(lfw_dir, max_images)
    labels = {name: i for i, name in enumerate(sorted({name for name, _ in items}))}
    rows, shards = [], []
    for start in range(0, len(items), shard_size):
        name = f"shard-{start // shard_size:06d}.tar"
        samples = []
        for offset, (identity, path) in enumerate(items[start : start + shard_size]):
            key = f"{start + offset:08d}"
            lmk = grid.grid.copy()
            samples.append(ShardSample(key, encode_jpeg(aligned(path), 95), lmk, labels[identity], {"id": identity}))
            rows.append(
                {
                    "shard": name,
                    "key": key,
                    "label": labels[identity],
                    "source": "lfw",
                    "file": path.name,
                    "identity": identity,
                    **landmark_stats(lmk),
                }
            )
        sha, count = write_shard(out_dir / name, samples)
        shards.append({"name": name, "num_samples": count, "sha256": sha})
    info = {
        "format": FORMAT,
        "shards": shards,
        "num_shards": len(shards),
        "num_samples": len(rows),
        "image_size": 112,
        "channel_order": "RGB",
        "num_landmarks": num_landmarks,
        "convention": "centered",
        "landmark_mean": grid.grid.tolist(),
        "flip_permutation": flip_permutation(grid.grid, 112),
        "num_labels": len(labels),
    }
    write_manifest(out_dir, rows)
    write_info(out_dir, info)
    return info
