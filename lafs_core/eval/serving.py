"""The face model as it is exported and served: aligned RGB images in, L2-normalised embeddings out.

One module for ONNX (``lafs export --onnx``) and the MLflow model (``mlflow models serve``), and it computes exactly
what ``lafs embed`` and the evaluations compute (:func:`lafs_core.eval.embed.flip_sum`, then L2), so a served
embedding can be compared with a stored one.

Input: ``images``, float32 ``(B, 3, 112, 112)``, RGB pixel values in [0, 255] (a uint8 image cast to float), faces
aligned as ``lafs data shards`` aligns them (e.g. ``--align detect`` for photos). Output: ``embedding``, float32
``(B, dim)``, unit L2 norm, ``f(x) + f(flip(x))`` normalised. The batch size is free. A model with a landmark CNN
predicts the landmarks of each image and of its mirror image inside the graph.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lafs_core.eval.embed import flip_sum

INPUT_NAME = "images"
OUTPUT_NAME = "embedding"


class EmbeddingModel(nn.Module):
    """``FaceModel`` -> served model: float 0..255 RGB ``(B, 3, H, W)`` -> unit-norm flip-sum embedding ``(B, dim)``."""

    def __init__(self, face: nn.Module) -> None:
        super().__init__()
        self.face = face

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise, embed the image and its mirror image, sum, L2-normalise."""
        return F.normalize(flip_sum(self.face, images), dim=1)


def embedding_model(face: nn.Module) -> EmbeddingModel:
    """A CPU, eval-mode :class:`EmbeddingModel` around a copy of ``face`` (the caller's model is left as it is)."""
    return EmbeddingModel(copy.deepcopy(face).cpu().float()).eval()
