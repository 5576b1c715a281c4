"""Partial FC: equals a full margin softmax at world size 1 and across 2 gloo processes (loss and gradients)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lafs_core.models.margin import CosFace
from lafs_core.models.partial_fc import PartialFC, shard_range

DIM, CLASSES, PER_RANK = 12, 11, 5


def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(embeddings (2*PER_RANK, DIM), labels, class matrix) shared by every process."""
    gen = torch.Generator().manual_seed(7)
    emb = torch.randn(2 * PER_RANK, DIM, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (2 * PER_RANK,), generator=gen)
    weight = torch.randn(CLASSES, DIM, generator=gen, dtype=torch.float64)
    return emb, labels, weight


def full_softmax(emb: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor):
    """Loss and gradients of a replicated CosFace + cross-entropy on the whole batch."""
    emb = emb.clone().requires_grad_(True)
    head = CosFace(DIM, CLASSES).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    loss = F.cross_entropy(head(emb, labels), labels)
    loss.backward()
    return loss.detach(), emb.grad, head.weight.grad


def test_world_size_one_equals_full_softmax() -> None:
    emb, labels, weight = problem()
    pfc = PartialFC(DIM, CLASSES).double()
    assert (pfc.class_start, pfc.class_end) == (0, CLASSES)
    with torch.no_grad():
        pfc.head.weight.copy_(weight)
    x = emb.clone().requires_grad_(True)
    loss = pfc(x, labels)
    loss.backward()
    ref_loss, ref_emb, ref_w = full_softmax(emb, labels, weight)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(x.grad, ref_emb)
    torch.testing.assert_close(pfc.head.weight.grad, ref_w)


def test_negative_sampling_keeps_positives_and_touches_only_sampled_centres() -> None:
    emb, _, _ = problem()
    labels = torch.tensor([1, 1, 4, 9, 4, 1, 9, 9, 4, 1])
    pfc = PartialFC(DIM, CLASSES, sample_rate=0.4).double()
    loss = pfc(emb, labels)
    loss.backward()
    touched = (pfc.head.weight.grad.abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    assert {1, 4, 9} <= set(touched) and len(touched) == 5  # ceil(0.4 * 11) = 5 centres this step
    pfc.eval()
    pfc.head.weight.grad = None
    pfc(emb, labels).backward()
    assert (pfc.head.weight.grad.abs().sum(dim=1) > 0).sum() == CLASSES  # eval uses every centre


def test_shards_cover_all_classes() -> None:
    ranges = [shard_range(11, r, 3) for r in range(3)]
    assert ranges == [(0, 4), (4, 8), (8, 11)]


def _worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        emb, labels, weight = problem()
        pfc = PartialFC(DIM, CLASSES).double()
        start, end = pfc.class_start, pfc.class_end
        with torch.no_grad():
            pfc.head.weight.copy_(weight[start:end])
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        local = emb[rows].clone().requires_grad_(True)
        loss = pfc(local, labels[rows])
        loss.backward()
        ref_loss, ref_emb, ref_w = full_softmax(emb, labels, weight)
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(pfc.head.weight.grad, ref_w[start:end])
        # Local embedding gradients carry a world-size factor that DDP's averaging removes.
        torch.testing.assert_close(local.grad / world, ref_emb[rows])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_full_softmax(tmp_path: Path) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(tmp_path / "pg_init")), nprocs=2, join=True)
