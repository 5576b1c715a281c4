"""DINO cross-view loss with a centred, sharpened teacher (method.md 7.5).

``L = mean over pairs (t, s), t in teacher views, s in student views, s != t`` of
``mean_batch sum_k -softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k``. Teacher view ``i`` and student view
``i`` are the same crop, so those pairs are skipped (2 teacher x 10 student views give 18 terms).

The centre ``c`` is an EMA (momentum 0.9) of the teacher's batch mean. The mean is all-reduced over ranks only when a
process group is active, so the loss also runs alone without ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lafs_core.train.distributed import all_reduce_sum


class DINOLoss(nn.Module):
    """DINO loss over lists of per-view logits; the teacher temperature is given per call (schedule outside)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
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
        teacher_p = [F.softmax((t.detach().float() - self.center) / teacher_temp, dim=-1) for t in teacher_out]
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
        if update_center:
            self.update_center(teacher_out)
        return total / terms

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
