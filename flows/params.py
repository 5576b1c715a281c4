"""Typed flow parameters: pydantic models, so the Prefect UI renders each deployment's parameters as a form.

Every training stage's parameters also give the ``lafs`` command line that runs the stage (:meth:`command`), which
the flows launch under torchrun and the lfw-v1 experiment runs as a subprocess: one definition of each stage's call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Preset = Literal["tiny", "small", "base"]
Align = Literal["lfw-deepfunneled", "none", "five-point", "detect"]


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

    preset: Preset = Field("tiny", description="model size preset")
    config_file: str | None = Field(None, description="YAML config file layered over the preset")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides, e.g. max_steps=50")
    out_dir: str = Field(description="run folder of this stage (checkpoints, exports, logs)")
    shards: str = Field(description="folder of the training shards")

    def stage_overrides(self) -> list[str]:
        """The overrides the stage's config is resolved with: the user's, then the flow's inputs (which win)."""
        return [*self.overrides, f"data_dir={self.shards}", f"output_dir={self.out_dir}"]

    def arguments(self) -> list[str]:
        """Preset, config file and overrides as ``lafs <stage>`` arguments."""
        args = ["--preset", self.preset, *(["--config", self.config_file] if self.config_file else [])]
        return args + self.stage_overrides()


class ShardsParams(_Params):
    """Write one WebDataset shard set (+ manifest) from face sources, one Prefect task per shard job."""

    source: str = Field(description="face data: image folder, .rec/.idx, .bin, few-shot list (data_tools readers)")
    also: list[str] = Field(default_factory=list, description="more face sources written into the same shard set")
    out_dir: str = Field(description="output folder of the shards and manifest")
    preset: Preset = Field("tiny", description="sets the landmark count and image size")
    landmarks: str = Field("grid", description="landmark source: grid, cnn:PATH or mediapipe")
    align: Align | None = Field(None, description="None: preset's")
    shard_size: int | None = Field(None, ge=1, description="samples per shard (None = the config default)")
    max_inputs: int | None = Field(None, ge=1, description="keep a seeded sample of at most N inputs")
    fewshot: str | None = Field(None, description="keep only the images of this subset list (lafs data fewshot)")
    exclude_pairs: list[str] = Field(
        default_factory=list, description="drop every person named in these LFW pair files"
    )
    overrides: list[str] = Field(default_factory=list, description="key=value overrides of the shards config")
    name: str = Field("shards", description="run name in MLflow (several shard sets in one pipeline)")

    def config_overrides(self) -> list[str]:
        """The overrides of the shards config: the user's, then the explicit parameters (which win)."""
        given = {
            "landmarks": self.landmarks,
            "align": self.align,
            "shard_size": self.shard_size,
            "max_inputs": self.max_inputs,
        }
        return [*self.overrides, *(f"{key}={value}" for key, value in given.items() if value is not None)]

    def command(self) -> list[str]:
        """``lafs data shards`` arguments that write this shard set."""
        args = ["data", "shards", self.source, self.out_dir, "--preset", self.preset]
        args += [arg for extra in self.also for arg in ("--also", extra)]
        args += ["--fewshot", self.fewshot] if self.fewshot else []
        args += [arg for pairs in self.exclude_pairs for arg in ("--exclude-pairs", pairs)]
        return [*args, *self.config_overrides(), "--json"]


class PartFViTParams(StageParams):
    """Train the Part fViT (landmark CNN + ViT) with CosFace on a labelled shard set."""

    launch: LaunchParams = Field(default_factory=LaunchParams)

    def command(self) -> list[str]:
        """``lafs partfvit`` arguments."""
        return ["partfvit", *self.arguments(), "--json"]


class PretrainParams(StageParams):
    """LAFS self-supervised pretraining over a shard set."""

    launch: LaunchParams = Field(default_factory=lambda: LaunchParams(nproc_per_node=2))

    def command(self) -> list[str]:
        """``lafs pretrain`` arguments."""
        return ["pretrain", *self.arguments(), "--json"]


class FinetuneParams(StageParams):
    """Few-shot CosFace fine-tuning from an SSL teacher and a Part fViT landmark CNN."""

    init_backbone: str | None = Field(None, description="SSL teacher checkpoint (None = from scratch)")
    init_landmarks: str | None = Field(None, description="Part fViT checkpoint or landmark_cnn.pt")
    registered_model: str = Field("lafs-face", description="MLflow registered model name of the result")
    launch: LaunchParams = Field(default_factory=LaunchParams)

    def stage_overrides(self) -> list[str]:
        inits = {"init_backbone": self.init_backbone, "init_landmarks": self.init_landmarks}
        extra = [f"{key}={value}" for key, value in inits.items() if value]
        return [*super().stage_overrides(), f"registered_model={self.registered_model}", *extra]

    def command(self) -> list[str]:
        """``lafs finetune`` arguments."""
        return ["finetune", *self.arguments(), "--json"]


class EvalSetParams(_Params):
    """One evaluation set of a model, reported and logged on its own."""

    data: str = Field(
        description="lfw-v1, lfw-v2, att, yaleb, yale, an LFW pair file, an insightface .bin, a labelled folder "
        "(generated pairs) or an IJB-B/C folder (kind ijb)"
    )
    kind: Literal["pairs", "ijb"] = Field("pairs", description="10-fold pair verification, or IJB template TAR@FAR")
    name: str | None = Field(None, description="name in reports and metrics (default from the data)")
    images: str | None = Field(None, description="image root of an LFW pair file")
    align: Literal["auto", "lfw-deepfunneled", "none", "detect"] = Field(
        "auto", description="auto: the LFW crop for LFW pair files, none otherwise"
    )
    pairs_per_fold: int | None = Field(
        None, ge=2, description="evaluate only this many pairs per fold, half same, half different (smoke runs)"
    )


class EvaluateParams(_Params):
    """Evaluation of a checkpoint, or of a registered model by alias, on one evaluation set."""

    model: str = Field(description="checkpoint path, or models:/NAME@ALIAS of a registered model")
    eval_set: EvalSetParams = Field(default_factory=lambda: EvalSetParams(data="lfw-v1"))
    out_dir: str = Field(description="folder for the JSON report and ROC plot")
    batch_size: int = Field(128, ge=1)


class PipelineParams(_Params):
    """The pipeline on any data: labelled k-shot set -> landmark model -> unlabelled shards with its landmarks ->
    LAFS pretraining -> few-shot fine-tuning -> every evaluation set. ``lfw-v1`` is one named configuration of it
    (:data:`flows.chain.CONFIGURATIONS`)."""

    work_dir: str | None = Field(None, description="root of every stage's outputs (None: <LAFS_HOME>/runs/pipeline)")
    preset: Preset = "tiny"
    unlabelled: list[str] = Field(
        min_length=1, description="unlabelled face sources of pretraining (folders, .rec, .bin; lfw, yaleb, ...)"
    )
    labelled: str = Field(description="labelled face source of the landmark model and fine-tuning (att, a folder)")
    k: int | None = Field(None, ge=1, description="images per identity of the labelled k-shot set (None: all)")
    kshot_identities: int | None = Field(None, ge=2, description="keep only the first N k-shot identities")
    pool_images: int | None = Field(None, ge=1, description="pretrain on a seeded sample of N unlabelled images")
    pretrain_on: Literal["unlabelled", "labelled"] = Field(
        "unlabelled", description="pretraining images: the unlabelled sources, or the k-shot images (labels unused)"
    )
    exclude_pairs: str | None = Field(
        None, description="a pair file (or lfw-v1/lfw-v2) whose people are left out of every training set"
    )
    validation_pairs: str | None = Field(
        None,
        description="tuning pairs (a pair file, or lfw-v1-val): fine-tuning is verified on them (learning curve) and "
        "their people are left out of pretraining too",
    )
    align: Align = Field("none", description="alignment of the training images")
    landmarks: str = Field(
        "train",
        description="landmark model: train (Part fViT on the labelled set), grid, or cnn:CHECKPOINT "
        "(ours or an official file)",
    )
    eval_sets: list[EvalSetParams] = Field(min_length=1, description="evaluation sets, each reported separately")
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
    champion_alias: str = Field("champion", description="alias moved to the best version by the first eval metric")

    @model_validator(mode="after")
    def _check(self) -> PipelineParams:
        if self.landmarks not in ("train", "grid") and not self.landmarks.startswith("cnn:"):
            raise ValueError(f"landmarks must be train, grid or cnn:CHECKPOINT, not {self.landmarks!r}")
        return self

    def resolved(self) -> PipelineParams:
        """The same parameters with named datasets resolved (``lfw``, ``att``, ... under the shared datasets) and
        the default work folder filled in."""
        from data_tools.pairsets import named_pair_file, named_source
        from lafs_core.env import project_home

        work = Path(self.work_dir or project_home() / "runs" / "pipeline").resolve()
        return self.model_copy(
            update={
                "work_dir": str(work),
                "unlabelled": [str(named_source(s)) for s in self.unlabelled],
                "labelled": str(named_source(self.labelled)),
                "exclude_pairs": str(named_pair_file(self.exclude_pairs)) if self.exclude_pairs else None,
            }
        )
