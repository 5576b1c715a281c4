"""Constructors from a ``ModelConfig``: the one place that turns config fields into modules."""

from __future__ import annotations

from lafs_core.config.model import ModelConfig
from lafs_core.models.face_model import FaceModel
from lafs_core.models.heads import DINOHead
from lafs_core.models.landmark_cnn import LandmarkCNN
from lafs_core.models.sampler import landmark_layout
from lafs_core.models.vit import PartFViT


def build_landmark_cnn(cfg: ModelConfig) -> LandmarkCNN:
    """The landmark CNN of ``cfg`` (R landmarks, width multiplier, head dropout), predicting the regular layout
    until trained when ``cfg.landmark_head_init == "layout"``."""
    cnn = LandmarkCNN(
        cfg.num_landmarks, cfg.landmark_width, cfg.landmark_dropout, cfg.image_size, cfg.landmark_margin()
    )
    if cfg.landmark_head_init == "layout":
        cnn.start_at(landmark_layout(cfg.num_landmarks, cfg.image_size, cfg.sampler_convention))
    return cnn


def build_backbone(cfg: ModelConfig) -> PartFViT:
    """The Part fViT transformer of ``cfg``."""
    return PartFViT(cfg)


def build_face_model(cfg: ModelConfig, with_landmark_cnn: bool = True) -> FaceModel:
    """Backbone + (optionally) landmark CNN; without it the model samples the regular grid."""
    return FaceModel(cfg, build_landmark_cnn(cfg) if with_landmark_cnn else None)


def build_dino_head(cfg: ModelConfig) -> DINOHead:
    """The DINO projection head of ``cfg``."""
    return DINOHead(cfg.dim, cfg.dino_out_dim, cfg.dino_hidden_dim, cfg.dino_bottleneck_dim)
