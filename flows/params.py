"""Typed flow parameters: pydantic models, so the Prefect UI renders each deployment's parameters as a form."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LaunchParams(_Params):
    """How to start a distributed stage with torchrun (one node, or one node of a multi-node job)."""

    nnodes: int = Field(1, ge=1, description="number of nodes (machines) in the job")
    nproc_per_node: int = Field(1, ge=1, description="training processes on this node (GPUs, or CPU ranks)")
    node_rank: int = Field(0, ge=0, description="this node's rank (static rendezvous only)")
    rdzv_endpoint: str | None = Field(
        None, description="host:port of a c10d rendezvous shared by all nodes; unset = static master address"
    )
    rdzv_id: str = Field("lafs", description="job id shared by all nodes of one c10d rendezvous")
    master_addr: str = Field("127.0.0.1", description="static rendezvous master address")
    master_port: int = Field(0, ge=0, le=65535, description="static master port; 0 = pick a free port")
    max_restarts: int = Field(0, ge=0, description="torchrun worker-group restarts before giving up")
    timeout_s: float | None = Field(None, gt=0, description="kill the job after this many seconds")
    grace_s: float = Field(20.0, ge=0, description="seconds between SIGTERM and SIGKILL when stopping")

    @model_validator(mode="after")
    def _check_ranks(self) -> LaunchParams:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be < nnodes {self.nnodes}")
        return self


class StageParams(_Params):
    """What every training stage takes: a preset, an optional YAML file and ``key=value`` overrides."""

    preset: Literal["tiny", "small", "base"] = Field("tiny", description="model size preset")
    config_file: str | None = Field(None, description="YAML config file layered over the preset")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides, e.g. max_steps=50")
    out_dir: str = Field(description="run folder of this stage (checkpoints, exports, logs)")


class ShardsParams(_Params):
    """Write one WebDataset shard set (+ manifest) from a face source, one Prefect task per shard job."""

    source: str = Field(description="face data: image folder, .rec/.idx, .bin (data_tools readers)")
    out_dir: str = Field(description="output folder of the shards and manifest")
    preset: Literal["tiny", "small", "base"] = Field("tiny", description="sets the landmark count and image size")
    landmarks: str = Field("grid", description="landmark source: grid, cnn:PATH or mediapipe")
    align: Literal["lfw-deepfunneled", "none", "five-point"] | None = Field(None, description="None: preset's")
    shard_size: int | None = Field(None, ge=1, description="samples per shard (None = the config default)")
    fewshot: str | None = Field(None, description="keep only the images of this subset list (lafs data fewshot)")
    exclude_pairs: str | None = Field(None, description="drop every person named in this LFW pair file")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides of the shards config")
    name: str = Field("shards", description="run name in MLflow (several shard sets in one pipeline)")


class PartFViTParams(StageParams):
    """Train the Part fViT (landmark CNN + ViT) with CosFace on a labelled shard set."""

    shards: str = Field(description="folder of the labelled training shards")
    launch: LaunchParams = Field(default_factory=LaunchParams)


class PretrainParams(StageParams):
    """LAFS self-supervised pretraining over a shard set."""

    shards: str = Field(description="folder of the (unlabelled) training shards")
    launch: LaunchParams = Field(default_factory=lambda: LaunchParams(nproc_per_node=2))


class FinetuneParams(StageParams):
    """Few-shot CosFace fine-tuning from an SSL teacher and a Part fViT landmark CNN."""

    shards: str = Field(description="folder of the k-shot training shards")
    init_backbone: str | None = Field(None, description="SSL teacher checkpoint (None = from scratch)")
    init_landmarks: str | None = Field(None, description="Part fViT checkpoint or landmark_cnn.pt")
    registered_model: str = Field("lafs-face", description="MLflow registered model name of the result")
    launch: LaunchParams = Field(default_factory=LaunchParams)


class EvaluateParams(_Params):
    """10-fold verification of a checkpoint, or of a registered model by alias, on a pair set."""

    model: str = Field(description="checkpoint path, or models:/NAME@ALIAS of a registered model")
    pairs: str = Field("lfw-v1", description="lfw-v1, lfw-v2, att, yaleb, yale, an LFW pair file, .bin or folder")
    images: str | None = Field(None, description="image root of an LFW pair file")
    out_dir: str = Field(description="folder for the JSON report and ROC plot")
    batch_size: int = Field(128, ge=1)
    pairs_per_fold: int | None = Field(
        None, ge=2, description="evaluate only this many pairs per fold, half same, half different (smoke runs)"
    )


class PipelineParams(_Params):
    """The ``lfw-v1`` chain: shards -> Part fViT -> shards with its landmarks -> LAFS -> few-shot -> View 1."""

    work_dir: str | None = Field(None, description="root of every stage's outputs (None: <LAFS_HOME>/runs/pipeline)")
    preset: Literal["tiny", "small", "base"] = "tiny"
    images: str | None = Field(None, description="LFW deep-funneled image root (None: the shared datasets')")
    test_pairs: str | None = Field(
        None, description="View-1 test pairs, whose people leave the pool (None: the shared pairsDevTest.txt)"
    )
    k: int = Field(4, ge=1, description="images per identity of the labelled k-shot set")
    kshot_identities: int | None = Field(None, ge=2, description="keep only the first N k-shot identities")
    pool_images: int | None = Field(
        None, ge=1, description="pretraining pool: one image each of the first N pool people (None: whole pool)"
    )
    eval_pairs: str = Field("lfw-v1", description="pair set of the final evaluation")
    eval_pairs_per_fold: int | None = Field(None, ge=2, description="cut the evaluation to N pairs per fold")
    seed: int = 0
    partfvit_overrides: list[str] = Field(default_factory=list)
    pretrain_overrides: list[str] = Field(default_factory=list)
    finetune_overrides: list[str] = Field(default_factory=list)
    partfvit_launch: LaunchParams = Field(default_factory=LaunchParams)
    pretrain_launch: LaunchParams = Field(default_factory=lambda: LaunchParams(nproc_per_node=2))
    finetune_launch: LaunchParams = Field(default_factory=LaunchParams)
    experiment: str = Field("lafs-pipeline", description="MLflow experiment of the parent run")
    registered_model: str = Field("lafs-face", description="MLflow registered model name")
    alias: str = Field("candidate", description="registry alias set on this run's model version")
    champion_alias: str = Field("champion", description="alias moved to the best version by the eval metric")

    def resolved(self) -> PipelineParams:
        """The same parameters with the dataset and output defaults filled in from the environment."""
        from lafs_core.env import project_home, shared_datasets

        lfw = shared_datasets() / "lfw_deepfunneled"
        return self.model_copy(
            update={
                "work_dir": str(Path(self.work_dir or project_home() / "runs" / "pipeline").resolve()),
                "images": self.images or str(lfw / "lfw-deepfunneled"),
                "test_pairs": self.test_pairs or str(lfw / "pairsDevTest.txt"),
            }
        )
