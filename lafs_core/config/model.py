"""Model architecture configuration shared by every stage (the presets fill it in)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
    landmark_width: float = Field(1.0, description="MobileNetV3 width multiplier of the landmark CNN")
    landmark_dropout: float = 0.5
    dino_out_dim: int = 100_000
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
