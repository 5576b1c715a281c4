"""End to end: the pipeline flow at tiny scale on real images, then its MLflow lineage and Prefect states.

Two runs of the one chain: the ``lfw-v1`` configuration (LFW), and the pipeline on sources that are not LFW
(Extended Yale B unlabelled, AT&T labelled, Yale and AT&T as evaluation sets). A few k-shot identities, a few dozen
pool images and two optimiser steps per stage keep each to CPU minutes; they run the real stages (shards, torchrun
Part fViT, 2-process torchrun LAFS pretraining, fine-tuning, verification) on the session's temporary Prefect server
and sqlite MLflow store.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

TRAINING = {"shards-kshot", "partfvit", "shards-pool", "pretrain", "finetune"}
TINY = {
    "kshot_identities": 8,
    "pool_images": 48,
    "partfvit_overrides": ["max_steps=2", "log_model=false", "num_workers=0"],
    "pretrain_overrides": ["max_steps=2", "probe_every=0", "num_workers=0", "log_every=1"],
    "finetune_overrides": ["max_steps=2", "num_workers=0", "log_every=1"],
}


def run_pipeline(params: Any, mlflow_store: MlflowClient) -> tuple[Any, Any, dict[str, Any]]:
    """Run the flow; check one parent and one finished child run per stage; (result, parent, children by name)."""
    from flows.pipeline import pipeline_flow

    state = pipeline_flow(params, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    experiment = mlflow_store.get_experiment_by_name(params.experiment)
    runs = mlflow_store.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in parents] == [result.parent_run_id]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id}
    assert set(children) == TRAINING | {f"eval-{name}" for name in result.evaluations}
    assert len(runs) == 1 + len(children)
    for name, run in children.items():
        assert run.info.status == "FINISHED", name
        assert run.data.tags["prefect.flow_run_id"], name
    for name in ("partfvit", "pretrain", "finetune"):
        losses = [k for k in children[name].data.metrics if k.split("/")[-1] == "loss"]
        assert losses, (name, sorted(children[name].data.metrics))
        assert [i.dataset.name for i in children[name].inputs.dataset_inputs], name
    assert children["shards-pool"].data.metrics["shards/num_samples"] == 48
    version = mlflow_store.get_model_version_by_alias(params.registered_model, "candidate")
    assert version.run_id == children["finetune"].info.run_id
    assert result.version == str(version.version)
    return result, parents[0], children


def check_each_evaluation(result: Any, parent: Any, children: dict[str, Any], names: list[str]) -> None:
    """Every evaluation set reported on its own: its run, and its figures on the parent and on the fine-tuning."""
    assert list(result.evaluations) == names
    for name in names:
        accuracy = children[f"eval-{name}"].data.metrics[f"{name}/acc"]
        assert 0.0 <= accuracy <= 1.0
        assert parent.data.metrics[f"{name}/acc"] == accuracy == result.evaluations[name][f"{name}/acc"]
        assert children["finetune"].data.metrics[f"{name}/acc"] == accuracy


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_lfw_v1_configuration_tracks_every_stage(prefect_api: str, mlflow_store: MlflowClient, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    from flows.chain import configuration

    params = configuration(
        "lfw-v1",
        **TINY,
        work_dir=str(tmp_path / "work"),
        eval_sets=[{"data": "lfw-v1", "pairs_per_fold": 10}],
        experiment=os.environ["MLFLOW_EXPERIMENT_NAME"],
        registered_model=f"e2e-{uuid.uuid4().hex[:8]}",
    )
    result, parent, children = run_pipeline(params, mlflow_store)
    check_each_evaluation(result, parent, children, ["lfw-v1"])

    # Prefect: the pipeline run, its stage subflows and every task Completed; links to the MLflow runs.
    with get_client(sync_client=True) as client:
        flow_run_id = parent.data.tags["prefect.flow_run_id"]
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id, *[f.id for f in subflows]]))
        )
        artifacts = client.read_artifacts()
    assert len(subflows) == len(children)
    assert all(f.state.is_completed() for f in subflows)
    assert tasks
    assert all(t.state.is_completed() for t in tasks), [(t.name, t.state.type) for t in tasks]
    links = {a.key: str(a.data) for a in artifacts}  # link artifacts (stored as markdown links)
    assert {"mlflow-pipeline", "mlflow-pretrain", "mlflow-eval-lfw-v1"} <= set(links)
    assert f"/runs/{result.parent_run_id})" in links["mlflow-pipeline"]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_the_pipeline_on_data_that_is_not_lfw(prefect_api: str, mlflow_store: MlflowClient, tmp_path: Path) -> None:
    """Extended Yale B unlabelled, AT&T labelled (4-shot), the landmark model trained on it, Yale and AT&T
    evaluated: nothing of LFW is read."""
    from flows.params import PipelineParams

    params = PipelineParams(
        **TINY,
        work_dir=str(tmp_path / "work"),
        unlabelled=["yaleb"],
        labelled="att",
        k=4,
        landmarks="train",
        eval_sets=[{"data": "yale", "pairs_per_fold": 10}, {"data": "att", "name": "att-all", "pairs_per_fold": 10}],
        experiment=os.environ["MLFLOW_EXPERIMENT_NAME"],
        registered_model=f"e2e-yours-{uuid.uuid4().hex[:8]}",
    )
    result, parent, children = run_pipeline(params, mlflow_store)
    check_each_evaluation(result, parent, children, ["yale", "att-all"])
    assert children["shards-kshot"].data.metrics["shards/num_samples"] == 8 * 4
    sources = children["shards-pool"].data.params["source"]
    assert "CroppedYale" in sources and "lfw" not in sources.lower()
    report = Path(result.stages["eval-yale"].artifacts["report"])
    assert report.name == "yale.json" and "yalefaces" in report.read_text()
