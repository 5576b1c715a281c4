"""Partial FC: a margin softmax whose class centres are sharded over ranks (model parallel classifier).

Each rank holds a contiguous slice of the class matrix. Embeddings are all-gathered (autograd-aware), every rank
computes logits of the whole global batch against its slice (optionally only a sampled subset of its classes that
always keeps the batch's positives), and the softmax cross-entropy is computed with an all-reduced max and sum.
The returned loss is the mean over the global batch, the same value on every rank. Gradients reaching the local
embeddings are multiplied by the world size so that DDP's gradient averaging of the backbone yields the gradient of
that global mean. With world size 1 (or no process group) it is a plain margin softmax.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from lafs_core.models.margin import as_target_weights, build_margin_head


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, world size) of ``group``; (0, 1) without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the classes held by ``rank``; shard sizes differ by at most one."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _AllGather(torch.autograd.Function):
    """Concatenate equal-sized tensors of all ranks; the backward sums gradients over ranks, keeps this rank's rows
    and scales them by the world size (DDP then averages)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        rank, world = _world(group)
        ctx.rank, ctx.world, ctx.group, ctx.rows = rank, world, group, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        rows = grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]
        return rows * ctx.world, None


class _DistCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits split by columns over ranks; ``target`` is the local column or -1."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        _, world = _world(group)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        peak = logits.max(dim=1, keepdim=True).values
        if world > 1:
            dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - peak
        probs = shifted.exp()
        total = probs.sum(dim=1, keepdim=True)
        if world > 1:
            dist.all_reduce(total, group=group)
        probs = probs / total
        owner = target >= 0
        rows = owner.nonzero(as_tuple=True)[0]
        target_logit = torch.zeros(logits.shape[0], device=logits.device, dtype=logits.dtype)
        target_logit[rows] = shifted[rows, target[rows]]
        if world > 1:
            dist.all_reduce(target_logit, group=group)
        ctx.save_for_backward(probs, rows, target)
        return (total.squeeze(1).log() - target_logit).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        probs, rows, target = ctx.saved_tensors
        grad = probs.clone()
        grad[rows, target[rows]] -= 1.0
        return grad * (grad_out / probs.shape[0]), None, None


class PartialFC(nn.Module):
    """Sharded margin-softmax loss: ``forward(embeddings (b, dim), labels (b,)) -> scalar loss``.

    ``sample_rate`` < 1 keeps, per rank and step, ceil(rate x local classes) centres (all positives of the global
    batch included), as Partial FC does; it applies in training mode only.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        margin: str = "cosface",
        s: float | None = None,
        m: float | None = None,
        sample_rate: float = 1.0,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.group = group
        rank, world = _world(group)
        self.num_classes = num_classes
        self.class_start, self.class_end = shard_range(num_classes, rank, world)
        self.num_local = self.class_end - self.class_start
        self.sample_rate = sample_rate
        self.head = build_margin_head(margin, dim, self.num_local, s, m)

    def _sample(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept class indices, labels remapped into them) with every positive class kept."""
        num_sample = math.ceil(self.sample_rate * self.num_local)
        score = torch.rand(self.num_local, device=local.device)
        positives = local[local >= 0].unique()
        score[positives] = 2.0
        num_sample = max(num_sample, positives.numel())
        index = score.topk(num_sample).indices.sort().values
        lookup = torch.full((self.num_local,), -1, dtype=torch.long, device=local.device)
        lookup[index] = torch.arange(num_sample, device=local.device)
        remapped = torch.where(local >= 0, lookup[local.clamp_min(0)], local)
        return index, remapped

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean margin-softmax cross-entropy of the global batch (the same value on every rank)."""
        if labels.is_floating_point():
            raise ValueError("PartialFC takes integer labels, not soft targets")
        _, world = _world(self.group)
        labels = labels.long()
        if world > 1:
            embeddings = _AllGather.apply(embeddings, self.group)
            parts = [torch.empty_like(labels) for _ in range(world)]
            dist.all_gather(parts, labels.contiguous(), group=self.group)
            labels = torch.cat(parts)
        inside = (labels >= self.class_start) & (labels < self.class_end)
        local = torch.where(inside, labels - self.class_start, torch.full_like(labels, -1))
        weight = self.head.weight
        if self.training and self.sample_rate < 1.0:
            index, local = self._sample(local)
            weight = weight[index]
        cosine = self.head.cosine(embeddings, weight)
        logits = self.head.margin_logits(cosine, as_target_weights(local, weight.shape[0], cosine.dtype))
        return _DistCrossEntropy.apply(logits, local, self.group)
