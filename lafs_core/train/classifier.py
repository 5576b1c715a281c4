"""The supervised stages' trainable network: face model + margin head (replicated, or Partial FC sharded over ranks).

Checkpoints are world-size independent: the class matrix of Partial FC (and its AdamW moments) is gathered to the
full (C, dim) matrix on save and re-sliced for the current rank on load. Gathering is a collective, so every rank
builds the state; rank 0 writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lafs_core.config.finetune import SupervisedConfig
from lafs_core.distributed import all_reduce_sum, rank_world
from lafs_core.models.margin import MarginHead, build_margin_head
from lafs_core.models.partial_fc import PartialFC, shard_range


class TrainNet(nn.Module):
    """What DDP wraps: the face model plus a replicated margin head (None with Partial FC, which lives outside)."""

    def __init__(self, face: nn.Module, head: MarginHead | None) -> None:
        super().__init__()
        self.face = face
        self.head = head

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(margin logits, or embeddings without a head; the landmarks the model sampled at, with their graph)."""
        embeddings, landmarks = self.face.forward_with_landmarks(images)
        if self.head is None:
            return embeddings, landmarks
        return self.head(embeddings, targets), landmarks


def build_classifier(cfg: SupervisedConfig, dim: int, num_classes: int) -> tuple[MarginHead | None, PartialFC | None]:
    """(replicated head, None) or (None, Partial FC) as the config asks."""
    if cfg.partial_fc:
        pfc = PartialFC(dim, num_classes, cfg.margin, cfg.margin_s, cfg.margin_m, cfg.partial_fc_sample_rate)
        return None, pfc
    return build_margin_head(cfg.margin, dim, num_classes, cfg.margin_s, cfg.margin_m), None


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft (B, C) targets (mixup), or integer labels (B,)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if targets.is_floating_point():
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets)


@dataclass
class Classifier:
    """The trainable network as the loop sees it: DDP-wrapped (or bare) ``TrainNet`` and an optional Partial FC."""

    net: nn.Module
    pfc: PartialFC | None = None

    @property
    def bare(self) -> TrainNet:
        """The unwrapped ``TrainNet``."""
        return self.net.module if isinstance(self.net, DistributedDataParallel) else self.net

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(classification loss, landmarks) of one micro-batch of normalised images."""
        out, landmarks = self.net(images, targets)
        if self.pfc is not None:
            return self.pfc(out, targets), landmarks
        return soft_target_loss(out, targets), landmarks

    def parameters_module(self) -> nn.Module:
        """One module holding every trainable parameter (for the optimiser's groups)."""
        return nn.ModuleDict({"net": self.bare, **({"pfc": self.pfc} if self.pfc is not None else {})})


# ---------------------------------------------------------------- world-size independent class matrix


def _flat_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def gather_rows(local: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The full (C, ...) matrix from each rank's contiguous Partial FC slice (sum of zero-padded slices)."""
    rank, world = rank_world()
    start, end = shard_range(num_classes, rank, world)
    full = local.new_zeros((num_classes, *local.shape[1:]))
    full[start:end] = local.detach()
    return all_reduce_sum(full)


def local_rows(full: torch.Tensor, num_classes: int) -> torch.Tensor:
    """This rank's slice of a full (C, ...) matrix."""
    rank, world = rank_world()
    start, end = shard_range(num_classes, rank, world)
    return full[start:end].clone()


def classifier_state(clf: Classifier) -> dict[str, torch.Tensor]:
    """The full class matrix state (``{"weight": (C, dim)}``), gathered from Partial FC shards when sharded."""
    if clf.pfc is None:
        assert clf.bare.head is not None
        return {k: v.detach().cpu() for k, v in clf.bare.head.state_dict().items()}
    return {"weight": gather_rows(clf.pfc.head.weight, clf.pfc.num_classes).cpu()}


def optimizer_state(optimizer: torch.optim.Optimizer, clf: Classifier) -> dict[str, Any]:
    """The optimiser state dict with the Partial FC moments gathered to full matrices (a collective)."""
    state = optimizer.state_dict()
    if clf.pfc is None:
        return state
    index = [id(p) for p in _flat_params(optimizer)].index(id(clf.pfc.head.weight))
    entry = dict(state["state"].get(index, {}))
    for key, value in entry.items():
        if isinstance(value, torch.Tensor) and value.ndim == 2:
            entry[key] = gather_rows(value, clf.pfc.num_classes).cpu()
    state["state"] = {**state["state"], index: entry} if entry else state["state"]
    return state


def load_classifier_state(clf: Classifier, full: dict[str, torch.Tensor]) -> None:
    """Load a full class matrix into the replicated head or this rank's Partial FC slice."""
    if clf.pfc is None:
        assert clf.bare.head is not None
        clf.bare.head.load_state_dict(full)
        return
    with torch.no_grad():
        clf.pfc.head.weight.copy_(local_rows(full["weight"], clf.pfc.num_classes))


def load_optimizer_state(optimizer: torch.optim.Optimizer, clf: Classifier, state: dict[str, Any]) -> None:
    """Load a saved optimiser state, re-slicing the Partial FC moments for this rank."""
    if clf.pfc is not None:
        index = [id(p) for p in _flat_params(optimizer)].index(id(clf.pfc.head.weight))
        entry = dict(state["state"].get(index, {}))
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim == 2:
                entry[key] = local_rows(value, clf.pfc.num_classes)
        if entry:
            state = {**state, "state": {**state["state"], index: entry}}
    optimizer.load_state_dict(state)
