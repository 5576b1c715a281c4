"""The distributed stages as flows: Part fViT, LAFS pretraining and few-shot fine-tuning under torchrun.

Each flow resolves and validates the stage config here (so a bad override fails before any process starts),
opens the stage's MLflow child run, then runs one cached task that launches torchrun and hashes the outputs.
The task's cache key is the content of its inputs (shard set, checkpoints) plus the config hash.
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
from flows.params import FinetuneParams, LaunchParams, PartFViTParams, PretrainParams, StageParams
from lafs_core.config import StageConfig, load_config


class StageLaunch(BaseModel):
    """One torchrun invocation of a stage and the files it must leave in its run folder."""

    stage: str
    entry: list[str]
    no_python: bool
    out_dir: str
    outputs: dict[str, list[str]]


def lafs_program() -> str:
    """The ``lafs`` console script of this environment."""
    beside = Path(sys.executable).with_name("lafs")
    found = str(beside) if beside.is_file() else shutil.which("lafs")
    if not found:
        raise FileNotFoundError("the `lafs` console script is not installed in this environment")
    return found


def stage_arguments(params: StageParams, extra: list[str]) -> list[str]:
    """CLI arguments shared by the stage entry points: preset, config file, then overrides (extra last wins)."""
    args = ["--preset", params.preset]
    if params.config_file:
        args += ["--config", params.config_file]
    return args + list(params.overrides) + extra


def resolve(cls: type[StageConfig], params: StageParams, extra: list[str]) -> StageConfig:
    """The stage's resolved config, exactly as its entry point will resolve it."""
    return load_config(cls, params.config_file, [*params.overrides, *extra], params.preset)


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
    cmd = torchrun_command(launch, spec.entry, no_python=spec.no_python)
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


@flow(name="partfvit", **STOP_HOOKS)
def partfvit_flow(
    params: PartFViTParams, parent_run_id: str | None = None, experiment: str = "lafs-pipeline"
) -> StageOutput:
    """Train the Part fViT end to end; its landmark CNN becomes the landmark model of the next shards."""
    from lafs_core.config.finetune import PartFViTConfig

    extra = [f"data_dir={params.shards}", f"output_dir={params.out_dir}"]
    cfg = resolve(PartFViTConfig, params, extra)
    spec = StageLaunch(
        stage="partfvit",
        entry=[lafs_program(), "partfvit", *stage_arguments(params, extra)],
        no_python=True,
        out_dir=str(cfg.output_dir),
        outputs={"landmark_cnn": ["landmark_cnn.pt"], "checkpoint": ["best.pt", "last.pt"]},
    )
    key = CacheKey.of("partfvit", cfg, cfg.output_dir, shards=params.shards)
    return run_stage(spec, key, params.launch, parent_run_id, experiment, params.shards)


@flow(name="pretrain", **STOP_HOOKS)
def pretrain_flow(
    params: PretrainParams, parent_run_id: str | None = None, experiment: str = "lafs-pipeline"
) -> StageOutput:
    """LAFS self-supervised pretraining (torchrun DDP); exports the teacher for fine-tuning."""
    from lafs_core.config.pretrain import PretrainConfig

    extra = [f"data_dir={params.shards}", f"output_dir={params.out_dir}"]
    cfg = resolve(PretrainConfig, params, extra)
    spec = StageLaunch(
        stage="pretrain",
        entry=["-m", "lafs_core.train.pretrain", *stage_arguments(params, extra)],
        no_python=False,
        out_dir=str(cfg.output_dir),
        outputs={"teacher": ["teacher.pt"]},
    )
    key = CacheKey.of("pretrain", cfg, cfg.output_dir, shards=params.shards)
    return run_stage(spec, key, params.launch, parent_run_id, experiment, params.shards)


@flow(name="finetune", **STOP_HOOKS)
def finetune_flow(
    params: FinetuneParams, parent_run_id: str | None = None, experiment: str = "lafs-pipeline"
) -> StageOutput:
    """Few-shot CosFace fine-tuning from the SSL teacher and the Part fViT landmark CNN; registers the model."""
    from lafs_core.config.finetune import FinetuneConfig

    extra = [f"data_dir={params.shards}", f"output_dir={params.out_dir}", f"registered_model={params.registered_model}"]
    if params.init_backbone:
        extra.append(f"init_backbone={params.init_backbone}")
    if params.init_landmarks:
        extra.append(f"init_landmarks={params.init_landmarks}")
    cfg = resolve(FinetuneConfig, params, extra)
    spec = StageLaunch(
        stage="finetune",
        entry=[lafs_program(), "finetune", *stage_arguments(params, extra)],
        no_python=True,
        out_dir=str(cfg.output_dir),
        outputs={"checkpoint": ["best.pt", "last.pt"]},
    )
    inputs = {"shards": params.shards, "init": params.init_backbone, "landmarks": params.init_landmarks}
    key = CacheKey.of("finetune", cfg, cfg.output_dir, **inputs)
    return run_stage(spec, key, params.launch, parent_run_id, experiment, params.shards)
