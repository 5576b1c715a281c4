"""Shard loaders: exact-once evaluation, fixed-length training epochs, views; two gloo ranks split correctly."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _loader_rank_job import rank_job

from data_tools.shards.manifest import read_manifest
from data_tools.shards.precompute import precompute
from lafs_core.config import load_config
from lafs_core.config.data import ShardsConfig
from lafs_core.data.loader import batches_per_epoch, eval_loader, read_info, train_loader
from lafs_core.data.views import ViewSpec, apply_affine


@pytest.fixture(scope="module")
def shard_dir(datasets_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 AT&T faces (12 people) in 12 shards of 10, tiny preset (49 grid landmarks)."""
    faces = tmp_path_factory.mktemp("faces")
    for i in range(1, 13):
        shutil.copytree(datasets_root / "att_faces" / "att_faces" / f"s{i}", faces / f"s{i}")
    out = tmp_path_factory.mktemp("loader") / "shards"
    cfg = load_config(ShardsConfig, preset="tiny", overrides=["shard_size=10", "align=none"])
    precompute(faces, out, cfg)
    return out


def stored_samples(shard_dir: Path) -> dict[str, np.ndarray]:
    """Landmarks of every sample, read straight from the tars."""
    out = {}
    for tar_path in sorted(shard_dir.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for info in tar:
                if info.name.endswith(".lmk.npy"):
                    out[info.name.split(".")[0]] = np.load(io.BytesIO(tar.extractfile(info).read()))
    return out


def test_eval_loader_sees_every_sample_once(shard_dir):
    keys, stored = [], stored_samples(shard_dir)
    for batch in eval_loader(shard_dir, batch_size=16, num_workers=2):
        assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (3, 112, 112)
        for key, lmk in zip(batch["keys"], batch["landmarks"], strict=True):
            np.testing.assert_array_equal(lmk.numpy(), stored[key])
        keys += batch["keys"]
    assert sorted(keys) == sorted(read_manifest(shard_dir).column("key").to_pylist())
    assert len(keys) == len(set(keys)) == 120


def test_train_loader_gives_a_fixed_number_of_full_batches_with_views(shard_dir):
    info = read_info(shard_dir)
    assert batches_per_epoch(info, 16) == 7
    assert batches_per_epoch(info, 16, world_size=2) == 3
    perm = torch.tensor(info["flip_permutation"])
    loader = train_loader(shard_dir, 16, num_workers=2, views=ViewSpec(num_views=3), online=True)
    batches = list(loader)
    assert len(batches) == 7
    batch = batches[0]
    assert batch["images"].shape == (16, 3, 112, 112) and batch["labels"].shape == (16,)
    assert batch["view_landmarks"].shape == (16, 3, 49, 2) and batch["crops"].shape == (16, 3, 3, 112, 112)
    back = apply_affine(batch["view_landmarks"].double(), batch["affine"].double())
    flipped = batch["flipped"][..., None, None]
    expected = torch.where(flipped, batch["landmarks"][:, None, perm], batch["landmarks"][:, None])
    torch.testing.assert_close(back.float(), expected, atol=1e-3, rtol=0)
    assert 0 < int(batch["flipped"].sum()) < batch["flipped"].numel()
    assert len(list(loader)) == 7


def test_images_map_runs_per_batch_in_workers_with_their_own_random_streams(shard_dir):
    stored = {}
    for batch in eval_loader(shard_dir, 16, num_workers=0):
        stored.update(zip(batch["keys"], batch["images"], strict=True))
    inverted = list(train_loader(shard_dir, 16, num_workers=2, images_map=lambda images: 255 - images))
    assert len(inverted) == 7
    for batch in inverted:
        torch.testing.assert_close(batch["images"], torch.stack([255 - stored[key] for key in batch["keys"]]))
    draws = train_loader(shard_dir, 16, num_workers=2, images_map=lambda images: torch.randint(2**62, (1,)))
    values = [int(batch["images"]) for batch in draws]  # batches alternate between the two workers
    assert len(set(values)) == len(values) == 7


@pytest.mark.slow
def test_two_gloo_ranks_split_eval_exactly_and_train_equally(shard_dir, tmp_path):
    args = (2, str(shard_dir), str(tmp_path / "store"), str(tmp_path))
    mp.spawn(rank_job, args=args, nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    first, second = (set(r["keys"]) for r in results)
    assert first and second and not first & second
    assert first | second == set(read_manifest(shard_dir).column("key").to_pylist())
    expected = batches_per_epoch(read_info(shard_dir), 8, world_size=2)
    assert [r["train"] for r in results] == [expected, expected]
    assert results[0]["sum"] == 2 * expected


def test_train_loader_is_reproducible_per_seed(shard_dir):
    def keys(seed: int) -> list[str]:
        return [key for batch in train_loader(shard_dir, 16, num_workers=2, seed=seed) for key in batch["keys"]]

    first = keys(3)
    assert keys(3) == first
    assert keys(4) != first
