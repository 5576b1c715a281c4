"""DINO cross-view loss with a centred, sharpened teacher (method.md 7.5).

``L = mean over pairs (t, s), t in teacher views, s in student views, s != t`` of
``mean_batch sum_k -softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k``. Teacher view ``i`` and student view
``i`` are the same crop, so those pairs are skipped (2 teacher x 10 student views give 18 terms).

The centre ``c`` is an EMA (momentum 0.9) of the teacher's batch mean. The mean is all-reduced over ranks only when a
process group is active, so the loss also runs alone without ``torch.distributed``.

``centering="sinkhorn"`` replaces the EMA centre by Sinkhorn-Knopp normalisation of ``exp(t / tau_t)`` over the
teacher batch (SwAV / DINOv2): each sample's target sums to 1 and every prototype gets ``1/K`` of the batch mass.
It cannot drift to the uniform or the one-prototype solution the way a noisy small-batch EMA centre does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lafs_core.distributed import all_reduce_sum


class DINOLoss(nn.Module):
    """DINO loss over lists of per-view logits; the teacher temperature is given per call (schedule outside)."""

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: Literal["ema", "sinkhorn"] = "ema",
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"unknown teacher centering {centering!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_entropy = torch.zeros(())

    def forward(
        self,
        student_out: Sequence[torch.Tensor],
        teacher_out: Sequence[torch.Tensor],
        teacher_temp: float,
        update_center: bool = True,
    ) -> torch.Tensor:
        """Mean cross-entropy between centred/sharpened teacher views and the other student views (fp32)."""
        if not teacher_out or len(student_out) < 2:
            raise ValueError("DINO loss needs at least one teacher view and two student views")
        student_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_out]
        teacher_p = self.teacher_targets(teacher_out, teacher_temp)
        with torch.no_grad():
            entropy = [torch.special.entr(q).sum(dim=-1).mean() for q in teacher_p]
            self.teacher_entropy = torch.stack(entropy).mean()
        total = student_logp[0].new_zeros(())
        terms = 0
        for ti, q in enumerate(teacher_p):
            for si, logp in enumerate(student_logp):
                if si == ti:
                    continue
                total = total + torch.sum(-q * logp, dim=-1).mean()
                terms += 1
        if update_center and self.centering == "ema":
            self.update_center(teacher_out)
        return total / terms

    @torch.no_grad()
    def teacher_targets(self, teacher_out: Sequence[torch.Tensor], teacher_temp: float) -> list[torch.Tensor]:
        """Per teacher view, the (B, K) target distributions: centred softmax, or Sinkhorn-Knopp over all views."""
        if self.centering == "ema":
            return [F.softmax((t.detach().float() - self.center) / teacher_temp, dim=-1) for t in teacher_out]
        stacked = torch.cat([t.detach().float() for t in teacher_out])
        targets = sinkhorn_knopp(stacked / teacher_temp, self.sinkhorn_iterations)
        return list(targets.split([t.shape[0] for t in teacher_out]))

    @torch.no_grad()
    def update_center(self, teacher_out: Sequence[torch.Tensor]) -> None:
        """EMA of the teacher's batch mean over all views and, when distributed, all ranks."""
        stacked = torch.cat([t.detach().float() for t in teacher_out])
        batch_sum = stacked.sum(dim=0, keepdim=True)
        count = torch.tensor([float(stacked.shape[0])], device=stacked.device)
        all_reduce_sum(batch_sum)
        all_reduce_sum(count)
        batch_center = batch_sum / count
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def last_teacher_entropy(self) -> float:
        """Mean entropy of the last call's centred, sharpened teacher distributions: ``log(out_dim)`` means collapse
        to uniform, near 0 collapse to one prototype (the loss minus this is the student-teacher KL)."""
        return float(self.teacher_entropy)

    def center_norm(self) -> float:
        """L2 norm of the centre (a collapse indicator: it tracks the teacher's mean output)."""
        return float(self.center.norm())


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp on (N, K) scaled logits -> (N, K) targets whose rows sum to 1 and whose columns (summed
    over all ranks' samples) each hold ``N_total / K``. Runs in float64 after subtracting the global maximum, so
    logit spreads of several hundred (cosine logits at tau 0.01) neither overflow nor underflow."""
    shift = logits.detach().double().max().reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = torch.exp(logits.detach().double() - shift).t()
    count = torch.tensor([float(q.shape[1])], device=q.device, dtype=q.dtype)
    all_reduce_sum(count)
    prototypes = q.shape[0]
    total = q.sum().reshape(1)
    all_reduce_sum(total)
    q /= total
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        all_reduce_sum(rows)
        q /= rows.clamp_min(tiny)
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= count
    return (q * count).t().float()


def koleo_loss(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser (DINOv2, Sablayrolles et al. 2019): ``-mean_i log min_{j != i} ||x_i - x_j||`` over the
    L2-normalised (B, D) embeddings of one rank's batch; it spreads the batch uniformly over the sphere, countering
    the dimensional collapse a tiny model falls into when every face embeds to nearly one direction."""
    if embeddings.shape[0] < 2:
        raise ValueError("KoLeo needs at least two embeddings")
    x = F.normalize(embeddings.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()
