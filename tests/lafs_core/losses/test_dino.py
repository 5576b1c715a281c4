"""DINO loss: parity with a straightforward reference (the original formulation) and the centre's all-reduce."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lafs_core.losses.dino import DINOLoss, koleo_loss, sinkhorn_knopp


def reference_dino(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    n_crops: int,
    teacher_temp: float,
    student_temp: float = 0.1,
    momentum: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original DINO loss on concatenated outputs: (loss, updated centre), one process."""
    s = (student / student_temp).chunk(n_crops)
    t = F.softmax((teacher - center) / teacher_temp, dim=-1).detach().chunk(2)
    total, n_terms = 0.0, 0
    for iq, q in enumerate(t):
        for v in range(n_crops):
            if v == iq:
                continue
            total += torch.sum(-q * F.log_softmax(s[v], dim=-1), dim=-1).mean()
            n_terms += 1
    batch_center = torch.sum(teacher, dim=0, keepdim=True) / len(teacher)
    return total / n_terms, center * momentum + batch_center * (1 - momentum)


@pytest.mark.parametrize("n_local", [0, 2, 8])
@pytest.mark.parametrize("teacher_temp", [0.04, 0.07])
@pytest.mark.parametrize("batch", [1, 5])
def test_matches_reference(n_local: int, teacher_temp: float, batch: int) -> None:
    gen = torch.Generator().manual_seed(n_local * 100 + batch)
    out_dim = 64
    n_crops = 2 + n_local
    student = torch.randn(n_crops * batch, out_dim, generator=gen) * 3
    teacher = torch.randn(2 * batch, out_dim, generator=gen) * 3
    loss_fn = DINOLoss(out_dim)
    center = torch.randn(1, out_dim, generator=gen)
    loss_fn.center.copy_(center)
    ours = loss_fn(list(student.chunk(n_crops)), list(teacher.chunk(2)), teacher_temp)
    ref, ref_center = reference_dino(student, teacher, center, n_crops, teacher_temp)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_fn.center, ref_center, rtol=1e-6, atol=1e-6)
    q = F.softmax((teacher - center) / teacher_temp, dim=-1)
    entropy = -(q * q.clamp_min(1e-30).log()).sum(dim=-1).mean()
    assert loss_fn.last_teacher_entropy() == pytest.approx(float(entropy), rel=1e-4, abs=1e-6)


def test_loss_gradient_only_to_student() -> None:
    student = [torch.randn(4, 16, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(4, 16, requires_grad=True) for _ in range(2)]
    DINOLoss(16)(student, teacher, 0.04).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_center_update_alone_is_plain_ema() -> None:
    loss_fn = DINOLoss(8, center_momentum=0.9)
    teacher = [torch.full((3, 8), 2.0), torch.full((3, 8), 4.0)]
    loss_fn.update_center(teacher)
    torch.testing.assert_close(loss_fn.center, torch.full((1, 8), 0.3))
    assert loss_fn.center_norm() == pytest.approx(0.3 * 8**0.5, rel=1e-6)


def reference_sinkhorn(logits: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """DINOv2's single-process Sinkhorn-Knopp on (N, K) already temperature-scaled logits (float64, no overflow)."""
    q = torch.exp(logits.double()).t()
    prototypes, samples = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / prototypes
        q = q / q.sum(dim=0, keepdim=True) / samples
    return (q * samples).t().float()


@pytest.mark.parametrize(("samples", "prototypes"), [(8, 64), (32, 1024), (6, 4)])
def test_sinkhorn_matches_reference_and_balances(samples: int, prototypes: int) -> None:
    logits = torch.randn(samples, prototypes, generator=torch.Generator().manual_seed(samples)) * 5
    q = sinkhorn_knopp(logits, 3)
    torch.testing.assert_close(q, reference_sinkhorn(logits, 3), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(samples))
    # After many iterations the columns converge to an equal share samples / prototypes.
    balanced = sinkhorn_knopp(logits, 200)
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((prototypes,), samples / prototypes), rtol=1e-3, atol=0)


def test_sinkhorn_is_safe_for_large_logits() -> None:
    logits = torch.randn(16, 32, generator=torch.Generator().manual_seed(1)) * 100
    q = sinkhorn_knopp(logits, 3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16))


def test_sinkhorn_centering_loss_matches_reference_and_keeps_centre() -> None:
    gen = torch.Generator().manual_seed(7)
    batch, out_dim, n_crops, temp = 5, 64, 6, 0.05
    student = torch.randn(n_crops * batch, out_dim, generator=gen) * 3
    teacher = torch.randn(2 * batch, out_dim, generator=gen) * 3
    loss_fn = DINOLoss(out_dim, centering="sinkhorn")
    ours = loss_fn(list(student.chunk(n_crops)), list(teacher.chunk(2)), temp)
    q = reference_sinkhorn(teacher / temp).chunk(2)
    s = (student / 0.1).chunk(n_crops)
    terms = [torch.sum(-q[i] * F.log_softmax(s[v], dim=-1), dim=-1).mean() for i in range(2) for v in range(n_crops)]
    expected = (sum(terms) - terms[0] - terms[n_crops + 1]) / (2 * n_crops - 2)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert loss_fn.center.abs().sum() == 0
    # Like a centre, SK ignores an offset shared by every sample (a collapsed common component).
    shared = torch.randn(1, out_dim, generator=gen)
    torch.testing.assert_close(
        loss_fn.teacher_targets([t + shared for t in teacher.chunk(2)], temp),
        loss_fn.teacher_targets(list(teacher.chunk(2)), temp),
        rtol=1e-4,
        atol=1e-7,
    )


def test_unknown_centering_is_rejected() -> None:
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(8, centering="mean")  # type: ignore[arg-type]


def test_koleo_matches_brute_force_and_spreads_points() -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(2))
    unit = F.normalize(x, dim=-1)
    dists = torch.cdist(unit, unit) + torch.eye(7) * 10
    torch.testing.assert_close(koleo_loss(x), -torch.log(dists.min(dim=1).values + 1e-8).mean())
    # Two nearly identical embeddings: one gradient step on KoLeo pushes them apart.
    pts = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    koleo_loss(pts).backward()
    moved = F.normalize(pts.detach() - 0.1 * pts.grad, dim=-1)
    assert (moved[0] - moved[1]).norm() > (
        F.normalize(pts.detach(), dim=-1)[0] - F.normalize(pts.detach(), dim=-1)[1]
    ).norm()
    with pytest.raises(ValueError, match="two"):
        koleo_loss(torch.randn(1, 4))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _centre_worker(rank: int, world: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss_fn = DINOLoss(4, center_momentum=0.5)
        rows = 2 + rank
        teacher = [torch.full((rows, 4), float(rank + 1)), torch.full((rows, 4), float(rank + 1))]
        loss_fn.update_center(teacher)
        queue.put((rank, loss_fn.center.tolist()))
    finally:
        dist.destroy_process_group()


def _sinkhorn_worker(rank: int, world: int, port: int, logits: torch.Tensor, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        queue.put((rank, sinkhorn_knopp(logits.chunk(world)[rank] + rank, 3).tolist()))
    finally:
        dist.destroy_process_group()


def _run_two_ranks(worker, *args) -> dict:
    """Run ``worker(rank, 2, port, *args, queue)`` on 2 spawned gloo ranks; {rank: result}, both exit 0."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, 2, port, *args, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


@pytest.mark.slow
def test_sinkhorn_all_reduce_with_two_processes_equals_one_process() -> None:
    logits = torch.randn(12, 16, generator=torch.Generator().manual_seed(3)) * 4
    results = _run_two_ranks(_sinkhorn_worker, logits)
    shifted = torch.cat([logits[:6], logits[6:] + 1])
    expected = reference_sinkhorn(shifted, 3)
    torch.testing.assert_close(torch.tensor(results[0] + results[1]), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_center_all_reduce_with_two_processes() -> None:
    results = _run_two_ranks(_centre_worker)
    # rank 0: 4 rows of 1.0, rank 1: 6 rows of 2.0 -> global mean 16/10 = 1.6; centre = 0.5 * 1.6.
    expected = torch.full((1, 4), 0.8)
    torch.testing.assert_close(torch.tensor(results[0]), expected)
    torch.testing.assert_close(torch.tensor(results[1]), expected)
