"""The evaluation stage as a flow: a checkpoint or a registered model scored on one evaluation set, in process.

The scoring itself is :func:`flows.chain.evaluate_checkpoint` (the one verification path of ``lafs_core.eval``),
shared with the lfw-v1 experiment; this flow adds the model lookup by registry alias, the cache and the MLflow run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows import lineage
from flows.caching import CacheKey, cache_key_from_param, file_sha256
from flows.chain import eval_set_name, evaluate_checkpoint
from flows.common import STOP_HOOKS, StageOutput, record_cache_hit, tracked_stage
from flows.params import EvaluateParams

CHECKPOINT_ARTIFACTS = ("checkpoints/last.pt", "checkpoints/best.pt")


@task(retries=2, retry_delay_seconds=5)
def resolve_model(model: str, out_dir: str) -> str:
    """A local checkpoint path: the path itself, or the checkpoint logged by the run behind ``models:/NAME@ALIAS``."""
    if not model.startswith("models:/"):
        return str(Path(model).resolve())
    import mlflow

    name, _, alias = model.removeprefix("models:/").partition("@")
    mlc = lineage.client()
    version = mlc.get_model_version_by_alias(name, alias) if alias else mlc.get_latest_versions(name)[0]
    listed = {a.path for a in mlc.list_artifacts(version.run_id, "checkpoints")}
    chosen = next((p for p in CHECKPOINT_ARTIFACTS if p in listed), None)
    if chosen is None:
        raise FileNotFoundError(f"{model}: run {version.run_id} logged no checkpoint under checkpoints/")
    dst = Path(out_dir) / "model" / f"{name}-v{version.version}"
    return mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=chosen, dst_path=str(dst))


@task(cache_key_fn=cache_key_from_param, persist_result=True)
def evaluate_task(key: CacheKey, checkpoint: str, params: EvaluateParams, run_id: str) -> StageOutput:
    """Score the checkpoint on the evaluation set; log the metrics and the report files to ``run_id``."""
    metrics, files = evaluate_checkpoint(checkpoint, params.eval_set, params.out_dir, params.batch_size)
    lineage.log_run_data(run_id, metrics=metrics)
    folder = f"eval/{eval_set_name(params.eval_set)}"
    for path in files:
        lineage.client().log_artifact(run_id, str(path), artifact_path=folder)
    return StageOutput(
        stage="eval",
        run_id=run_id,
        out_dir=str(Path(params.out_dir).resolve()),
        artifacts={"report": str(files[0]), **({"roc": str(files[1])} if len(files) > 1 else {})},
        hashes={"report": file_sha256(files[0])},
        metrics=metrics,
    )


@flow(name="evaluate", **STOP_HOOKS)
def evaluate_flow(
    params: EvaluateParams, parent_run_id: str | None = None, experiment: str = "lafs-pipeline"
) -> StageOutput:
    """Score a model on an evaluation set, tracked as one MLflow run (a child of the pipeline run when given)."""
    name = f"eval-{eval_set_name(params.eval_set)}"
    with tracked_stage("eval", parent_run_id, experiment, run_name=name) as run_id:
        checkpoint = resolve_model(params.model, params.out_dir)
        logged = {"model": params.model, "checkpoint": checkpoint, "eval_set": params.eval_set.data}
        lineage.log_run_data(run_id, params=logged)
        settings = params.model_copy(update={"model": "", "out_dir": ""})
        key = CacheKey.of("eval", settings, params.out_dir, model=checkpoint)
        return record_cache_hit(run_id, evaluate_task(key, checkpoint, params, run_id))
