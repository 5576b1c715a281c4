"""Landmark-coordinate regulariser of fine-tuning (method.md 8.4).

A frozen copy of the initial landmark CNN predicts reference landmarks on the same (augmented, mixed) input; the
trainable CNN's landmarks are pulled towards them: ``L = MSE(theta / (S - 1), theta_ref / (S - 1))`` over
B x R x 2 (S = image size, so /111 for 112 px), weighted by a staged per-epoch weight (1000 / 100 / 1 / 0.11 / 0
switching at epochs 8, 14, 21, 28).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lafs_core.train.schedules import staged_weight

DEFAULT_BOUNDARIES = (8, 14, 21, 28)
DEFAULT_VALUES = (1000.0, 100.0, 1.0, 0.11, 0.0)


def landmark_regularizer(landmarks: torch.Tensor, reference: torch.Tensor, image_size: int) -> torch.Tensor:
    """Mean squared difference of (B, R, 2) pixel landmarks after dividing both by ``image_size - 1``."""
    scale = float(image_size - 1)
    return F.mse_loss(landmarks.float() / scale, reference.detach().float() / scale)


def regularizer_weight(
    epoch: int,
    boundaries: tuple[int, ...] | list[int] = DEFAULT_BOUNDARIES,
    values: tuple[float, ...] | list[float] = DEFAULT_VALUES,
) -> float:
    """The staged weight w(epoch) of the regulariser (0-based epochs)."""
    return staged_weight(epoch, list(boundaries), list(values))


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off: the fixed reference landmark model."""
    reference = copy.deepcopy(module).eval()
    reference.requires_grad_(False)
    return reference
