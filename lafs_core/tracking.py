"""MLflow tracking of every stage (training, evaluation, export): rank 0 only, one run per stage, nested under the
pipeline's run.

:func:`stage_run` is the one place a run is opened in-process. A stage attaches to its run in this order: the run
already active in this process (a command inside a tracked block), an explicit ``run_id`` (e.g. from a checkpoint
being resumed), ``MLFLOW_RUN_ID`` (set by the pipeline flow for its stage processes), or a new run whose parent is
``LAFS_MLFLOW_PARENT_RUN_ID`` (tag ``mlflow.parentRunId``). Other ranks get ``None`` and log nothing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from pydantic import BaseModel

from lafs_core.config import dump_config
from lafs_core.config.loader import config_to_dict
from lafs_core.distributed import is_main_process
from lafs_core.env import configure_offline_env

PARENT_RUN_ENV = "LAFS_MLFLOW_PARENT_RUN_ID"
DEFAULT_EXPERIMENT = "lafs"
_MAX_PARAM_CHARS = 500
_PARAMS_PER_CALL = 100


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping to ``{"a.b": "value"}`` strings that fit MLflow's parameter limit."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_CHARS]
    return flat


def log_config(cfg: BaseModel) -> None:
    """Log a resolved config as parameters and as ``config.yaml``."""
    params = flatten(config_to_dict(cfg))
    items = list(params.items())
    for start in range(0, len(items), _PARAMS_PER_CALL):
        mlflow.log_params(dict(items[start : start + _PARAMS_PER_CALL]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        dump_config(cfg, path)
        mlflow.log_artifact(str(path))


@contextmanager
def stage_run(
    stage: str,
    cfg: BaseModel | None = None,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    system_metrics: bool = True,
    experiment: str | None = None,
    run_name: str | None = None,
) -> Iterator[mlflow.ActiveRun | None]:
    """Open (or re-attach to) the MLflow run of a stage on rank 0; yield ``None`` on other ranks.

    A new run goes to ``experiment`` (default ``MLFLOW_EXPERIMENT_NAME``, else ``lafs``) under ``run_name`` (default
    the stage). The run ends FINISHED, or FAILED when the block raises; a run that was already active stays open.
    """
    if not is_main_process():
        yield None
        return
    if (active := mlflow.active_run()) is not None:
        yield active
        return
    configure_offline_env()
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    all_tags = {"lafs.stage": stage, **(tags or {})}
    if run_id:
        run = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
    else:
        mlflow.set_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
        if parent := os.environ.get(PARENT_RUN_ENV):
            all_tags["mlflow.parentRunId"] = parent
        run = mlflow.start_run(run_name=run_name or stage, log_system_metrics=system_metrics)
    mlflow.set_tags(all_tags)
    if cfg is not None and not run.data.params:
        log_config(cfg)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log metrics to the active run from rank 0; silently nothing elsewhere or without a run."""
    if is_main_process() and mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, str]) -> None:
    """Set tags on the active run from rank 0."""
    if is_main_process() and mlflow.active_run() is not None:
        mlflow.set_tags(dict(tags))


def log_params(params: Mapping[str, object]) -> None:
    """Log parameters to the active run from rank 0."""
    if is_main_process() and mlflow.active_run() is not None:
        mlflow.log_params({k: str(v)[:_MAX_PARAM_CHARS] for k, v in params.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file to the active run from rank 0."""
    if is_main_process() and mlflow.active_run() is not None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
