"""Margin softmax heads behind one interface: cosine logits with an additive (CosFace) or angular (ArcFace) margin.

Targets are either integer labels (B,) or soft label rows (B, C) (mixup); the margin applied to class j is scaled
by the target weight y_j, so one-hot targets give the usual formulas (method.md section 8.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def as_target_weights(targets: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, C) target weights from integer labels (one-hot; label -1 gives a zero row) or soft labels."""
    if targets.is_floating_point():
        return targets.to(dtype)
    weights = torch.zeros(targets.shape[0], num_classes, dtype=dtype, device=targets.device)
    valid = targets >= 0
    weights[valid.nonzero(as_tuple=True)[0], targets[valid]] = 1.0
    return weights


class MarginHead(nn.Module):
    """Class matrix (num_classes, dim) + margin; ``forward(embeddings, targets)`` returns scaled logits (B, C)."""

    def __init__(self, dim: int, num_classes: int, s: float, m: float) -> None:
        super().__init__()
        self.s = s
        self.m = m
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine between L2-normalised embeddings and L2-normalised class rows (default: this head's)."""
        weight = self.weight if weight is None else weight
        return F.linear(F.normalize(embeddings, dim=-1), F.normalize(weight, dim=-1))

    def margin_logits(self, cosine: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin applied in proportion to the (B, C) target ``weights``."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for integer labels (B,) or soft targets (B, num_classes)."""
        cosine = self.cosine(embeddings)
        return self.margin_logits(cosine, as_target_weights(targets, self.num_classes, cosine.dtype))


class CosFace(MarginHead):
    """logits = s * (cos θ_j - m * y_j)."""

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(dim, num_classes, s, m)

    def margin_logits(self, cosine: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.s * (cosine - self.m * weights)


class ArcFace(MarginHead):
    """logits = s * cos(min(θ_j + m * y_j, π)), θ_j = arccos(cos θ_j)."""

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(dim, num_classes, s, m)

    def margin_logits(self, cosine: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(cosine.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        return self.s * torch.cos((theta + self.m * weights).clamp(max=math.pi))


MARGINS: dict[str, type[MarginHead]] = {"cosface": CosFace, "arcface": ArcFace}


def build_margin_head(
    kind: str, dim: int, num_classes: int, s: float | None = None, m: float | None = None
) -> MarginHead:
    """A margin head by name (``cosface`` | ``arcface``) with the defaults of its paper unless s/m are given."""
    if kind not in MARGINS:
        raise ValueError(f"unknown margin head {kind!r}; choose one of {', '.join(MARGINS)}")
    kwargs = {k: v for k, v in (("s", s), ("m", m)) if v is not None}
    return MARGINS[kind](dim, num_classes, **kwargs)
