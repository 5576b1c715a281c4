"""Session-wide fixtures: the real datasets under ../shared, one MLflow sqlite store and one Prefect API per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lafs_core.env import configure_offline_env
from lafs_core.env import shared_datasets as find_shared_datasets

configure_offline_env()

IMAGE_ROOTS = {
    "lfw": "lfw_deepfunneled/lfw-deepfunneled",
    "yaleb": "extended_yale_b_cropped/CroppedYale",
    "att": "att_faces/att_faces",
    "yale": "yalefaces/yalefaces",
}


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """``../shared/datasets``; a missing folder fails loudly (the suite needs the real images)."""
    root = find_shared_datasets()
    assert root.is_dir(), f"shared datasets not found at {root} (set LAFS_SHARED)"
    return root


@pytest.fixture(scope="session")
def shared_datasets(datasets_root: Path) -> Path:
    """The datasets root with the four image roots and the LFW pair files; anything missing fails, never skips."""
    needed = [*IMAGE_ROOTS.values(), "lfw_deepfunneled/pairs.txt", "lfw_deepfunneled/pairsDevTest.txt"]
    missing = [rel for rel in needed if not (datasets_root / rel).exists()]
    if missing:
        pytest.fail(f"shared datasets missing under {datasets_root}: {missing} (set LAFS_SHARED)", pytrace=False)
    return datasets_root


@pytest.fixture(scope="session")
def lfw_root(shared_datasets: Path) -> Path:
    """LFW deep-funneled image root (one folder per person, 250x250 JPEGs)."""
    return shared_datasets / IMAGE_ROOTS["lfw"]


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


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A temporary Prefect API (sqlite in a temp dir); yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())
