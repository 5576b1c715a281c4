"""End to end: the pipeline flow at tiny scale on real LFW images, then its MLflow lineage and Prefect states.

A few k-shot identities, a few dozen pool images and two optimiser steps per stage keep it to CPU minutes; it
runs the real stages (shards, torchrun Part fViT, 2-process torchrun LAFS pretraining, fine-tuning, View-1
verification) on a temporary Prefect server and the session's sqlite MLflow store.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

STAGES = {"shards-kshot", "partfvit", "shards-pool", "pretrain", "finetune", "eval"}


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_pipeline_tracks_every_stage(prefect_api: str, mlflow_store: MlflowClient, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    from flows.params import PipelineParams
    from flows.pipeline import pipeline_flow

    model_name = f"e2e-{uuid.uuid4().hex[:8]}"
    params = PipelineParams(
        work_dir=str(tmp_path / "work"),
        kshot_identities=8,
        pool_images=48,
        partfvit_overrides=["max_steps=2", "val_pairs=[]", "log_model=false", "num_workers=0"],
        pretrain_overrides=["max_steps=2", "probe_every=0", "num_workers=0", "log_every=1"],
        finetune_overrides=["max_steps=2", "val_pairs=[]", "num_workers=0", "log_every=1"],
        eval_pairs_per_fold=10,
        experiment=os.environ["MLFLOW_EXPERIMENT_NAME"],
        registered_model=model_name,
    )
    state = pipeline_flow(params, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()

    # MLflow: one parent, one finished child per stage, metrics, the manifest inputs, the registered model.
    experiment = mlflow_store.get_experiment_by_name(params.experiment)
    runs = mlflow_store.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in parents] == [result.parent_run_id]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id}
    assert set(children) == STAGES
    assert len(runs) == 1 + len(STAGES)
    for name, run in children.items():
        assert run.info.status == "FINISHED", name
        assert run.data.tags["prefect.flow_run_id"], name
    assert children["shards-pool"].data.metrics["shards/num_samples"] == 48
    for name in ("partfvit", "pretrain", "finetune"):
        losses = [k for k in children[name].data.metrics if k.split("/")[-1] == "loss"]
        assert losses, (name, sorted(children[name].data.metrics))
    accuracy = children["eval"].data.metrics["lfw-v1/acc"]
    assert 0.0 <= accuracy <= 1.0
    assert parents[0].data.metrics["lfw-v1/acc"] == accuracy
    for name in ("partfvit", "pretrain", "finetune"):
        assert [i.dataset.name for i in children[name].inputs.dataset_inputs], name
    version = mlflow_store.get_model_version_by_alias(model_name, "candidate")
    assert version.run_id == children["finetune"].info.run_id
    assert result.version == str(version.version)

    # Prefect: the pipeline run, its stage subflows and every task Completed; links to the MLflow runs.
    with get_client(sync_client=True) as client:
        flow_run_id = parents[0].data.tags["prefect.flow_run_id"]
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id, *[f.id for f in subflows]]))
        )
        artifacts = client.read_artifacts()
    assert len(subflows) == len(STAGES)
    assert all(f.state.is_completed() for f in subflows)
    assert tasks
    assert all(t.state.is_completed() for t in tasks), [(t.name, t.state.type) for t in tasks]
    links = {a.key: str(a.data) for a in artifacts}  # link artifacts (stored as markdown links)
    assert {"mlflow-pipeline", "mlflow-pretrain", "mlflow-eval"} <= set(links)
    assert f"/runs/{result.parent_run_id})" in links["mlflow-pipeline"]
