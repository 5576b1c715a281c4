"""The evaluation stage as a flow: 10-fold verification of a checkpoint or a registered model, in process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task

from flows import lineage
from flows.caching import CacheKey, cache_key_from_param, file_sha256
from flows.common import STOP_HOOKS, StageOutput, record_cache_hit, tracked_stage
from flows.params import EvaluateParams

CHECKPOINT_ARTIFACTS = ("checkpoints/best.pt", "checkpoints/last.pt")


class _ImageSubset:
    """The images of a pair set that a pair subset still uses (an ``ImageSource``)."""

    def __init__(self, images: Any, index: np.ndarray) -> None:
        self.images, self.index = images, index

    def __len__(self) -> int:
        return len(self.index)

    def load(self, i: int) -> np.ndarray | None:
        return self.images.load(int(self.index[i]))


def stratified_subset(pair_set: Any, per_fold: int) -> Any:
    """The first ``per_fold // 2`` same and different pairs of every fold, so 10-fold accuracy stays defined."""
    keep = np.sort(
        np.concatenate(
            [
                np.flatnonzero((pair_set.folds == fold) & (pair_set.issame == same))[: max(1, per_fold // 2)]
                for fold in np.unique(pair_set.folds)
                for same in (True, False)
            ]
        )
    )
    used, remapped = np.unique(pair_set.pairs[keep], return_inverse=True)
    return replace(
        pair_set,
        images=_ImageSubset(pair_set.images, used),
        pairs=remapped.reshape(-1, 2),
        issame=pair_set.issame[keep],
        folds=pair_set.folds[keep],
        fold_rule=f"{pair_set.fold_rule}, first {per_fold} pairs per fold",
    )


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
def verify_task(key: CacheKey, checkpoint: str, params: EvaluateParams, run_id: str) -> StageOutput:
    """Embed (flip-sum, L2), 10-fold accuracy, TAR@FAR and ROC; log metrics and the report to ``run_id``."""
    from lafs_core.eval.pairsets import load_pair_set
    from lafs_core.eval.probe import verify_pair_set
    from lafs_core.eval.report import mlflow_metrics, set_name, write_report
    from lafs_core.models.checkpoint import load_face_model

    pair_set = load_pair_set(params.pairs, params.images)
    if params.pairs_per_fold:
        pair_set = stratified_subset(pair_set, params.pairs_per_fold)
    model = load_face_model(checkpoint).eval()
    verified = verify_pair_set(model, pair_set, params.batch_size)
    report = verified.report(pair_set.name, model=checkpoint, source=pair_set.source, fold_rule=pair_set.fold_rule)
    json_path, png_path = write_report(
        report, Path(params.out_dir) / f"{set_name(pair_set.name)}.json", verified.result.fpr, verified.result.tpr
    )
    metrics = mlflow_metrics(report)
    lineage.log_run_data(run_id, metrics=metrics)
    mlc = lineage.client()
    for path in (json_path, png_path):
        mlc.log_artifact(run_id, str(path), artifact_path=f"eval/{set_name(pair_set.name)}")
    return StageOutput(
        stage="eval",
        run_id=run_id,
        out_dir=str(Path(params.out_dir).resolve()),
        artifacts={"report": str(json_path), "roc": str(png_path)},
        hashes={"report": file_sha256(json_path)},
        metrics=metrics,
    )


@flow(name="evaluate", **STOP_HOOKS)
def evaluate_flow(
    params: EvaluateParams, parent_run_id: str | None = None, experiment: str = "lafs-pipeline"
) -> StageOutput:
    """Verify a model on a pair set, tracked as one MLflow run (a child of the pipeline run when given)."""
    with tracked_stage("eval", parent_run_id, experiment) as run_id:
        checkpoint = resolve_model(params.model, params.out_dir)
        lineage.log_run_data(run_id, params={"model": params.model, "checkpoint": checkpoint, "pairs": params.pairs})
        settings = params.model_copy(update={"model": "", "out_dir": ""})
        key = CacheKey.of("eval", settings, params.out_dir, model=checkpoint)
        return record_cache_hit(run_id, verify_task(key, checkpoint, params, run_id))
