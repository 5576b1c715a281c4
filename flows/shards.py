"""The shards stage as a flow: plan once, one mapped Prefect task per shard job, then the manifest.

Shard jobs are independent and idempotent (``data_tools.shards.precompute``), so several workers can share one
dataset and a retried job redoes only its own shard. Each job's cache key is the plan fingerprint (source listing,
config, landmark-model hash) plus the shard index: a rerun over the same inputs does no work at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows import lineage
from flows.caching import file_sha256, shard_set_hash
from flows.common import STOP_HOOKS, StageOutput, tracked_stage
from flows.params import ShardsParams
from lafs_core.config import load_config
from lafs_core.config.data import ShardsConfig
from lafs_core.tracking import flatten


class ShardPlan(BaseModel):
    """The plan's identity and size (the plan itself stays in the workers)."""

    fingerprint: str
    num_shards: int
    num_inputs: int


class ShardJob(BaseModel):
    """One written (or reused) shard."""

    name: str
    sha256: str
    reused: bool


def shards_config(params: ShardsParams) -> ShardsConfig:
    """The resolved shards config: preset <- overrides <- the explicit parameters."""
    return load_config(ShardsConfig, overrides=params.config_overrides(), preset=params.preset)


def sources(params: ShardsParams) -> list[str]:
    """Every face source of the shard set."""
    return [params.source, *params.also]


def write_shards(params: ShardsParams, shard_ids: list[int] | None = None) -> Any:
    """``precompute`` of the shard set (only ``shard_ids`` when given; the whole plan then finalizes)."""
    from data_tools.shards.precompute import precompute

    return precompute(
        sources(params),
        params.out_dir,
        shards_config(params),
        fewshot=params.fewshot,
        exclude_pairs=params.exclude_pairs,
        shard_ids=shard_ids,
    )


def _job_key(_context: Any, parameters: dict[str, Any]) -> str:
    params: ShardsParams = parameters["params"]
    return f"shard-{parameters['plan'].fingerprint}-{parameters['index']}-{Path(params.out_dir).resolve()}"


@task(retries=2, retry_delay_seconds=5)
def plan_task(params: ShardsParams) -> ShardPlan:
    """List the source and fix the shard layout (I/O on the source: retried)."""
    from data_tools.shards.precompute import plan_shards

    plan = plan_shards(
        sources(params), shards_config(params), fewshot=params.fewshot, exclude_pairs=params.exclude_pairs
    )
    return ShardPlan(fingerprint=plan.fingerprint, num_shards=plan.num_shards, num_inputs=len(plan.entries))


@task(retries=2, retry_delay_seconds=5, cache_key_fn=_job_key, persist_result=True)
def shard_job(params: ShardsParams, plan: ShardPlan, index: int) -> ShardJob:
    """Write (or verify and reuse) shard ``index``; decoding and the landmark model run inside."""
    from data_tools.shards.precompute import shard_name

    result = write_shards(params, [index])
    name = shard_name(index)
    return ShardJob(name=name, sha256=file_sha256(Path(result.out_dir) / name), reused=name in result.reused)


@task(retries=2, retry_delay_seconds=5)
def finalize_task(params: ShardsParams, jobs: list[ShardJob]) -> dict[str, Any]:
    """Write ``manifest.parquet`` and ``_info.json`` once every shard exists (every shard is re-verified)."""
    result = write_shards(params)
    if result.written:
        get_run_logger().warning("finalize rewrote shards %s (changed since their job ran)", result.written)
    info = result.info or {}
    recorded = {s["name"]: s["sha256"] for s in info.get("shards", [])}
    changed = [job.name for job in jobs if recorded.get(job.name) != job.sha256]
    if changed:
        get_run_logger().warning("shards changed after their job: %s", changed)
    return info


@flow(name="shards", **STOP_HOOKS)
def shards_flow(
    params: ShardsParams, parent_run_id: str | None = None, experiment: str = "lafs-pipeline"
) -> StageOutput:
    """Align, precompute landmarks and write WebDataset shards + manifest, tracked as one MLflow run."""
    cfg = shards_config(params)
    with tracked_stage("shards", parent_run_id, experiment, run_name=params.name) as run_id:
        logged = {**flatten(cfg.model_dump(mode="json")), "source": ", ".join(sources(params))}
        lineage.log_run_data(run_id, params=logged)
        plan = plan_task(params)
        jobs = shard_job.map(unmapped(params), unmapped(plan), list(range(plan.num_shards))).result()
        info = finalize_task(params, jobs)
        metrics = {
            "shards/num_shards": info["num_shards"],
            "shards/num_samples": info["num_samples"],
            "shards/num_skipped": info["num_skipped"],
            "shards/reused": sum(job.reused for job in jobs),
        }
        lineage.log_run_data(run_id, metrics=metrics)
        lineage.log_manifest_input(run_id, params.out_dir, context="output")
        return StageOutput(
            stage="shards",
            run_id=run_id,
            out_dir=str(Path(params.out_dir).resolve()),
            artifacts={"manifest": str(Path(params.out_dir).resolve() / "manifest.parquet")},
            hashes={"shards": shard_set_hash(params.out_dir)},
            metrics=metrics,
        )
