"""Reports (JSON + ROC PNG, metric names) and the MLflow registry/compare commands on a real sqlite store."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from lafs_cli.main import app
from lafs_core.errors import LafsError
from lafs_core.eval.registry import compare_runs, register_best
from lafs_core.eval.report import log_to_mlflow, mlflow_metrics, verification_report, write_report
from lafs_core.eval.verification import evaluate_distances, stratified_folds


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes ~10 s); tests use distinct names in it."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        yield MlflowClient(uri)
        mlflow.set_tracking_uri(None)


def _result():
    rng = np.random.default_rng(0)
    issame = np.repeat([True, False], 100)
    distances = np.where(issame, rng.normal(0.8, 0.3, 200), rng.normal(1.6, 0.3, 200))
    return evaluate_distances(distances, issame, stratified_folds(issame))


def test_report_files_and_metric_names(tmp_path, tracking):
    result = _result()
    report = verification_report(result, "lfw-v1", model="m.pt")
    json_path, png_path = write_report(report, tmp_path / "out" / "lfw.json", result.fpr, result.tpr)
    saved = json.loads(json_path.read_text())
    assert saved["pairs"] == 200 and saved["folds"] == 10 and saved["roc_png"] == "lfw.png"
    assert saved["accuracy_mean"] == pytest.approx(result.fold_accuracies.mean())
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary files left behind
    metrics = mlflow_metrics(saved)
    assert "lfw-v1/acc" in metrics and "lfw-v1/tar_at_far_1e-2" in metrics
    assert not any("@" in name for name in metrics)
    mlflow.set_experiment("eval-test")
    with mlflow.start_run() as run:
        log_to_mlflow(metrics, (json_path, png_path), "lfw-v1")
    logged = tracking.get_run(run.info.run_id)
    assert logged.data.metrics["lfw-v1/acc"] == pytest.approx(saved["accuracy_mean"])
    artifacts = {a.path for a in tracking.list_artifacts(run.info.run_id, "eval/lfw-v1")}
    assert artifacts == {"eval/lfw-v1/lfw.json", "eval/lfw-v1/lfw.png"}


def _runs_with_versions(client, accuracies, experiment, model):
    mlflow.set_experiment(experiment)
    client.create_registered_model(model)
    run_ids = []
    for i, acc in enumerate(accuracies):
        with mlflow.start_run(run_name=f"seed{i}") as run:
            if acc is not None:
                mlflow.log_metric("lfw-v1/acc", acc)
            mlflow.log_metric("lfw-v1/auc", 0.5 + i / 10)
        client.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        run_ids.append(run.info.run_id)
    return run_ids


def test_register_best_sets_alias_by_metric(tracking):
    run_ids = _runs_with_versions(tracking, [0.91, 0.95, None, 0.93], "finetune", "lafs-finetune")
    champion = register_best("lafs-finetune", "lfw-v1/acc")
    assert (champion.version, champion.value, champion.candidates) == ("2", 0.95, 3)
    assert tracking.get_model_version_by_alias("lafs-finetune", "champion").run_id == run_ids[1]
    worst = register_best("lafs-finetune", "lfw-v1/acc", alias="worst", goal="min")
    assert worst.version == "1"
    with pytest.raises(LafsError, match="no version"):
        register_best("lafs-finetune", "cfp-fp/acc")
    result = CliRunner().invoke(app, ["eval", "register", "--model-name", "lafs-finetune", "--metric",
                                      "lfw-v1/auc", "--alias", "by-auc", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["version"] == "4"
    assert str(tracking.get_model_version_by_alias("lafs-finetune", "by-auc").version) == "4"


def test_compare_runs_table_and_json(tracking):
    _runs_with_versions(tracking, [0.91, 0.95, None, 0.93], "compare", "lafs-compare")
    rows = compare_runs(["lfw-v1/acc", "lfw-v1/auc"], ["compare"])
    assert [r["run_name"] for r in rows] == ["seed1", "seed3", "seed0", "seed2"]  # best first, missing last
    assert rows[-1]["lfw-v1/acc"] is None
    runner = CliRunner()
    out = runner.invoke(app, ["eval", "compare", "-m", "lfw-v1/acc,lfw-v1/auc", "-e", "compare", "--json"])
    assert out.exit_code == 0, out.output
    assert [r["lfw-v1/acc"] for r in json.loads(out.output)] == [0.95, 0.93, 0.91, None]
    table = runner.invoke(app, ["eval", "compare", "-m", "lfw-v1/auc", "-e", "compare", "--goal", "min"])
    assert table.exit_code == 0, table.output
    assert table.output.index("seed0") < table.output.index("seed3")
