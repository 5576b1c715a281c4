"""The pipeline flow: :class:`flows.chain.Chain` under one MLflow parent run, each stage a subflow and a child run.

subsets (k-shot list) -> shards of the labelled set -> landmark model (Part fViT, unless one is given) -> shards of
the pretraining images with its landmarks -> LAFS pretraining -> few-shot fine-tuning -> every evaluation set ->
registry aliases. ``lfw-v1`` is one named configuration of it (``flows.chain.CONFIGURATIONS``).
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows import lineage
from flows.chain import Chain, Subsets, eval_set_name
from flows.common import STOP_HOOKS, StageOutput, tracked_stage
from flows.evaluate import evaluate_flow
from flows.params import EvaluateParams, PipelineParams
from flows.shards import shards_flow
from flows.training import finetune_flow, partfvit_flow, pretrain_flow


class PipelineResult(BaseModel):
    """Every stage's output, the parent run, and the registered model version with its aliases."""

    parent_run_id: str
    stages: dict[str, StageOutput]
    evaluations: dict[str, dict[str, float]]
    registered_model: str
    version: str
    aliases: list[str]


@task(retries=2, retry_delay_seconds=5)
def subsets_task(chain: Chain) -> Subsets:
    """Write the k-shot list of the labelled source under ``work_dir``."""
    return chain.write_subsets()


@task(retries=2, retry_delay_seconds=5)
def register_task(params: PipelineParams, finetune: StageOutput, metric: str) -> tuple[str, list[str]]:
    """Alias this run's model version; move the champion alias to the best version by ``metric``.

    The champion is chosen by the metric the fine-tuning runs carry (the pipeline logs the first evaluation set's
    figures on the fine-tuning run, the rule of ``lafs eval register``).
    """
    from lafs_core.eval.registry import register_best

    version = lineage.register_alias(params.registered_model, finetune.run_id, params.alias)
    aliases = [params.alias]
    if metric not in lineage.client().get_run(finetune.run_id).data.metrics:
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


def train_stages(chain: Chain, parent: str) -> dict[str, StageOutput]:
    """Subsets, the two shard sets, the landmark model, pretraining and fine-tuning, in order."""
    exp = chain.params.experiment
    subsets = subsets_task(chain)
    stages = {"shards-kshot": shards_flow(chain.kshot_shards(subsets), parent, exp)}
    kshot = stages["shards-kshot"].out_dir
    if (landmark_stage := chain.landmark_stage(kshot)) is not None:
        stages["partfvit"] = partfvit_flow(landmark_stage, parent, exp)
    landmark_cnn = chain.landmark_model(stages["partfvit"].out_dir if "partfvit" in stages else None)
    stages["shards-pool"] = shards_flow(chain.pool_shards(subsets, landmark_cnn), parent, exp)
    stages["pretrain"] = pretrain_flow(chain.pretrain(stages["shards-pool"].out_dir), parent, exp)
    teacher = stages["pretrain"].artifacts["teacher"]
    stages["finetune"] = finetune_flow(chain.finetune(kshot, teacher, landmark_cnn), parent, exp)
    return stages


def evaluate_stages(chain: Chain, finetune: StageOutput, parent: str) -> dict[str, StageOutput]:
    """Every evaluation set, each its own subflow and child run; their figures also go to the parent run and to the
    fine-tuning run (the model version they describe)."""
    checkpoint = chain.final_checkpoint(finetune.out_dir)
    evaluations = {}
    for spec in chain.params.eval_sets:
        name = eval_set_name(spec)
        params = EvaluateParams(model=checkpoint, eval_set=spec, out_dir=str(chain.work / "eval" / name))
        evaluations[name] = evaluate_flow(params, parent, chain.params.experiment)
        for run_id in (parent, finetune.run_id):
            lineage.log_run_data(run_id, metrics=evaluations[name].metrics)
    return evaluations


@flow(name="lafs-pipeline", **STOP_HOOKS)
def pipeline_flow(params: PipelineParams) -> PipelineResult:
    """Run every stage in order under one MLflow parent run; register the fine-tuned model with aliases."""
    chain = Chain.of(params)
    params = chain.params
    with tracked_stage("pipeline", None, params.experiment) as parent:
        lineage.log_run_data(parent, params={k: v for k, v in params.model_dump().items() if not k.endswith("launch")})
        stages = train_stages(chain, parent)
        evaluations = evaluate_stages(chain, stages["finetune"], parent)
        first = next(iter(evaluations.values()))
        metric = next(k for k in first.metrics if k.endswith(("/acc", "/tar_at_far_1e-4")))
        version, aliases = register_task(params, stages["finetune"], metric)
        lineage.client().set_tag(parent, "lafs.model_version", f"{params.registered_model}/{version}")
        all_stages = {**stages, **{f"eval-{name}": out for name, out in evaluations.items()}}
        create_table_artifact(summary_rows(all_stages), key="lafs-pipeline-summary", description="stages of this run")
        return PipelineResult(
            parent_run_id=parent,
            stages=all_stages,
            evaluations={name: out.metrics for name, out in evaluations.items()},
            registered_model=params.registered_model,
            version=version,
            aliases=aliases,
        )
