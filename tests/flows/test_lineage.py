"""MLflow lineage: parent/child runs, a stage process attaching through the environment, dataset input, alias."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow import MlflowClient

from flows import lineage
from flows.common import tracked_stage

STAGE_PROCESS = """
from lafs_core.tracking import stage_run, log_metrics
with stage_run("pretrain") as run:
    log_metrics({"train/loss": 1.5}, step=3)
    print(run.info.run_id)
"""


def test_stage_process_logs_into_the_child_run(mlflow_store: MlflowClient, tmp_path: Path) -> None:
    parent = lineage.start_run("pipeline", None, os.environ["MLFLOW_EXPERIMENT_NAME"])
    with tracked_stage("pretrain", parent) as child:
        env = {**os.environ, **lineage.stage_env(child, parent)}
        out = subprocess.run(
            [sys.executable, "-c", STAGE_PROCESS], env=env, capture_output=True, text=True, check=True, timeout=300
        )
        assert out.stdout.strip().splitlines()[-1] == child
    lineage.finish_run(parent, ok=True)

    run = mlflow_store.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["lafs.stage"] == "pretrain"
    assert run.data.metrics["train/loss"] == 1.5
    assert run.info.status == "FINISHED"
    runs = mlflow_store.search_runs([run.info.experiment_id])
    assert {r.info.run_id for r in runs} == {parent, child}
    assert lineage.run_url(child).endswith(f"/#/experiments/{run.info.experiment_id}/runs/{child}")


def test_failed_stage_marks_its_run_failed(mlflow_store: MlflowClient) -> None:
    run_id = None
    try:
        with tracked_stage("finetune", None, os.environ["MLFLOW_EXPERIMENT_NAME"]) as run_id:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert run_id is not None
    assert mlflow_store.get_run(run_id).info.status == "FAILED"


def test_manifest_is_a_dataset_input_and_alias_points_at_the_run(mlflow_store: MlflowClient, tmp_path: Path) -> None:
    shards = tmp_path / "pool"
    shards.mkdir()
    pq.write_table(pa.table({"key": ["a", "b", "c"], "label": [0, 1, -1]}), shards / "manifest.parquet")
    run_id = lineage.start_run("pretrain", None, os.environ["MLFLOW_EXPERIMENT_NAME"])
    digest = lineage.log_manifest_input(run_id, shards)
    inputs = mlflow_store.get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("pool", digest)]
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    assert '"num_rows": 3' in inputs[0].dataset.profile

    name = f"test-model-{run_id[:8]}"
    mlflow_store.create_registered_model(name)
    other = lineage.start_run("finetune", None, os.environ["MLFLOW_EXPERIMENT_NAME"])
    mlflow_store.create_model_version(name, source=str(tmp_path), run_id=run_id)
    mlflow_store.create_model_version(name, source=str(tmp_path), run_id=other)
    assert lineage.register_alias(name, run_id, "candidate") == "1"
    assert mlflow_store.get_model_version_by_alias(name, "candidate").run_id == run_id
