"""MLflow lineage of a pipeline run: one parent run, one child run per stage, linked both ways with Prefect.

The flow creates every run itself (client API, so no fluent state leaks between stages) and hands a stage its
run through the environment (``MLFLOW_RUN_ID``, ``LAFS_MLFLOW_PARENT_RUN_ID``, ``MLFLOW_TRACKING_URI``); the
stage's rank 0 attaches with ``lafs_core.tracking.stage_run``. Each run carries the Prefect flow-run id and
URL as tags; each Prefect flow run gets a link artifact to its MLflow run.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus

from lafs_core.tracking import PARENT_RUN_ENV

UI_URL_ENV = "LAFS_MLFLOW_UI_URL"
DEFAULT_UI_URL = "http://127.0.0.1:5000"


def client() -> MlflowClient:
    """A client on the current tracking URI (``MLFLOW_TRACKING_URI``)."""
    return MlflowClient(tracking_uri=mlflow.get_tracking_uri())


def ui_url() -> str:
    """Base URL of the MLflow UI: ``LAFS_MLFLOW_UI_URL``, the tracking server itself, or a local ``mlflow ui``."""
    if env := os.environ.get(UI_URL_ENV):
        return env.rstrip("/")
    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else DEFAULT_UI_URL


def run_url(run_id: str) -> str:
    """The MLflow UI page of a run."""
    run = client().get_run(run_id)
    return f"{ui_url()}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def prefect_tags() -> dict[str, str]:
    """Tags naming the current Prefect flow run (id and UI URL), empty outside a flow run."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return {}
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}
    if flow_run.ui_url:
        tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return tags


def link_to_prefect(run_id: str, stage: str) -> None:
    """Attach the MLflow run's URL to the current Prefect flow run as a link artifact."""
    from prefect.artifacts import create_link_artifact

    key = re.sub(r"[^a-z0-9-]+", "-", f"mlflow-{stage}".lower()).strip("-")
    create_link_artifact(
        link=run_url(run_id), link_text=f"MLflow run of {stage}", key=key, description=f"MLflow run {run_id}"
    )


def start_run(
    stage: str, parent_run_id: str | None = None, experiment: str = "lafs-pipeline", run_name: str | None = None
) -> str:
    """Create the RUNNING MLflow run of ``stage`` (a child of ``parent_run_id`` when given), linked to Prefect."""
    mlc = client()
    if parent_run_id:
        experiment_id = mlc.get_run(parent_run_id).info.experiment_id
    else:
        found = mlc.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else mlc.create_experiment(experiment)
    tags = {"lafs.stage": stage, **prefect_tags()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = mlc.create_run(experiment_id, tags=tags, run_name=run_name or stage)
    run_id = run.info.run_id
    if tags.get("prefect.flow_run_id"):
        link_to_prefect(run_id, run_name or stage)
    return run_id


def stage_env(run_id: str, parent_run_id: str | None) -> dict[str, str]:
    """Environment for a stage process so that its rank 0 logs into ``run_id``."""
    env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    return env


def finish_run(run_id: str, ok: bool) -> None:
    """End a run the flow created, unless its stage already ended it."""
    mlc = client()
    if mlc.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
        mlc.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def log_manifest_input(run_id: str, shard_dir: str | Path, context: str = "training") -> str:
    """Log a shard set's ``manifest.parquet`` as an MLflow dataset input of ``run_id``; returns its digest."""
    import pandas as pd

    shard_dir = Path(shard_dir)
    frame = pd.read_parquet(shard_dir / "manifest.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # source-type and integer-schema hints, not problems here
        dataset = mlflow.data.from_pandas(frame, source=str(shard_dir.resolve()), name=shard_dir.name)
    tags = [InputTag(key="mlflow.data.context", value=context)]
    client().log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])
    return dataset.digest


def log_run_data(
    run_id: str, params: Mapping[str, object] | None = None, metrics: Mapping[str, float] | None = None
) -> None:
    """Log parameters and metrics of an in-process stage to its run."""
    mlc = client()
    now = int(time.time() * 1000)
    mlc.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)[:500]) for k, v in (params or {}).items()],
    )


def register_alias(registered_model: str, run_id: str, alias: str) -> str:
    """Point ``alias`` of ``registered_model`` at the version logged by ``run_id``; returns the version."""
    mlc = client()
    versions = [v for v in mlc.search_model_versions(f"name='{registered_model}'") if v.run_id == run_id]
    if not versions:
        raise LookupError(f"registered model {registered_model!r} has no version from run {run_id}")
    version = max(versions, key=lambda v: int(v.version))
    mlc.set_registered_model_alias(registered_model, alias, version.version)
    mlc.set_model_version_tag(registered_model, version.version, "lafs.alias", alias)
    return str(version.version)
