"""FaceModel: Part fViT backbone + optional landmark CNN + the sampler convention they were trained with."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lafs_core.config.model import ModelConfig
from lafs_core.models.landmark_cnn import LandmarkCNN
from lafs_core.models.sampler import warp_images
from lafs_core.models.vit import PartFViT
from lafs_core.precision import full_precision

LandmarkInput = torch.Tensor | Literal["grid"] | None


class FaceModel(nn.Module):
    """Normalised face images -> (B, dim) embedding.

    Landmarks come from the caller, from the landmark CNN (when ``landmarks`` is None), or from the regular grid
    (``landmarks="grid"``, or None without a landmark CNN).
    """

    def __init__(
        self, cfg: ModelConfig, landmark_cnn: LandmarkCNN | None = None, backbone: PartFViT | None = None
    ) -> None:
        """A new backbone of ``cfg``, or ``backbone`` shared as it is (e.g. a pretraining teacher's, for a probe)."""
        super().__init__()
        self.cfg = cfg
        self.convention = cfg.sampler_convention
        self.backbone = backbone if backbone is not None else PartFViT(cfg)
        self.landmark_cnn = landmark_cnn

    def predict_landmarks(self, images: torch.Tensor, affine: torch.Tensor | None = None) -> torch.Tensor:
        """Landmark CNN output (B, R, 2) on the images, or on the views ``affine`` cuts from them.

        A CNN whose parameters are all frozen (``requires_grad=False``, e.g. fine-tuning with
        ``freeze_landmark_cnn``) runs as a fixed model (:func:`fixed_landmarks`: eval mode, no gradient, fp32).
        """
        if self.landmark_cnn is None:
            raise ValueError("this FaceModel has no landmark CNN")
        if affine is not None:
            size = self.cfg.image_size
            images = warp_images(images, affine, (size, size))
        if not any(p.requires_grad for p in self.landmark_cnn.parameters()):
            return fixed_landmarks(self.landmark_cnn, images)
        return self.landmark_cnn(images)

    def resolve_landmarks(
        self, images: torch.Tensor, landmarks: LandmarkInput = None, affine: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (B, N, 2) view-coordinate landmarks the model samples at for this input."""
        if isinstance(landmarks, torch.Tensor):
            return landmarks
        if landmarks is None and self.landmark_cnn is not None:
            return self.predict_landmarks(images, affine)
        if landmarks not in (None, "grid"):
            raise ValueError(f"landmarks must be a tensor, 'grid' or None, not {landmarks!r}")
        return self.backbone.grid_landmarks(images.shape[0], images.device)

    def forward_with_landmarks(
        self, images: torch.Tensor, landmarks: LandmarkInput = None, affine: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding (B, dim), landmarks used (B, N, 2)); the landmarks keep their graph for regularisers."""
        points = self.resolve_landmarks(images, landmarks, affine)
        is_grid = not isinstance(landmarks, torch.Tensor) and (landmarks == "grid" or self.landmark_cnn is None)
        if is_grid and affine is None:
            return self.backbone(images), points
        return self.backbone(images, points, affine), points

    def forward(
        self, images: torch.Tensor, landmarks: LandmarkInput = None, affine: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (B, dim) embedding of normalised [-1, 1] RGB images."""
        return self.forward_with_landmarks(images, landmarks, affine)[0]


@torch.no_grad()
def fixed_landmarks(cnn: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A fixed landmark CNN on normalised images: eval mode, no gradient, fp32 even inside autocast; (B, R, 2).

    The one way a landmark model that is not being trained runs (online SSL views, the fine-tuning regulariser's
    reference, the shard writer, the Part fViT overlay); its previous train/eval mode is restored.
    """
    was_training = cnn.training
    cnn.eval()
    with full_precision(images.device):
        out = cnn(images.float()).float()
    cnn.train(was_training)
    return out
