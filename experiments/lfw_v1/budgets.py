"""Compute budgets of the lfw-v1 experiment: one table of steps per scale, turned into stage overrides.

Every row gets the same backbone preset, the same SSL step count (for the three pretrained rows) and the same
fine-tuning budget; only the initialisation of the ViT differs. ``scale`` multiplies the SSL steps and the
supervised epochs so one budget can be stretched or shrunk without editing the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# The official fine-tuning schedule drops the landmark-regulariser weight at epochs 8/14/21/28 of 34.
LANDMARK_REG_FRACTIONS = (8 / 34, 14 / 34, 21 / 34, 28 / 34)


@dataclass(frozen=True)
class Budget:
    """How much of each stage one experiment runs."""

    name: str
    preset: str
    pretrain_steps: int
    pretrain_epochs: int
    pretrain_batch: int
    local_views: int
    partfvit_epochs: int
    finetune_epochs: int
    finetune_batch: int
    micro_batch: int
    lr: float
    eval_batch: int
    num_workers: int
    supervised_max_steps: int | None = None
    partfvit_max_steps: int | None = None
    ssl_images: str = "pool"  # "pool": the lfw-v1 pool; "kshot": the k-shot images only (labels unused)
    curve_points: int = 10  # validation-pair checks per SSL and fine-tuning run (the learning curves)

    def scaled(self, scale: float) -> Budget:
        """The same budget with SSL steps and supervised epochs multiplied by ``scale`` (at least 1 each)."""
        if scale == 1:
            return self
        return replace(
            self,
            pretrain_steps=max(1, round(self.pretrain_steps * scale)),
            partfvit_epochs=max(1, round(self.partfvit_epochs * scale)),
            finetune_epochs=max(1, round(self.finetune_epochs * scale)),
        )

    def pretrain_overrides(self) -> list[str]:
        """``lafs pretrain`` overrides shared by the three SSL rows: fixed epoch length, schedules within the run."""
        epochs = min(self.pretrain_epochs, self.pretrain_steps)
        per_epoch = math.ceil(self.pretrain_steps / epochs)
        return [
            f"epochs={epochs}",
            f"iters_per_epoch={per_epoch}",
            f"max_steps={self.pretrain_steps}",
            f"global_batch_size={self.pretrain_batch}",
            f"local_views={self.local_views}",
            f"warmup_epochs={max(epochs // 10, 1) if epochs > 1 else 0}",
            f"warmup_teacher_temp_epochs={max(epochs * 3 // 4, 0)}",
            f"num_workers={self.num_workers}",
            f"probe_every={max(self.pretrain_steps // self.curve_points, 1)}",
            f"checkpoint_every={max(self.pretrain_steps // 2, 1)}",
        ]

    def partfvit_overrides(self) -> list[str]:
        """``lafs partfvit``: the supervised overrides, resumable, optionally cut at ``partfvit_max_steps``."""
        cut = [f"max_steps={self.partfvit_max_steps}"] if self.partfvit_max_steps else []
        return [*self.supervised_overrides(self.partfvit_epochs), *cut, "resume=auto"]

    def supervised_overrides(self, epochs: int) -> list[str]:
        """Overrides shared by ``lafs partfvit`` and ``lafs finetune`` (nothing here looks at the test pairs)."""
        return [
            f"epochs={epochs}",
            f"global_batch_size={self.finetune_batch}",
            f"micro_batch_size={self.micro_batch}",
            f"lr={self.lr}",
            f"warmup_epochs={1 if epochs > 2 else 0}",
            f"num_workers={self.num_workers}",
            "log_model=false",
            "checkpoint_every=100000",
            *([f"max_steps={self.supervised_max_steps}"] if self.supervised_max_steps else []),
        ]

    def finetune_overrides(self, samples: int) -> list[str]:
        """Fine-tuning overrides: the validation-pair learning curve (``curve_points`` checks over the run, on a
        labelled set of ``samples`` images) and the regulariser's staged weights rescaled to this epoch count."""
        epochs = self.finetune_epochs
        steps = epochs * max(1, samples // self.finetune_batch)
        boundaries = [max(1, round(epochs * f)) for f in LANDMARK_REG_FRACTIONS]
        return [
            *self.supervised_overrides(epochs),
            f"val_every={max(steps // self.curve_points, 1)}",
            f"landmark_reg_boundaries=[{', '.join(map(str, boundaries))}]",
        ]


BUDGETS: dict[str, Budget] = {
    # End-to-end check of the wiring in a few minutes; the numbers mean nothing.
    "smoke": Budget(
        "smoke",
        "tiny",
        4,
        2,
        16,
        2,
        1,
        1,
        32,
        32,
        1e-3,
        128,
        1,
        supervised_max_steps=3,
        ssl_images="kshot",
        curve_points=2,
    ),
    # 2 quiet CPU cores, at most an hour per seed (docs/results.md): Part fViT 20 epochs (once, ~4.5 min); per seed
    # SSL 2,500 steps of 32 pool images (~8.5 passes over the pool; ~7 min, lafs-online ~13 min) and fine-tuning
    # 40 epochs (~3 min) per row.
    "cpu-full": Budget("cpu-full", "tiny", 2500, 10, 32, 4, 20, 40, 32, 32, 1e-3, 256, 1),
    # One GPU: the small preset, about 30 SSL epochs of the pool and 34 fine-tuning epochs.
    "gpu": Budget("gpu", "small", 2500, 30, 128, 8, 34, 34, 128, 128, 2e-3, 512, 6),
}
