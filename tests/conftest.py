"""Session-wide fixtures: the real datasets under ../shared and one MLflow sqlite store per test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lafs_core.env import configure_offline_env, shared_datasets

configure_offline_env()


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """``../shared/datasets``; a missing folder fails loudly (the suite needs the real images)."""
    root = shared_datasets()
    assert root.is_dir(), f"shared datasets not found at {root} (set LAFS_SHARED)"
    return root


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite tracking store per session (creating one costs ~10 s of schema migrations)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def mlflow_store(mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """The session store, with a fresh experiment for this test and no inherited run ids."""
    experiment = f"test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("LAFS_MLFLOW_PARENT_RUN_ID", raising=False)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment(experiment)
    yield MlflowClient(mlflow_uri)
    while mlflow.active_run() is not None:
        mlflow.end_run()
