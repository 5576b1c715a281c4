"""Stage runs nest under the pipeline's parent run, log the resolved config, and re-attach on resume."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lafs_core import tracking
from lafs_core.config import StageConfig, load_config


class ProbeConfig(StageConfig):
    steps: int = 3


def test_stage_run_nests_logs_config_and_reattaches(mlflow_store: MlflowClient, monkeypatch) -> None:
    with mlflow.start_run(run_name="pipeline") as parent:
        parent_id = parent.info.run_id
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent_id)
    cfg = load_config(ProbeConfig, preset="tiny", overrides=["steps=9"])
    with tracking.stage_run("pretrain", cfg, system_metrics=False) as run:
        child_id = run.info.run_id
        tracking.log_metrics({"loss": 1.5}, step=0)
    child = mlflow_store.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.tags["lafs.stage"] == "pretrain"
    assert child.data.params["steps"] == "9"
    assert child.data.params["model.dim"] == str(cfg.model.dim)
    assert child.info.status == "FINISHED"
    assert "config.yaml" in [a.path for a in mlflow_store.list_artifacts(child_id)]

    with tracking.stage_run("pretrain", cfg, run_id=child_id, system_metrics=False):
        tracking.log_metrics({"loss": 0.5}, step=1)
    history = mlflow_store.get_metric_history(child_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.5), (1, 0.5)]


def test_failure_marks_run_failed(mlflow_store: MlflowClient) -> None:
    with pytest.raises(RuntimeError), tracking.stage_run("finetune", system_metrics=False) as run:
        run_id = run.info.run_id
        raise RuntimeError("diverged")
    assert mlflow_store.get_run(run_id).info.status == "FAILED"


def test_non_zero_rank_logs_nothing(mlflow_store: MlflowClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "is_main_process", lambda: False)
    with tracking.stage_run("pretrain", system_metrics=False) as run:
        assert run is None
        tracking.log_metrics({"loss": 1.0})
    experiment = mlflow.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    assert not mlflow_store.search_runs([experiment.experiment_id])


def test_flatten_truncates_long_values() -> None:
    flat = tracking.flatten({"a": {"b": 1, "c": "x" * 900}})
    assert flat["a.b"] == "1"
    assert len(flat["a.c"]) == 500
