"""``lafs eval verify`` end to end on the real LFW View-1 test pairs with a tiny random checkpoint, logged to MLflow."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from lafs_cli.main import app
from lafs_core.config import load_config
from lafs_core.config.loader import StageConfig
from lafs_core.env import shared_datasets
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import save_model_checkpoint


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A randomly initialised tiny model on the regular grid (no landmark CNN: the fastest real FaceModel)."""
    torch.manual_seed(0)
    model = build_face_model(load_config(StageConfig, preset="tiny").model, with_landmark_cnn=False)
    return save_model_checkpoint(tmp_path / "tiny.pt", model, "tiny", "test")


@pytest.mark.slow
def test_verify_lfw_view1_writes_report_png_and_mlflow_metrics(tiny_checkpoint, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    lfw = shared_datasets() / "lfw_deepfunneled"
    out = tmp_path / "reports" / "v1.json"
    args = ["eval", "verify", "--model", str(tiny_checkpoint), "--pairs", str(lfw / "pairsDevTest.txt"),
            "--images", str(lfw / "lfw-deepfunneled"), "--json", str(out), "--batch-size", "256", "--mlflow",
            "--experiment", "eval-cli", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["pairs"], report["folds"], report["images_skipped"]) == (1000, 10, 0)
    assert 0.4 <= report["accuracy_mean"] <= 0.8
    assert set(report["tar_at_far"]) == {"1e-3", "1e-2", "1e-1"} and 0.0 <= report["auc"] <= 1.0
    assert (out.parent / "v1.png").read_bytes()[:4] == b"\x89PNG"
    assert f"{report['accuracy_mean'] * 100:.2f} +- {report['accuracy_std'] * 100:.2f} %" in result.output
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("eval-cli").experiment_id])
    assert run.data.metrics["pairsdevtest/acc"] == pytest.approx(report["accuracy_mean"])
    assert "pairsdevtest/tar_at_far_1e-2" in run.data.metrics
    mlflow.set_tracking_uri(None)


def test_verify_reports_bad_input_as_one_line(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from lafs_cli.main import main

    bad = tmp_path / "pairs.txt"
    bad.write_text("500\nAaron 1\n")
    monkeypatch.setattr("sys.argv", ["lafs", "eval", "verify", "--model", str(tiny_checkpoint), "--pairs", str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "pairs.txt" in err and "header announces" in err and len(err.splitlines()) == 1
