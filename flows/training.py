"""The distributed stages as flows: Part fViT, LAFS pretraining and few-shot fine-tuning under torchrun.

Each flow resolves and validates the stage config here (so a bad override fails before any process starts),
opens the stage's MLflow child run, then runs one cached task that launches torchrun and hashes the outputs.
The task's cache key is the content of its inputs (shard set, checkpoints) plus the config hash. Every stage runs as
``lafs <stage>`` on every rank (``--no-python``), the command its parameters give (:mod:`flows.params`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from prefect import flow, task
from pydantic import BaseModel

from flows import lineage
from flows.caching import CacheKey, cache_key_from_param, file_sha256
from flows.common import STOP_HOOKS, StageOutput, record_cache_hit, tracked_stage
from flows.launcher import run_process_group, torchrun_command
from flows.params import FinetuneParams, LaunchParams, PartFViTParams, PretrainParams
from lafs_core.config import StageConfig, load_config


class StageLaunch(BaseModel):
    """One torchrun invocation of a stage (``lafs <stage> ...`` on every rank) and the files it must leave."""

    stage: str
    command: list[str]
    out_dir: str
    outputs: dict[str, list[str]]


def lafs_program() -> str:
    """The ``lafs`` console script of this environment."""
    beside = Path(sys.executable).with_name("lafs")
    found = str(beside) if beside.is_file() else shutil.which("lafs")
    if not found:
        raise FileNotFoundError("the `lafs` console script is not installed in this environment")
    return found


def _first_existing(out_dir: Path, names: list[str]) -> Path:
    for name in names:
        if (out_dir / name).is_file():
            return out_dir / name
    raise FileNotFoundError(f"{out_dir}: the stage left none of {names}")


@task(name="train-stage", cache_key_fn=cache_key_from_param, persist_result=True, retries=0)
def train_task(key: CacheKey, spec: StageLaunch, launch: LaunchParams, env: dict[str, str]) -> StageOutput:
    """Launch the stage under torchrun, then return its output files and their sha256 (never tensors)."""
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = torchrun_command(launch, [lafs_program(), *spec.command], no_python=True)
    run_process_group(
        cmd, env=env, log_file=str(out_dir / "torchrun.log"), timeout_s=launch.timeout_s, grace_s=launch.grace_s
    )
    artifacts = {name: str(_first_existing(out_dir, names)) for name, names in spec.outputs.items()}
    return StageOutput(
        stage=spec.stage,
        run_id=env["MLFLOW_RUN_ID"],
        out_dir=str(out_dir),
        artifacts=artifacts,
        hashes={name: file_sha256(path) for name, path in artifacts.items()},
    )


def _outputs_intact(output: StageOutput) -> bool:
    return all(Path(p).is_file() and file_sha256(p) == output.hashes.get(n) for n, p in output.artifacts.items())


def run_stage(
    spec: StageLaunch, key: CacheKey, launch: LaunchParams, parent_run_id: str | None, experiment: str, shards: str
) -> StageOutput:
    """Open the stage's MLflow run, log its input manifest, launch (or reuse a cached result), collect metrics."""
    with tracked_stage(spec.stage, parent_run_id, experiment) as run_id:
        lineage.log_manifest_input(run_id, shards, context="training")
        env = lineage.stage_env(run_id, parent_run_id)
        output = train_task(key, spec, launch, env)
        if not _outputs_intact(output):
            output = train_task.with_options(refresh_cache=True)(key, spec, launch, env)
        metrics = lineage.client().get_run(output.run_id).data.metrics
        output = output.model_copy(update={"metrics": dict(metrics)})
        return record_cache_hit(run_id, output)


def launch_stage(
    params: PartFViTParams | PretrainParams | FinetuneParams,
    cls: type[StageConfig],
    stage: str,
    outputs: dict[str, list[str]],
    parent_run_id: str | None,
    experiment: str,
    **inputs: str | None,
) -> StageOutput:
    """Resolve the stage's config here (a bad override fails before any process starts), key the cache on it and
    on the contents of ``inputs``, and run the stage's ``lafs`` command under torchrun."""
    cfg = load_config(cls, params.config_file, params.stage_overrides(), params.preset)
    spec = StageLaunch(stage=stage, command=params.command(), out_dir=str(cfg.output_dir), outputs=outputs)
    key = CacheKey.of(stage, cfg, cfg.output_dir, shards=params.shards, **inputs)
    return run_stage(spec, key, params.launch, parent_run_id, experiment, params.shards)


@flow(name="partfvit", **STOP_HOOKS)
def partfvit_flow(
    params: PartFViTParams, parent_run_id: str | None = None, experiment: str = "lafs-pipeline"
) -> StageOutput:
    """Train the Part fViT end to end; its landmark CNN becomes the landmark model of the next shards."""
    from lafs_core.config.finetune import PartFViTConfig

    outputs = {"landmark_cnn": ["landmark_cnn.pt"], "checkpoint": ["last.pt"]}
    return launch_stage(params, PartFViTConfig, "partfvit", outputs, parent_run_id, experiment)


@flow(name="pretrain", **STOP_HOOKS)
def pretrain_flow(
    params: PretrainParams, parent_run_id: str | None = None, experiment: str = "lafs-pipeline"
) -> StageOutput:
    """LAFS self-supervised pretraining (torchrun DDP); exports the teacher for fine-tuning."""
    from lafs_core.config.pretrain import PretrainConfig

    return launch_stage(params, PretrainConfig, "pretrain", {"teacher": ["teacher.pt"]}, parent_run_id, experiment)


@flow(name="finetune", **STOP_HOOKS)
def finetune_flow(
    params: FinetuneParams, parent_run_id: str | None = None, experiment: str = "lafs-pipeline"
) -> StageOutput:
    """Few-shot CosFace fine-tuning from the SSL teacher and the Part fViT landmark CNN; registers the model."""
    from lafs_core.config.finetune import FinetuneConfig

    inputs = {"init": params.init_backbone, "landmarks": params.init_landmarks}
    outputs = {"checkpoint": ["last.pt"]}
    return launch_stage(params, FinetuneConfig, "finetune", outputs, parent_run_id, experiment, **inputs)
