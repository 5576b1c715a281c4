"""The tiny pipeline through a Prefect process worker, on MLflow and Prefect servers backed by PostgreSQL.

Two runs of the ``pipeline-lfw-v1`` deployment (``prefect deployment run``, as docker/README.md does): the second
changes only fine-tuning, so its other stages come from the cache. The MLflow server is restarted while the first
run trains. The checks then read everything through the servers, from working directories other than the worker's.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import psycopg
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from stack_harness import HOST, REPO, Stack, http_ok, program

from flows.chain import CONFIGURATIONS
from flows.stack import MLFLOW_DB, PREFECT_DB, WORK_POOL

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(1800)]

DEPLOYMENT = "lafs-pipeline/pipeline-lfw-v1"
STAGES = {"shards-kshot", "partfvit", "shards-pool", "pretrain", "finetune", "eval-lfw-v1"}
# The second run changes only fine-tuning: these stages' tasks come from the first run's cached results.
CACHED_IN_SECOND = {
    "shards-kshot": "shard_job",
    "partfvit": "train-stage",
    "shards-pool": "shard_job",
    "pretrain": "train-stage",
}
METRIC = "lfw-v1/acc"
RUN_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class RunSnapshot:
    """What a finished run holds: status, end time, metrics, params, tags and its artifact paths."""

    status: str
    end_time: int | None
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    artifacts: list[str]

    @classmethod
    def of(cls, client: MlflowClient, run: Run) -> RunSnapshot:
        """Snapshot ``run`` through ``client``."""
        return cls(
            status=run.info.status,
            end_time=run.info.end_time,
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
            tags=dict(run.data.tags),
            artifacts=artifact_paths(client, run.info.run_id),
        )


@dataclass(frozen=True)
class Pipelines:
    """The two deployment runs and what was recorded while they ran."""

    experiment: str
    model: str
    work_dir: Path
    flow_runs: list[str]
    finished_before_restart: dict[str, RunSnapshot]
    state_after_restart: str
    candidate_after_first: str
    first_checkpoint_sha256: str


def sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run, recursively, as sorted paths."""
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


def pipeline_params(work_dir: Path, experiment: str, model: str, finetune_steps: int) -> dict[str, Any]:
    """The tiny pipeline of the end-to-end test: 8 k-shot identities, 48 pool images, a few steps per stage."""
    return {
        **CONFIGURATIONS["lfw-v1"],
        "work_dir": str(work_dir),
        "kshot_identities": 8,
        "pool_images": 48,
        "partfvit_overrides": ["max_steps=2", "log_model=false", "num_workers=0"],
        "pretrain_overrides": ["max_steps=2", "probe_every=0", "num_workers=0", "log_every=1"],
        "finetune_overrides": [f"max_steps={finetune_steps}", "num_workers=0", "log_every=1"],
        "eval_sets": [{"data": "lfw-v1", "pairs_per_fold": 10}],
        "experiment": experiment,
        "registered_model": model,
    }


def start_flow_run(stack: Stack, params: dict[str, Any]) -> str:
    """``prefect deployment run`` of the tiny pipeline; returns the new flow run's id."""
    out = stack.prefect_cli("deployment", "run", DEPLOYMENT, "--params", json.dumps({"params": params}))
    found = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert found, out
    return found[1]


def read_flow_run(stack: Stack, flow_run_id: str) -> FlowRun:
    """The flow run as the Prefect server has it."""
    with SyncPrefectClient(stack.prefect_api_url) as client:
        return client.read_flow_run(flow_run_id)


def wait_completed(stack: Stack, flow_run_id: str) -> FlowRun:
    """Wait for the flow run to end; it must have completed."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (flow_run := read_flow_run(stack, flow_run_id)).state.is_final():
        assert time.monotonic() < deadline, f"flow run still {flow_run.state.type}\n{stack.worker.log_tail()}"
        assert stack.worker.alive(), f"the worker exited\n{stack.worker.log_tail()}"
        time.sleep(2)
    assert flow_run.state.is_completed(), f"{flow_run.state.message}\n{stack.worker.log_tail(8000)}"
    return flow_run


def wait_finished_stage(stack: Stack, experiment: str, stage: str, flow_run_id: str) -> None:
    """Wait until the MLflow run of ``stage`` is FINISHED, while the flow run goes on."""
    client = MlflowClient(stack.mlflow_url)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if any(r.info.run_name == stage and r.info.status == "FINISHED" for r in runs):
            return
        state = read_flow_run(stack, flow_run_id).state
        assert not state.is_final(), f"flow run {state.type} before {stage} finished\n{stack.worker.log_tail()}"
        time.sleep(1)
    pytest.fail(f"{stage} did not finish in {RUN_TIMEOUT_S:.0f} s\n{stack.worker.log_tail()}")


def experiment_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """Every run of the experiment."""
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def lineage(client: MlflowClient, experiment: str) -> list[tuple[Run, dict[str, Run]]]:
    """(parent, children by run name) of each pipeline run, oldest first."""
    runs = experiment_runs(client, experiment)
    parents = sorted((r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)
    return [
        (parent, {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id})
        for parent in parents
    ]


@pytest.fixture(scope="module")
def pipelines(stack: Stack) -> Pipelines:
    """Deploy ``pipeline-lfw-v1``; run it (MLflow restarted once Part fViT finished), then with 3 fine-tuning steps."""
    experiment, model, work_dir = "lafs-stack", "lafs-face-stack", stack.root / "work"
    stack.prefect_cli(
        "deploy", "--name", "pipeline-lfw-v1", LAFS_PROJECT_DIR=str(REPO), LAFS_SHARED=str(stack.lafs_shared)
    )
    client = MlflowClient(stack.mlflow_url)

    started = time.monotonic()
    first = start_flow_run(stack, pipeline_params(work_dir, experiment, model, finetune_steps=2))
    wait_finished_stage(stack, experiment, "partfvit", first)
    finished = {
        r.info.run_id: RunSnapshot.of(client, r)
        for r in experiment_runs(client, experiment)
        if r.info.status == "FINISHED"
    }
    restart_s = stack.restart_mlflow()
    state_after_restart = read_flow_run(stack, first).state.type.value
    wait_completed(stack, first)
    first_s = time.monotonic() - started
    candidate = client.get_model_version_by_alias(model, "candidate").version
    checkpoint_sha = sha256(work_dir / "finetune" / "last.pt")

    started = time.monotonic()
    second = start_flow_run(stack, pipeline_params(work_dir, experiment, model, finetune_steps=3))
    wait_completed(stack, second)
    second_s = time.monotonic() - started
    print(f"pipeline runs (s): first {first_s:.0f} (MLflow restart {restart_s:.1f}), second {second_s:.0f}")
    return Pipelines(
        experiment=experiment,
        model=model,
        work_dir=work_dir,
        flow_runs=[first, second],
        finished_before_restart=finished,
        state_after_restart=state_after_restart,
        candidate_after_first=str(candidate),
        first_checkpoint_sha256=checkpoint_sha,
    )


@pytest.fixture
def elsewhere(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """A client of the MLflow server in a fresh working directory (not the worker's), the fluent API pointed at it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_url)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(stack.mlflow_url)
    yield MlflowClient(stack.mlflow_url)
    mlflow.set_tracking_uri(previous)


def test_runs_and_artifacts_are_read_through_the_server(
    stack: Stack, pipelines: Pipelines, elsewhere: MlflowClient, tmp_path: Path
) -> None:
    (first, first_children), (second, second_children) = lineage(elsewhere, pipelines.experiment)
    for parent, children in ((first, first_children), (second, second_children)):
        assert set(children) == STAGES
        assert {r.info.status for r in [parent, *children.values()]} == {"FINISHED"}
    assert len(experiment_runs(elsewhere, pipelines.experiment)) == 2 * (1 + len(STAGES))
    for run in experiment_runs(elsewhere, pipelines.experiment):
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri

    # The second fine-tuning overwrote the worker's checkpoint; the first one's still comes from the server.
    downloads = {}
    for which, children in (("first", first_children), ("second", second_children)):
        (tmp_path / which).mkdir()
        path = elsewhere.download_artifacts(children["finetune"].info.run_id, "checkpoints/last.pt", which)
        downloads[which] = sha256(Path(path))
    assert downloads["first"] == pipelines.first_checkpoint_sha256
    assert downloads["second"] == sha256(pipelines.work_dir / "finetune" / "last.pt") != downloads["first"]
    stored = {sha256(p) for p in stack.artifacts_root.rglob("last.pt")}
    assert pipelines.first_checkpoint_sha256 in stored  # in the server's artifact root

    for name in ("partfvit", "pretrain", "finetune"):
        assert "config.yaml" in artifact_paths(elsewhere, first_children[name].info.run_id), name
    eval_run = second_children["eval-lfw-v1"]
    report = elsewhere.download_artifacts(eval_run.info.run_id, "eval/lfw-v1/lfw-v1.json", str(tmp_path))
    assert json.loads(Path(report).read_text())["accuracy_mean"] == eval_run.data.metrics[METRIC]
    (tmp_path / "model").mkdir()
    model = mlflow.artifacts.download_artifacts(
        f"models:/{pipelines.model}@candidate", dst_path=str(tmp_path / "model")
    )
    assert (Path(model) / "MLmodel").is_file()


def test_registry_alias_moves_to_the_newer_model(pipelines: Pipelines, elsewhere: MlflowClient) -> None:
    (_, first_children), (_, second_children) = lineage(elsewhere, pipelines.experiment)
    first_version = elsewhere.get_model_version(pipelines.model, pipelines.candidate_after_first)
    assert first_version.run_id == first_children["finetune"].info.run_id
    now = elsewhere.get_model_version_by_alias(pipelines.model, "candidate")
    assert now.run_id == second_children["finetune"].info.run_id
    assert int(now.version) > int(first_version.version)
    for version in (first_version, now):
        assert elsewhere.get_model_version(pipelines.model, version.version).tags["lafs.alias"] == "candidate"


def test_eval_compare_lists_the_runs(
    stack: Stack, pipelines: Pipelines, elsewhere: MlflowClient, tmp_path: Path
) -> None:
    cmd = [program("lafs"), "eval", "compare", "-m", METRIC, "-e", pipelines.experiment, "--json"]
    done = subprocess.run(
        cmd, cwd=tmp_path, env=stack.client_env(tmp_path / "home"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(done.stdout)
    runs = experiment_runs(elsewhere, pipelines.experiment)
    assert sorted(r["run_id"] for r in rows) == sorted(r.info.run_id for r in runs)
    scored = {r.info.run_id: r.data.metrics[METRIC] for r in runs if METRIC in r.data.metrics}
    assert len(scored) == 6  # the two parents, the two evaluations and the two fine-tunings they score
    best_first = rows[: len(scored)]  # runs without the metric come last
    assert {r["run_id"]: r[METRIC] for r in best_first} == scored
    assert [r[METRIC] for r in best_first] == sorted(scored.values(), reverse=True)
    assert {r["status"] for r in rows} == {"FINISHED"}


def test_prefect_and_mlflow_runs_link_both_ways(stack: Stack, pipelines: Pipelines, elsewhere: MlflowClient) -> None:
    experiment_id = elsewhere.get_experiment_by_name(pipelines.experiment).experiment_id
    by_flow_run = {p.data.tags["prefect.flow_run_id"]: (p, c) for p, c in lineage(elsewhere, pipelines.experiment)}
    assert set(by_flow_run) == set(pipelines.flow_runs)
    with SyncPrefectClient(stack.prefect_api_url) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        for flow_run_id, (parent, children) in by_flow_run.items():
            flow_run = client.read_flow_run(flow_run_id)
            assert flow_run.deployment_id == deployment.id
            assert flow_run.work_pool_name == WORK_POOL
            assert flow_run.infrastructure_pid  # started by the process worker
            url = parent.data.tags["prefect.flow_run_url"]
            assert url == f"{stack.prefect_url}/flow-runs/flow-run/{flow_run_id}"
            assert http_ok(url, accept="text/html")  # the Prefect UI page of the flow run

            subflows = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
            )
            assert {str(f.id) for f in subflows} == {c.data.tags["prefect.flow_run_id"] for c in children.values()}
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id, *[f.id for f in subflows]])
                )
            )
            links = dict(re.findall(r"\]\((\S+/runs/(\w+))\)", " ".join(str(a.data) for a in artifacts)))
            expected = {parent, *children.values()}
            assert set(links.values()) == {r.info.run_id for r in expected}
            for link, run_id in links.items():
                assert link == f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs/{run_id}"
                assert elsewhere.get_run(run_id).data.tags["prefect.flow_run_id"] in {
                    flow_run_id,
                    *[str(f.id) for f in subflows],
                }


def test_second_run_took_the_first_runs_results_from_the_cache(
    stack: Stack, pipelines: Pipelines, elsewhere: MlflowClient
) -> None:
    (_, first_children), (_, second_children) = lineage(elsewhere, pipelines.experiment)
    stage_of = {run.data.tags["prefect.flow_run_id"]: name for name, run in second_children.items()}
    with SyncPrefectClient(stack.prefect_api_url) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(stage_of))))
    states: dict[str, set[str]] = {}
    for task in tasks:
        states.setdefault(f"{stage_of[str(task.flow_run_id)]}/{task.name.rsplit('-', 1)[0]}", set()).add(
            task.state.name
        )
    for stage, task in CACHED_IN_SECOND.items():
        assert states[f"{stage}/{task}"] == {"Cached"}, (stage, states)
    assert states["finetune/train-stage"] == {"Completed"}
    for name in ("partfvit", "pretrain"):
        assert second_children[name].data.tags["lafs.cached_from_run_id"] == first_children[name].info.run_id, name
    assert "lafs.cached_from_run_id" not in second_children["finetune"].data.tags


def test_mlflow_restart_mid_pipeline_kept_the_finished_runs(pipelines: Pipelines, elsewhere: MlflowClient) -> None:
    assert pipelines.state_after_restart == "RUNNING"  # the restart really was mid-pipeline
    before = pipelines.finished_before_restart
    names = {elsewhere.get_run(run_id).info.run_name for run_id in before}
    assert {"shards-kshot", "partfvit"} <= names
    for run_id, snapshot in before.items():
        assert RunSnapshot.of(elsewhere, elsewhere.get_run(run_id)) == snapshot, run_id


def test_servers_keep_their_state_in_postgresql(stack: Stack, pipelines: Pipelines) -> None:
    def connect(database: str) -> psycopg.Connection:
        password = stack.postgres.passwords[database]
        return psycopg.connect(host=HOST, port=stack.postgres.port, user=database, password=password, dbname=database)

    with connect(MLFLOW_DB.name) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM runs JOIN experiments USING (experiment_id) WHERE experiments.name = %s",
            (pipelines.experiment,),
        ).fetchone()
    assert count == 2 * (1 + len(STAGES))
    with connect(PREFECT_DB.name) as conn:
        rows = conn.execute(
            "SELECT id::text, state_type::text FROM flow_run WHERE id::text = ANY(%s)", (pipelines.flow_runs,)
        )
        assert dict(rows.fetchall()) == dict.fromkeys(pipelines.flow_runs, "COMPLETED")


def test_mlflow_server_answers_only_its_allowed_hosts(stack: Stack) -> None:
    url = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
    foreign = urllib.request.Request(url, headers={"Host": "elsewhere.example:5000"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(foreign, timeout=30)
    assert refused.value.code == 403
