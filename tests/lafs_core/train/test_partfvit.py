"""`lafs partfvit`: a short run on real LFW shards moves the landmarks and exports a landmark CNN the shards accept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _supervised_shards import lfw_k4_shards

from data_tools.shards.landmark_sources import open_landmark_source
from lafs_core.config import load_config
from lafs_core.config.finetune import PartFViTConfig
from lafs_core.data.loader import eval_loader
from lafs_core.models.checkpoint import load_checkpoint
from lafs_core.train.partfvit import predict, run_partfvit


@pytest.fixture(scope="module")
def k4(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return lfw_k4_shards(lfw_root, tmp_path_factory.mktemp("k4"))


@pytest.mark.slow
def test_partfvit_moves_landmarks_and_exports_a_landmark_model(k4, mlflow_store, tmp_path) -> None:
    _, shards = k4
    cfg = load_config(
        PartFViTConfig,
        preset="tiny",
        overrides=[
            f"data_dir={shards}",
            f"output_dir={tmp_path / 'run'}",
            "val_pairs=[]",
            "global_batch_size=8",
            "micro_batch_size=4",
            "max_steps=3",
            "lr=0.01",
            "warmup_epochs=0",
            "num_workers=0",
            "overlay_images=4",
            "log_model=false",
        ],
    )
    summary = run_partfvit(cfg)

    exported = summary["landmark_cnn"]
    path = Path(exported["path"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == exported["sha256"]
    assert json.loads((tmp_path / "run" / "landmark_cnn.json").read_text())["model_id"] == exported["model_id"]
    assert exported["mean_displacement_px"] > 0.02  # from the layout it starts at (3 steps move it a little)
    assert (tmp_path / "run" / "landmarks_before_after.png").stat().st_size > 10_000

    trained = load_checkpoint(tmp_path / "run" / "last.pt").model.landmark_cnn
    source = open_landmark_source(f"cnn:{path}", cfg.model.num_landmarks)
    assert source.sha256 == exported["sha256"]
    batch = next(iter(eval_loader(shards, 4, rank=0, world_size=1)))
    predicted, ok = source.predict(batch["images"].permute(0, 2, 3, 1).numpy())
    assert ok.all()
    expected = predict(trained, batch["images"]).numpy()
    np.testing.assert_allclose(predicted, expected, atol=1e-4)
    assert predicted.shape == (4, cfg.model.num_landmarks, 2)
    assert np.isclose(predicted.max(axis=(1, 2)), 111 - cfg.model.landmark_margin()).all()
    run = mlflow_store.get_run(summary["run_id"])
    assert run.data.metrics["landmarks/mean_displacement_px"] == pytest.approx(exported["mean_displacement_px"])
    assert torch.load(path, weights_only=True)["meta"]["model_id"] == exported["model_id"]
