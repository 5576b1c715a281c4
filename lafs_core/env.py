"""One place that makes Prefect, MLflow and torch safe to run offline, inside the project folder.

Used by the CLI, the flows and the tests. Values already set by the user win (``setdefault``), so a cluster
can point ``MLFLOW_TRACKING_URI`` at a server and ``PREFECT_API_URL`` at a Prefect server.

MLflow's client-side sqlite store puts the artifacts of every new experiment under ``./mlruns`` of whatever the
working directory is; for our default store they go to ``<home>/mlartifacts`` instead. MLflow has no public setting
for that root outside its server; the client store reads it from ``_MLFLOW_SERVER_ARTIFACT_ROOT``, the variable the
server exports for the same purpose (a test checks it still works). With it set, MLflow also treats the process as
acting for a server: artifact URIs that name another host (http, ftp, ...) are refused and custom GenAI scorers are
not rebuilt, neither of which the default local store uses. A user-chosen tracking URI keeps MLflow's own default.
"""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACT_ROOT_VARIABLE = "_MLFLOW_SERVER_ARTIFACT_ROOT"


def project_home() -> Path:
    """The folder that holds run outputs, the MLflow sqlite store and Prefect's home.

    ``LAFS_HOME`` if set, else the repository checkout this package lives in (when run from a clone),
    else the current directory.
    """
    if env := os.environ.get("LAFS_HOME"):
        return Path(env).resolve()
    return _checkout() or Path.cwd().resolve()


def _checkout() -> Path | None:
    """The repository this package runs from, when it runs from a clone (not an installed wheel)."""
    repo = Path(__file__).resolve().parent.parent
    return repo if (repo / "pyproject.toml").is_file() else None


def shared_datasets() -> Path:
    """Root of the real labelled face datasets: ``$LAFS_SHARED/datasets``, else ``<checkout>/../shared/datasets``.

    The default follows the checkout, not ``LAFS_HOME``, so run outputs can live anywhere.
    """
    shared = os.environ.get("LAFS_SHARED") or str((_checkout() or project_home()).parent / "shared")
    return Path(shared).resolve() / "datasets"


def offline_environment(home: Path | None = None) -> dict[str, str]:
    """The environment variables that keep every tool local, quiet and inside ``home``."""
    home = (home or project_home()).resolve()
    return {
        "LAFS_HOME": str(home),
        "PREFECT_HOME": str(home / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "HF_HUB_OFFLINE": "1",
        "TORCH_HOME": str(home / ".torch"),
        "GIT_PYTHON_REFRESH": "quiet",
    }


def artifact_root(home: Path | None = None) -> Path:
    """Where the default local MLflow store keeps run artifacts: ``<home>/mlartifacts``."""
    return (home or project_home()).resolve() / "mlartifacts"


def configure_offline_env(home: Path | None = None) -> dict[str, str]:
    """Apply :func:`offline_environment` to ``os.environ`` without overriding user settings."""
    values = offline_environment(home)
    if os.environ.get("MLFLOW_TRACKING_URI", values["MLFLOW_TRACKING_URI"]) == values["MLFLOW_TRACKING_URI"]:
        os.environ.setdefault(ARTIFACT_ROOT_VARIABLE, artifact_root(home).as_uri())
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in values}
