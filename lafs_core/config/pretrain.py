"""Configuration of LAFS self-supervised pretraining (`lafs pretrain`, method.md section 7).

Defaults are the official recipe (method.md 7.6/7.9) except where section 14 recommends a fix; those fixes are
flags (``teacher_mode``, ``subset_replacement``, ``sigma``) so the official behaviour stays one override away.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from lafs_core.config.loader import StageConfig
from lafs_core.errors import ConfigError


class PretrainConfig(StageConfig):
    """Everything a pretraining run needs; the resolved config is logged and stored in every checkpoint."""

    section: ClassVar[str] = "pretrain"

    data_dir: Path | None = Field(None, description="shard folder (manifest.parquet + _info.json + *.tar)")
    output_dir: Path = Field(Path("runs/pretrain"), description="run folder: checkpoints, config, exported teacher")
    method: Literal["lafs", "dino-grid"] = Field(
        "lafs", description="'lafs': landmark tokens (method.md 7); 'dino-grid': regular-grid fViT + DINO multi-crop"
    )

    epochs: int = Field(41, ge=1)
    global_batch_size: int = Field(
        164, ge=1, description="images per step over all ranks; each rank takes global/world (must divide)"
    )
    iters_per_epoch: int | None = Field(
        None, ge=1, description="fixed 'epoch' length; default ceil(manifest samples / global batch)"
    )
    max_steps: int | None = Field(None, ge=1, description="stop after this many global steps (schedules unchanged)")

    base_lr: float = Field(5e-4, ge=0, description="peak lr = base_lr * global_batch_size / 256")
    min_lr: float = 1e-6
    warmup_epochs: float = Field(10, ge=0)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = Field(0.996, ge=0, le=1)
    momentum_teacher_end: float = Field(1.0, ge=0, le=1)
    warmup_teacher_temp: float = Field(0.07, gt=0, description="teacher temperature at step 0 (official 0.07)")
    teacher_temp: float = Field(0.04, gt=0, description="teacher temperature after the ramp (official 0.04)")
    warmup_teacher_temp_epochs: int = Field(30, ge=0, description="epochs of the linear teacher-temperature ramp")
    teacher_temp_per_epoch: bool = Field(
        True, description="index the teacher temperature per epoch (official) instead of per iteration"
    )
    student_temp: float = Field(0.1, gt=0)
    center_momentum: float = Field(0.9, ge=0, le=1)
    teacher_centering: Literal["ema", "sinkhorn"] = Field(
        "ema",
        description="'ema': DINO's EMA centre (official); 'sinkhorn': Sinkhorn-Knopp targets (DINOv2), small batches",
    )
    sinkhorn_iterations: int = Field(3, ge=1, description="Sinkhorn-Knopp iterations (teacher_centering=sinkhorn)")
    koleo_weight: float = Field(
        0.0, ge=0, description="KoLeo regulariser weight on the student's global-view embeddings (DINOv2: 0.1); 0 off"
    )
    clip_grad: float = Field(3.0, ge=0, description="per-tensor L2 clip (DINO style); 0 disables")
    max_nonfinite_steps: int = Field(
        5, ge=1, description="updates skipped for a non-finite gradient in a row before the run stops"
    )
    freeze_last_layer: int = Field(1, ge=0, description="epochs during which the head's last layer gets no update")

    global_views: int = Field(2, ge=1, le=2, description="teacher views (DINO/LAFS: 2)")
    local_views: int = Field(8, ge=0)
    local_landmarks: int | None = Field(None, ge=1, description="tokens per local view; default model.local_landmarks")
    subset_replacement: bool = Field(True, description="draw local subsets with replacement (official) or without")
    sigma: float = Field(5.0, ge=0, description="landmark perturbation: Gaussian std in pixels per coordinate")
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = Field(
        (0.4, 1.0), description="LAFS locals are full-size crops (official); dino-grid uses dino_local_crops_scale"
    )
    dino_local_crops_scale: tuple[float, float] = (0.05, 0.4)
    color_jitter_p: float = Field(0.8, ge=0, le=1, description="probability of colour jitter per view (DINO: 0.8)")
    color_jitter_strength: float = Field(
        1.0,
        ge=0,
        le=2.5,
        description="factor on the jitter strengths (brightness .4, contrast .4, saturation .2, hue .1)",
    )
    grayscale_p: float = Field(0.2, ge=0, le=1, description="probability of greyscale per view (DINO: 0.2)")
    dino_local_size: int = Field(48, ge=8, description="dino-grid local crop side in pixels (48 -> 6x6 tokens)")
    landmarks: Literal["precomputed", "online"] = Field(
        "precomputed", description="shard landmarks through the view affines, or the landmark CNN on every view"
    )
    landmark_checkpoint: Path | None = Field(None, description="face-model checkpoint whose landmark CNN runs online")

    teacher_mode: Literal["eval", "train"] = Field(
        "eval", description="'eval': deterministic teacher (DINO); 'train': dropout/drop-path on (official)"
    )
    amp: Literal["auto", "bf16", "none"] = Field("auto", description="'auto': bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = Field(
        False, description="torch.compile the transformer blocks (first steps pay the compilation; see benchmarks)"
    )
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    num_workers: int = Field(2, ge=0, description="loader worker processes per rank")

    log_every: int = Field(10, ge=1, description="steps between metric logs")
    probe_every: int = Field(200, ge=0, description="steps between live verification probes; 0 disables")
    probe_pairs: int = Field(200, ge=10, description="pairs (half same, half different) in the probe set")
    probe_set: str | None = Field(
        None,
        description="pair set of the live probe (a name such as lfw-v1-val, a pair file, .bin or labelled folder), "
        "read by `lafs pretrain`; null: probe_pairs labelled pairs of the shards",
    )
    checkpoint_every: int = Field(500, ge=1, description="steps between periodic checkpoints")
    keep_checkpoints: int = Field(3, ge=1)
    resume: str | None = Field(None, description="'auto' (latest in output_dir), a checkpoint path, or none")

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.landmarks == "online" and self.landmark_checkpoint is None and self.method == "lafs":
            raise ConfigError("pretrain.landmarks=online needs pretrain.landmark_checkpoint (a stage-1 face model)")
        for name in ("global_crops_scale", "local_crops_scale", "dino_local_crops_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ConfigError(f"pretrain.{name} must satisfy 0 < low <= high <= 1, got ({low}, {high})")
        return self

    @property
    def subset_size(self) -> int:
        """Landmark tokens per local view."""
        return self.local_landmarks or self.model.local_landmarks

    def peak_lr(self) -> float:
        """The linear-scaling rule: ``base_lr * global_batch / 256``."""
        return self.base_lr * self.global_batch_size / 256
