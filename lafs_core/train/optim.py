"""AdamW parameter groups shared by every training stage.

Rules (method.md 7.6 and 8.5): 1-D parameters (norm weights, biases, the CosFace/DINO-style vectors) and any
``*.bias`` get no weight decay; matrices and higher-rank tensors (linear/conv weights, positional embedding, CLS
token, classifier weight) decay with ``weight_decay``, unless their name starts with a prefix listed in
``overrides`` (e.g. ``{"landmark_cnn.": 0.05}`` for the landmark CNN in Part fViT and fine-tuning). Frozen
parameters (``requires_grad=False``) are left out.

Each group records ``wd_ratio`` = its decay / ``weight_decay`` so a weight-decay schedule (DINO's cosine
0.04 -> 0.4) can scale every decayed group at once with :func:`set_weight_decay`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """True for parameters that must not be weight-decayed: 1-D tensors and biases."""
    return param.ndim <= 1 or name.endswith(".bias")


def _matching_prefix(name: str, overrides: dict[str, float]) -> str | None:
    """The longest override prefix ``name`` starts with, or None."""
    matches = [prefix for prefix in overrides if name.startswith(prefix)]
    return max(matches, key=len) if matches else None


def param_groups(
    model: nn.Module, weight_decay: float, overrides: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups: no decay for 1-D/bias, per-prefix decay overrides, ``weight_decay`` otherwise.

    Names are those of ``model.named_parameters()``; prefixes are matched after stripping a
    leading ``module.`` (DDP) so the same overrides work on wrapped and unwrapped models. Empty groups are
    dropped. Group order is stable: default decay, each override in the given order, then no-decay.
    """
    overrides = dict(overrides or {})
    buckets: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": []}
    buckets.update({f"decay:{prefix}": [] for prefix in overrides})
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        bare = name.removeprefix("module.")
        if is_no_decay(bare, param):
            buckets["no_decay"].append(param)
            continue
        prefix = _matching_prefix(bare, overrides)
        buckets["decay" if prefix is None else f"decay:{prefix}"].append(param)

    groups: list[dict[str, Any]] = []
    for key, params in buckets.items():
        if not params:
            continue
        if key == "no_decay":
            wd = 0.0
        elif key == "decay":
            wd = weight_decay
        else:
            wd = overrides[key.removeprefix("decay:")]
        ratio = wd / weight_decay if weight_decay else (0.0 if wd == 0 else 1.0)
        groups.append({"name": key, "params": params, "weight_decay": wd, "wd_ratio": ratio})
    order = {"decay": 0, "no_decay": 2}
    groups.sort(key=lambda g: order.get(g["name"], 1))
    return groups


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    overrides: dict[str, float] | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """An AdamW over :func:`param_groups` (the optimiser of every LAFS stage)."""
    return torch.optim.AdamW(param_groups(model, weight_decay, overrides), lr=lr, betas=betas, eps=eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every group (schedules are applied per optimiser step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Scale every decayed group to ``weight_decay * wd_ratio``; no-decay groups stay at 0."""
    for group in optimizer.param_groups:
        group["weight_decay"] = weight_decay * group.get("wd_ratio", 1.0)
