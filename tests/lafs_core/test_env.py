"""The offline environment keeps Prefect and MLflow inside the project and never overrides the user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lafs_core.env import ARTIFACT_ROOT_VARIABLE, configure_offline_env, offline_environment, project_home


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


def test_default_store_keeps_artifacts_under_lafs_home_whatever_the_working_directory(
    tmp_path: Path, mlflow_uri: str
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    home.mkdir()
    shutil.copy(mlflow_uri.removeprefix("sqlite:///"), home / "mlflow.db")  # an empty, migrated store: no 10 s setup
    code = (
        "from lafs_core.env import configure_offline_env; configure_offline_env()\n"
        "import mlflow\n"
        "mlflow.set_experiment('moved')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_text('x', 'note.txt')\n"
        "print(mlflow.get_run(run.info.run_id).info.artifact_uri)\n"
    )
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "_MLFLOW_", "LAFS_HOME"))}
    env = {**inherited, "LAFS_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    uri = done.stdout.strip().splitlines()[-1]
    assert uri.startswith((home / "mlartifacts").as_uri()), uri
    assert list((home / "mlartifacts").rglob("note.txt")) and not list(elsewhere.iterdir())


def test_a_chosen_tracking_uri_keeps_mlflows_artifact_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.delenv(ARTIFACT_ROOT_VARIABLE, raising=False)
    configure_offline_env(tmp_path)
    assert ARTIFACT_ROOT_VARIABLE not in os.environ
