"""DINO projection head (method.md section 7.3): MLP -> bottleneck -> L2 -> weight-normalised prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """``nlayers`` Linear+GELU MLP to ``bottleneck_dim``, L2-normalise, then a bias-free weight-normalised Linear.

    With ``norm_last_layer`` the weight-norm gain is fixed to 1 (not trained), as DINO/LAFS do.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError("DINOHead needs at least one layer")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(nlayers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.GELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        if norm_last_layer:
            gain.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim) prototype scores."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, eps=1e-6))
