"""Configuration of the supervised stages: Part fViT landmark-CNN training and CosFace fine-tuning.

Defaults follow method.md 8 (fine-tuning) and 2.2/6 (Part fViT): AdamW, weight decay 0.1 with 0.05 for the landmark
CNN, warm-up 5 epochs then cosine to 1e-6 per optimiser step, CosFace s=64 m=0.4, 34 epochs, an effective batch of
1,200 (2 ranks x 200 x 3 accumulation steps). The batch is given as a global batch per optimiser step plus a
per-rank micro-batch; the accumulation count follows from the world size, so the schedule (and a resumed run on a
different number of ranks) does not depend on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lafs_core.config.loader import StageConfig
from lafs_core.errors import ConfigError


class AugmentConfig(BaseModel):
    """The supervised augmentation chain (method.md 8.3), in order: flip, RandAugment, crop, jitter, erasing, mixup."""

    model_config = ConfigDict(extra="forbid")

    flip: float = Field(0.5, ge=0, le=1, description="horizontal flip probability")
    rand_augment: str | None = Field(
        "rand-m2-mstd0.5-inc1", description="timm RandAugment config string (Solarize ops removed); null disables"
    )
    crop_scale: tuple[float, float] | None = Field(
        (0.9, 1.0), description="RandomResizedCrop area scale; null disables"
    )
    color_jitter: float = Field(0.1, ge=0, description="brightness/contrast/saturation/hue jitter; 0 disables")
    erasing_prob: float = Field(0.5, ge=0, le=1)
    erasing_scale: tuple[float, float] = (0.02, 0.1)
    mixup_prob: float = Field(0.1, ge=0, le=1, description="batch mixup probability (timm Mixup, no cutmix)")
    mixup_alpha: float = Field(0.2, gt=0, description="mixup Beta(alpha, alpha)")

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"augment.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.erasing_scale[0] <= self.erasing_scale[1] < 1:
            raise ConfigError(f"augment.erasing_scale must satisfy 0 < low <= high < 1, got {self.erasing_scale}")
        return self


class SupervisedConfig(StageConfig):
    """Fields shared by both supervised stages."""

    data_dir: Path | None = Field(None, description="labelled shard folder (manifest.parquet + _info.json + *.tar)")
    output_dir: Path = Field(Path("runs/supervised"), description="run folder: checkpoints, config, artifacts")

    epochs: int = Field(34, ge=1)
    global_batch_size: int = Field(1200, ge=1, description="samples per optimiser step over all ranks")
    micro_batch_size: int = Field(
        200, ge=1, description="samples per rank per forward; accumulation = global / (world x micro)"
    )
    iters_per_epoch: int | None = Field(
        None, ge=1, description="optimiser steps per epoch; default manifest samples // global batch (at least 1)"
    )
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps (schedule unchanged)")
    max_nonfinite_steps: int = Field(
        5, ge=1, description="updates skipped for a non-finite gradient in a row before the run stops"
    )

    lr: float = Field(2.29e-3, ge=0, description="peak learning rate (official: 2.29e-3 at an effective batch 1200)")
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(5, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    landmark_weight_decay: float = Field(0.05, ge=0, description="weight decay of the landmark CNN's matrices")

    margin: Literal["cosface", "arcface"] = "cosface"
    margin_s: float | None = Field(None, gt=0, description="logit scale; default the head's (64)")
    margin_m: float | None = Field(None, ge=0, description="margin; default the head's (CosFace 0.4, ArcFace 0.5)")
    partial_fc: bool = Field(False, description="shard the class centres over ranks (integer labels: no mixup)")
    partial_fc_sample_rate: float = Field(1.0, gt=0, le=1)

    augment: AugmentConfig = AugmentConfig()
    amp: Literal["auto", "bf16", "none"] = Field("auto", description="'auto': bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = Field(
        False, description="torch.compile the transformer blocks (first steps pay the compilation; see benchmarks)"
    )
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    num_workers: int = Field(2, ge=0, description="loader worker processes per rank")
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads per rank; null: OMP_NUM_THREADS if set, else cores // (local ranks x "
        "(1 + num_workers)), so ranks and loader workers never oversubscribe the CPU",
    )

    val_pairs: list[str] = Field(
        default_factory=lambda: ["lfw-v1-val"],
        description="pair sets verified during training (eval pair-set names; the first picks best.pt): tuning pairs, "
        "never the test pairs you report (lfw-v1-val: protocols.md 1.5); [] for none",
    )
    val_every: int = Field(500, ge=0, description="optimiser steps between verifications (and at the end); 0: end only")
    val_batch_size: int = Field(128, ge=1)
    val_metric: str = Field(
        "", description="metric that picks the best checkpoint; default '<first pair set name>/acc'"
    )
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1, description="optimiser steps between periodic checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    resume: str | None = Field(None, description="'auto' (latest in output_dir), a checkpoint path, or none")
    log_model: bool = Field(True, description="log the final model to MLflow (mlflow.pytorch) and register it")
    registered_model: str | None = Field(None, description="registry name; default 'lafs-<stage>'")

    @model_validator(mode="after")
    def _check_supervised(self) -> SupervisedConfig:
        if self.partial_fc and self.augment.mixup_prob > 0:
            raise ConfigError("partial_fc takes integer labels: set augment.mixup_prob=0 to use it")
        return self

    def accumulation(self, world_size: int) -> int:
        """Micro-steps per optimiser step on ``world_size`` ranks; the global batch must split exactly."""
        per_step = world_size * self.micro_batch_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size {self.global_batch_size} is not a multiple of world size {world_size} x "
                f"micro_batch_size {self.micro_batch_size}"
            )
        return self.global_batch_size // per_step


class PartFViTConfig(SupervisedConfig):
    """`lafs partfvit`: landmark CNN + ViT trained end to end with CosFace, no landmark labels (method.md 2.2, 6)."""

    section: ClassVar[str] = "partfvit"

    output_dir: Path = Field(Path("runs/partfvit"), description="run folder: checkpoints, landmark CNN, overlays")
    overlay_images: int = Field(8, ge=1, description="images in the before/after landmark overlay PNG")


class FinetuneConfig(SupervisedConfig):
    """`lafs finetune`: SSL-initialised ViT + Part fViT landmark CNN, CosFace with the landmark regulariser."""

    section: ClassVar[str] = "finetune"

    output_dir: Path = Field(Path("runs/finetune"), description="run folder: checkpoints, config, artifacts")
    init_backbone: Path | None = Field(
        None, description="SSL teacher: our pretraining export or the official checkpoint ('teacher'); null: scratch"
    )
    init_landmarks: Path | None = Field(
        None,
        description="Part fViT checkpoint (or landmark CNN artifact) whose landmark CNN starts fine-tuning; null: no "
        "landmark CNN, the model samples the regular layout of R landmarks (the grid) and says so",
    )
    freeze_landmark_cnn: bool = Field(
        False,
        description="keep the landmark CNN fixed (eval mode, no gradient; no regulariser needed): the official code "
        "trains it, but on CPU its depthwise convolutions dominate the step (tiny: 0.61 -> 0.21 s per batch of 32)",
    )
    landmark_reg: bool = Field(True, description="MSE of normalised landmarks against a frozen copy (method.md 8.4)")
    landmark_reg_boundaries: list[int] = Field(default_factory=lambda: [8, 14, 21, 28])
    landmark_reg_values: list[float] = Field(default_factory=lambda: [1000.0, 100.0, 1.0, 0.11, 0.0])

    @model_validator(mode="after")
    def _check_finetune(self) -> FinetuneConfig:
        if len(self.landmark_reg_values) != len(self.landmark_reg_boundaries) + 1:
            raise ConfigError("finetune.landmark_reg_values needs one more entry than landmark_reg_boundaries")
        return self
