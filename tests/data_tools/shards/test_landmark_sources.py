"""Landmark sources: the grid, a CNN checkpoint through the checkpoint loader, MediaPipe's absence; flip matching."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import torch

from data_tools.shards.landmark_sources import (
    CnnSource,
    GridSource,
    flip_permutation,
    greedy_assignment,
    mirror,
    open_landmark_source,
)
from data_tools.shards.precompute import precompute
from lafs_core.config import StageConfig, load_config
from lafs_core.data.normalize import normalize
from lafs_core.data.shard_format import read_info
from lafs_core.errors import ConfigError
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import save_model_checkpoint


@pytest.mark.parametrize(("num_landmarks", "side"), [(196, 14), (49, 7)])
def test_grid_flip_permutation_is_the_exact_column_mirror(num_landmarks, side):
    grid = GridSource(num_landmarks).grid
    perm = flip_permutation(grid, 112)
    rows, cols = np.divmod(np.arange(num_landmarks), side)
    assert perm == (rows * side + side - 1 - cols).tolist()
    np.testing.assert_array_equal(mirror(grid, 112)[perm], grid)


def test_flip_matching_recovers_a_hidden_permutation():
    rng = np.random.default_rng(0)
    left = np.column_stack([rng.uniform(5, 50, 30), rng.uniform(5, 106, 30)])
    points = np.concatenate([left, mirror(left, 112)])
    shuffle = rng.permutation(60)
    points = points[shuffle] + rng.normal(0, 0.3, (60, 2))
    truth = np.argsort(shuffle)[(shuffle + 30) % 60]
    assert flip_permutation(points, 112) == truth.tolist()
    cost = np.linalg.norm(points[:, None] - mirror(points, 112)[None], axis=-1)
    assert greedy_assignment(cost) == truth.tolist()


def test_cnn_source_runs_the_checkpoint_landmark_cnn(tmp_path):
    torch.manual_seed(0)
    model_cfg = load_config(StageConfig, preset="tiny").model
    model = build_face_model(model_cfg).eval()
    path = save_model_checkpoint(tmp_path / "landmarks.pt", model, preset="tiny", stage="test")
    source = open_landmark_source(f"cnn:{path}", num_landmarks=7)
    assert isinstance(source, CnnSource)
    assert source.num_landmarks == 49
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    images = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    points, ok = source.predict(images)
    with torch.no_grad():
        expected = model.landmark_cnn(normalize(torch.from_numpy(images).permute(0, 3, 1, 2)))
    assert ok.all()
    np.testing.assert_allclose(points, expected.numpy(), atol=1e-4)
    low = model_cfg.landmark_margin()
    assert points.min() == pytest.approx(low, abs=1e-4) and points.max() == pytest.approx(111 - low, abs=1e-3)


def test_precompute_with_a_cnn_checkpoint_records_the_model(face_folder, make_config, tmp_path):
    torch.manual_seed(1)
    model = build_face_model(load_config(StageConfig, preset="tiny").model).eval()
    path = save_model_checkpoint(tmp_path / "cnn.pt", model, preset="tiny", stage="test")
    out = tmp_path / "shards"
    precompute(face_folder, out, make_config(landmarks=f"cnn:{path}", shard_size=32))
    info = read_info(out)
    assert info["landmark_model"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["num_landmarks"] == 49
    assert sorted(info["flip_permutation"]) == list(range(49))


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None, reason="mediapipe is installed")
def test_mediapipe_source_without_the_package_is_a_clear_error():
    with pytest.raises(ConfigError, match="mediapipe"):
        open_landmark_source("mediapipe", 196)


def test_unknown_landmark_source_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown landmark source"):
        open_landmark_source("dlib", 196)
