"""Models: landmark CNN, landmark patch sampler, Part fViT, heads, margins, Partial FC, checkpoints."""

from lafs_core.models.build import build_backbone, build_dino_head, build_face_model, build_landmark_cnn
from lafs_core.models.face_model import FaceModel
from lafs_core.models.heads import DINOHead
from lafs_core.models.landmark_cnn import LandmarkCNN
from lafs_core.models.margin import ArcFace, CosFace, MarginHead, build_margin_head
from lafs_core.models.partial_fc import PartialFC
from lafs_core.models.sampler import grid_landmarks, grid_patches, landmark_layout, sample_patches, warp_images
from lafs_core.models.vit import GridFViT, PartFViT

__all__ = [
    "ArcFace",
    "CosFace",
    "DINOHead",
    "FaceModel",
    "GridFViT",
    "LandmarkCNN",
    "MarginHead",
    "PartFViT",
    "PartialFC",
    "build_backbone",
    "build_dino_head",
    "build_face_model",
    "build_landmark_cnn",
    "build_margin_head",
    "grid_landmarks",
    "grid_patches",
    "landmark_layout",
    "sample_patches",
    "warp_images",
]
