"""The pipeline flow: the ``lfw-v1`` chain under one MLflow parent run, each stage a subflow and a child run.

shards (k-shot set, grid landmarks) -> Part fViT -> shards (pool, the Part fViT landmark CNN) -> LAFS pretraining
-> few-shot fine-tuning -> verification -> registry aliases.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows import lineage
from flows.common import STOP_HOOKS, StageOutput, tracked_stage
from flows.evaluate import evaluate_flow
from flows.params import (
    EvaluateParams,
    FinetuneParams,
    PartFViTParams,
    PipelineParams,
    PretrainParams,
    ShardsParams,
)
from flows.shards import shards_flow
from flows.training import finetune_flow, partfvit_flow, pretrain_flow

ALIGN = "lfw-deepfunneled"


class Subsets(BaseModel):
    """The few-shot list of the labelled set and, when the pool is cut down, the pool's list."""

    kshot: str
    pool: str | None


class PipelineResult(BaseModel):
    """Every stage's output, the parent run, and the registered model version with its aliases."""

    parent_run_id: str
    stages: dict[str, StageOutput]
    registered_model: str
    version: str
    aliases: list[str]


@task(retries=2, retry_delay_seconds=5)
def subsets_task(params: PipelineParams) -> Subsets:
    """Write the k-shot list (and the pool subset list) of the ``lfw-v1`` protocol under ``work_dir``."""
    from dataclasses import replace

    from data_tools.fewshot import select_fewshot

    out = Path(str(params.work_dir)) / "subsets"
    kshot = select_fewshot(str(params.images), params.k, params.seed, exclude_pairs=params.test_pairs)
    if params.kshot_identities:
        kshot = replace(kshot, entries=[e for e in kshot.entries if e.label < params.kshot_identities])
    kshot_path = kshot.write(out / f"kshot-k{params.k}.json")
    pool_path = None
    if params.pool_images:
        pool = select_fewshot(str(params.images), 1, params.seed, exclude_pairs=params.test_pairs)
        pool = replace(pool, entries=pool.entries[: params.pool_images])
        pool_path = pool.write(out / f"pool-{params.pool_images}.json")
    return Subsets(kshot=str(kshot_path), pool=str(pool_path) if pool_path else None)


@task(retries=2, retry_delay_seconds=5)
def register_task(params: PipelineParams, finetune: StageOutput, metric: str) -> tuple[str, list[str]]:
    """Alias this run's model version; move the champion alias to the best version by ``metric``.

    The champion is chosen by the metric the fine-tuning runs logged themselves (``lafs eval register``'s rule);
    when this run's fine-tuning logged no such metric the champion alias is left where it is.
    """
    from lafs_core.eval.registry import register_best

    version = lineage.register_alias(params.registered_model, finetune.run_id, params.alias)
    aliases = [params.alias]
    if metric not in finetune.metrics:
        get_run_logger().warning("fine-tuning logged no %s: the %s alias is not moved", metric, params.champion_alias)
        return version, aliases
    champion = register_best(params.registered_model, metric, alias=params.champion_alias)
    if champion.version == version:
        aliases.append(params.champion_alias)
    return version, aliases


# Bookkeeping that says nothing about a stage's result: left out of the summary table.
HIDDEN_PREFIXES = ("system/", "plan/", "data/", "shards/reused")
SCHEDULE_METRICS = {"lr", "wd", "epoch", "momentum", "teacher_temp", "step_time", "loss_cls_weight"}


def headline_metrics(metrics: dict[str, float], limit: int = 4) -> dict[str, float]:
    """Up to ``limit`` result metrics: accuracies first, then losses, then the rest by name."""
    keys = [k for k in metrics if not k.startswith(HIDDEN_PREFIXES) and k.rsplit("/", 1)[-1] not in SCHEDULE_METRICS]
    keys.sort(key=lambda k: (not k.endswith("/acc"), "loss" not in k, k))
    return {k: metrics[k] for k in keys[:limit]}


def summary_rows(stages: dict[str, StageOutput]) -> list[dict[str, str]]:
    """One row per stage: its run and its headline metrics (for the Prefect table and the CLI)."""
    rows = []
    for name, out in stages.items():
        text = ", ".join(f"{k}={v:.4g}" for k, v in headline_metrics(out.metrics).items())
        rows.append({"stage": name, "mlflow_run": out.run_id, "cached": str(out.cached), "metrics": text})
    return rows


@flow(name="lafs-pipeline", **STOP_HOOKS)
def pipeline_flow(params: PipelineParams) -> PipelineResult:
    """Run every stage in order under one MLflow parent run; register the fine-tuned model with aliases."""
    params = params.resolved()
    work = Path(str(params.work_dir))
    exp = params.experiment
    with tracked_stage("pipeline", None, exp) as parent:
        lineage.log_run_data(parent, params={k: v for k, v in params.model_dump().items() if not k.endswith("launch")})
        subsets = subsets_task(params)
        stages: dict[str, StageOutput] = {}
        common = {"preset": params.preset, "align": ALIGN}
        stages["shards-kshot"] = shards_flow(
            ShardsParams(source=subsets.kshot, out_dir=str(work / "shards" / "kshot"), name="shards-kshot", **common),
            parent,
            exp,
        )
        stages["partfvit"] = partfvit_flow(
            PartFViTParams(
                preset=params.preset,
                overrides=params.partfvit_overrides,
                out_dir=str(work / "partfvit"),
                shards=stages["shards-kshot"].out_dir,
                launch=params.partfvit_launch,
            ),
            parent,
            exp,
        )
        stages["shards-pool"] = shards_flow(
            ShardsParams(
                source=subsets.pool or str(params.images),
                exclude_pairs=None if subsets.pool else params.test_pairs,
                out_dir=str(work / "shards" / "pool"),
                landmarks=f"cnn:{stages['partfvit'].artifacts['landmark_cnn']}",
                name="shards-pool",
                **common,
            ),
            parent,
            exp,
        )
        stages["pretrain"] = pretrain_flow(
            PretrainParams(
                preset=params.preset,
                overrides=params.pretrain_overrides,
                out_dir=str(work / "pretrain"),
                shards=stages["shards-pool"].out_dir,
                launch=params.pretrain_launch,
            ),
            parent,
            exp,
        )
        stages["finetune"] = finetune_flow(
            FinetuneParams(
                preset=params.preset,
                overrides=params.finetune_overrides,
                out_dir=str(work / "finetune"),
                shards=stages["shards-kshot"].out_dir,
                init_backbone=stages["pretrain"].artifacts["teacher"],
                init_landmarks=stages["partfvit"].artifacts["checkpoint"],
                registered_model=params.registered_model,
                launch=params.finetune_launch,
            ),
            parent,
            exp,
        )
        stages["eval"] = evaluate_flow(
            EvaluateParams(
                model=stages["finetune"].artifacts["checkpoint"],
                pairs=params.eval_pairs,
                out_dir=str(work / "eval"),
                pairs_per_fold=params.eval_pairs_per_fold,
            ),
            parent,
            exp,
        )
        metric = next(k for k in stages["eval"].metrics if k.endswith("/acc"))
        version, aliases = register_task(params, stages["finetune"], metric)
        lineage.log_run_data(parent, metrics=stages["eval"].metrics)
        lineage.client().set_tag(parent, "lafs.model_version", f"{params.registered_model}/{version}")
        create_table_artifact(summary_rows(stages), key="lafs-pipeline-summary", description="stages of this run")
        return PipelineResult(
            parent_run_id=parent,
            stages=stages,
            registered_model=params.registered_model,
            version=version,
            aliases=aliases,
        )
