"""The offline environment keeps Prefect and MLflow inside the project and never overrides the user."""

from __future__ import annotations

from pathlib import Path

import pytest

from lafs_core.env import configure_offline_env, offline_environment, project_home


def test_offline_environment_points_inside_home(tmp_path: Path) -> None:
    env = offline_environment(tmp_path)
    assert env["PREFECT_HOME"] == str(tmp_path / ".prefect")
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert env["DO_NOT_TRACK"] == "true"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_configure_respects_user_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    applied = configure_offline_env(tmp_path)
    assert applied["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert applied["PREFECT_HOME"] == str(tmp_path / ".prefect")


def test_lafs_home_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAFS_HOME", str(tmp_path))
    assert project_home() == tmp_path.resolve()
