"""Model architecture configuration shared by every stage (the presets fill it in)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lafs_core.errors import ConfigError


class ModelConfig(BaseModel):
    """Part fViT + landmark CNN + DINO head dimensions. Defaults are the paper's base model."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(112, description="aligned face size in pixels")
    patch_size: int = Field(8, description="side of a landmark patch in pixels")
    num_landmarks: int = Field(196, description="R: landmarks (tokens) per global view")
    local_landmarks: int = Field(36, description="landmark tokens per sparse (local) student view")
    dim: int = Field(768, description="transformer width = embedding size")
    depth: int = 12
    heads: int = 11
    dim_head: int = 64
    mlp_dim: int = 2048
    attn_scale: Literal["dim", "head"] = Field(
        "dim", description="'dim': softmax scale dim**-0.5 as the official code; 'head': dim_head**-0.5"
    )
    qkv_bias: bool = False
    dropout: float = Field(0.1, description="dropout after attention projection and in the MLP")
    emb_dropout: float = 0.1
    drop_path: float = 0.1
    drop_path_schedule: Literal["uniform", "linear"] = Field(
        "uniform", description="'uniform': the same rate in every block (official); 'linear': timm-style ramp"
    )
    pos_embed: Literal["slot", "landmark"] = Field(
        "slot", description="position table indexed by sequence slot (paper) or by landmark id"
    )
    sampler_convention: Literal["official", "centered"] = Field(
        "centered", description="'official' reproduces the released checkpoints' patch geometry"
    )
    init: Literal["timm", "official"] = Field(
        "timm",
        description="'timm': trunc-normal(.02) linears and embeddings; 'official': PyTorch defaults, N(0,1) CLS/pos",
    )
    pos_embed_init: Literal["sincos", "random"] = Field(
        "sincos",
        description="'sincos': the landmark slots' position rows start as 2-D sin-cos codes of the landmark layout "
        "(learnt from there; measured: tiny fine-tuning 59.5 -> 66.5 % on validation pairs after 12 epochs); "
        "'random': trunc-normal(.02), or N(0, 1) with init='official'",
    )
    landmark_head_init: Literal["layout", "default"] = Field(
        "layout",
        description="'layout': the landmark CNN starts by predicting the regular layout (small head weights, bias = "
        "layout); 'default': PyTorch's Linear init (official; untrained landmarks are then random points)",
    )
    landmark_range: Literal["layout", "image"] = Field(
        "layout",
        description="per-image min-max of the landmark CNN's outputs onto 'image': [0, size-1] (official), or "
        "'layout': the span of the regular layout's centres, so an untrained CNN predicts exactly the layout and no "
        "patch starts half outside the image",
    )
    landmark_width: float = Field(1.0, description="MobileNetV3 width multiplier of the landmark CNN")
    landmark_dropout: float = 0.5
    dino_out_dim: int = 100_000
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256

    @model_validator(mode="after")
    def _check_layout(self) -> ModelConfig:
        side = round(self.num_landmarks**0.5)
        if side * side == self.num_landmarks and self.image_size % side == 0:
            return self
        if self.pos_embed_init == "sincos" or self.landmark_head_init == "layout" or self.landmark_range == "layout":
            raise ConfigError(
                f"model.num_landmarks={self.num_landmarks} has no square layout on {self.image_size} px: set "
                "model.pos_embed_init=random, model.landmark_head_init=default and model.landmark_range=image"
            )
        return self

    def landmark_margin(self) -> float:
        """Distance in pixels from the image border to the landmark range (0 for ``landmark_range="image"``)."""
        if self.landmark_range == "image":
            return 0.0
        return (self.image_size / round(self.num_landmarks**0.5) - 1) / 2
