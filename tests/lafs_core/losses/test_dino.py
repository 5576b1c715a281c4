"""DINO loss: parity with a straightforward reference (the original formulation) and the centre's all-reduce."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lafs_core.losses.dino import DINOLoss


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


@pytest.mark.slow
def test_center_all_reduce_with_two_processes() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_centre_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # rank 0: 4 rows of 1.0, rank 1: 6 rows of 2.0 -> global mean 16/10 = 1.6; centre = 0.5 * 1.6.
    expected = torch.full((1, 4), 0.8)
    torch.testing.assert_close(torch.tensor(results[0]), expected)
    torch.testing.assert_close(torch.tensor(results[1]), expected)
