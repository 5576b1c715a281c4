"""The supervised stages (Part fViT and fine-tuning) as one :class:`~lafs_core.train.loop.Stage`: CosFace over a
labelled shard set, with the batch plan, the accumulation step and in-training verification.

- **Batching.** A config gives the global batch per optimiser step and the per-rank micro-batch; accumulation is
  ``global / (world x micro)``. Steps per epoch and the lr schedule depend only on the global batch, so a run resumed
  on a different world size continues the same schedule.
- **Accumulation.** Each micro-batch loss is scaled by 1/accum; DDP skips the all-reduce (``no_sync``) on all but
  the last micro-step; the lr is set from the per-optimiser-step schedule just before ``optimizer.step``.
- **Verification** during training goes through :func:`lafs_core.eval.verify.verify` with ``distributed=True``:
  every rank embeds its share of a pair set's images and every rank gets the same accuracy, so ranks stay in step
  and agree on the best checkpoint. The pair sets are given by the caller (``lafs finetune`` reads ``val_pairs``).

A stage subclass (``partfvit.py``, ``finetune.py``) adds its own loss term, state and exports by overriding
:meth:`SupervisedStage.extra_loss`, :meth:`~SupervisedStage.extra_state`, :meth:`~SupervisedStage.load_extra_state`
and :meth:`~SupervisedStage.stage_exports`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lafs_core import tracking
from lafs_core.config.finetune import SupervisedConfig
from lafs_core.data.loader import train_loader
from lafs_core.data.normalize import normalize
from lafs_core.data.supervised_augment import SupervisedAugment, build_mixup
from lafs_core.distributed import DistInfo
from lafs_core.errors import ConfigError, DataError
from lafs_core.eval.pairsets import PairSet
from lafs_core.eval.report import set_name
from lafs_core.models.checkpoint import model_meta
from lafs_core.models.vit import compile_blocks
from lafs_core.precision import autocast, autocast_dtype
from lafs_core.train.classifier import (
    Classifier,
    TrainNet,
    build_classifier,
    classifier_state,
    load_classifier_state,
    load_optimizer_state,
    optimizer_state,
)
from lafs_core.train.loop import LoopResult, Stage, check_finite, gradients_finite
from lafs_core.train.optim import build_adamw, set_lr
from lafs_core.train.schedules import cosine_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPlan:
    """How a run is cut into optimiser steps on this world size."""

    accum: int
    micro_batch: int
    steps_per_epoch: int
    epochs: int
    max_steps: int | None = None

    @property
    def total_steps(self) -> int:
        """Optimiser steps the run makes (``max_steps`` cuts the run, never the schedule)."""
        full = self.epochs * self.steps_per_epoch
        return min(full, self.max_steps) if self.max_steps else full


def batch_plan(cfg: SupervisedConfig, num_samples: int, world_size: int) -> BatchPlan:
    """The batch plan of ``cfg`` for a training set of ``num_samples`` on ``world_size`` ranks."""
    steps = cfg.iters_per_epoch or max(1, num_samples // cfg.global_batch_size)
    return BatchPlan(cfg.accumulation(world_size), cfg.micro_batch_size, steps, cfg.epochs, cfg.max_steps)


def lr_schedule(cfg: SupervisedConfig, plan: BatchPlan) -> np.ndarray:
    """Per-optimiser-step lr: linear warm-up from 0, then cosine to ``min_lr`` (method.md 8.5)."""
    return cosine_schedule(cfg.lr, cfg.min_lr, plan.epochs, plan.steps_per_epoch, cfg.warmup_epochs)


MicroLoss = Callable[[Any], tuple[torch.Tensor, dict[str, float]]]


def accumulation_step(
    net: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Sequence[Any], loss_fn: MicroLoss, lr: float
) -> dict[str, float]:
    """One optimiser step over ``micro_batches``: loss/accum backward each, all-reduce only on the last one.

    ``loss_fn(micro_batch) -> (loss, metrics)`` must run the forward through ``net`` (so DDP sees it). Every loss is
    checked (:func:`~lafs_core.train.loop.check_finite`) before its backward pass, and the summed gradient before
    the update: a non-finite one is dropped, not applied (``nonfinite_grad`` = 1). Returns the metrics averaged over
    the micro-batches, plus ``loss``.
    """
    accum = len(micro_batches)
    totals: dict[str, float] = {}
    for index, micro in enumerate(micro_batches):
        last = index == accum - 1
        sync = contextlib.nullcontext() if last or not isinstance(net, DistributedDataParallel) else net.no_sync()
        with sync:
            loss, metrics = loss_fn(micro)
            check_finite(loss, loss.device)
            (loss / accum).backward()
        for key, value in {"loss": float(loss.detach()), **metrics}.items():
            totals[key] = totals.get(key, 0.0) + value / accum
    params = [p for group in optimizer.param_groups for p in group["params"]]
    finite = gradients_finite(params, loss.device)
    if finite:
        set_lr(optimizer, lr)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**totals, "nonfinite_grad": 0.0 if finite else 1.0}


def micro_batch_groups(loader: Any, accum: int) -> Iterator[list[Any]]:
    """Group a loader's batches ``accum`` at a time (one optimiser step each); a trailing partial group is dropped."""
    group: list[Any] = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum:
            yield group
            group = []


def read_labels(data_dir: Any) -> tuple[int, int]:
    """(samples, classes) of a labelled shard set; every sample must carry a label in [0, classes)."""
    path = Path(data_dir) / "manifest.parquet"
    if not path.is_file():
        raise DataError(path, "shard manifest not found (run `lafs data shards` first)")
    labels = np.asarray(pq.read_table(path, columns=["label"]).column("label").to_numpy(), dtype=np.int64)
    if labels.size == 0:
        raise DataError(path, "the shard set is empty")
    if (labels < 0).any():
        raise DataError(
            path, f"{int((labels < 0).sum())} samples have no identity label; supervised stages need labels"
        )
    return int(labels.size), int(labels.max()) + 1


def cpu_threads(cfg: SupervisedConfig) -> int:
    """Intra-op threads for this rank: the config's, else ``OMP_NUM_THREADS``, else an even share of the cores.

    The share is cores // (local ranks x (1 + loader workers)). Torch's default (every core) oversubscribes a
    small or shared machine once loader workers or other ranks run too, and OpenMP's barriers then stall: on 2
    busy cores a 2-thread step of the tiny preset ran ~10x slower than a 1-thread one.
    """
    if cfg.cpu_threads is not None:
        return cfg.cpu_threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // (local_ranks * (1 + cfg.num_workers)))


def seed_streams(seed: int) -> None:
    """Seed every global random stream the step and the in-process augmentation draw from (torch for the model,
    numpy for timm's Mixup, Python's for timm's RandAugment when the loader runs in this process)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class SupervisedStage(Stage):
    """A face model trained with a margin loss on a labelled shard set; subclasses add their loss, state, exports."""

    metric_prefix = "train/"
    final_checkpoint = "last.pt"

    def __init__(
        self,
        cfg: SupervisedConfig,
        dist: DistInfo,
        face: nn.Module,
        val_sets: Sequence[PairSet] = (),
        labels: tuple[int, int] | None = None,
    ) -> None:
        """Size the classifier to the labelled set (``labels`` = (samples, classes), default the shards'
        manifest) and build the step; ``val_sets`` are verified during training."""
        if cfg.data_dir is None and labels is None:
            raise ConfigError(f"{self.name}.data_dir is required (a labelled shard folder)")
        self.cfg, self.dist, self.face = cfg, dist, face
        torch.set_num_threads(cpu_threads(cfg))
        self.num_samples, self.num_classes = labels or read_labels(cfg.data_dir)
        self.plan = batch_plan(cfg, self.num_samples, dist.world_size)
        if cfg.augment.mixup_prob > 0 and self.plan.micro_batch % 2:
            raise ConfigError("mixup needs an even micro_batch_size")
        self.total_steps = self.plan.total_steps
        self.images_per_step = cfg.global_batch_size
        self.schedule = lr_schedule(cfg, self.plan)
        torch.manual_seed(cfg.seed)
        head, pfc = build_classifier(cfg, face.cfg.dim, self.num_classes)
        net = TrainNet(face, head).to(dist.device)
        if cfg.compile:
            compile_blocks(net)
        self.clf = Classifier(net, pfc.to(dist.device) if pfc is not None else None)
        self.optimizer = build_adamw(
            self.clf.parameters_module(),
            cfg.lr,
            cfg.weight_decay,
            {"net.face.landmark_cnn.": cfg.landmark_weight_decay},
        )
        self.amp = autocast_dtype(cfg.amp, dist.device)
        self.augment = SupervisedAugment(cfg.augment, face.cfg.image_size)
        self.mixup = build_mixup(cfg.augment, self.num_classes) if cfg.augment.mixup_prob > 0 else None
        self.val_sets = [vs.cached(share=(dist.rank, dist.world_size)) for vs in val_sets]
        self.validate_every = cfg.val_every
        names = [set_name(vs.name) for vs in self.val_sets]
        self.best_metric = cfg.val_metric or (f"{names[0]}/acc" if names else None)

    # --- what subclasses add -----------------------------------------------------------------------------------

    def extra_loss(
        self, images: torch.Tensor, landmarks: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]] | None:
        """A term added to the classification loss of one micro-batch (None: nothing)."""
        return None

    def extra_state(self) -> dict[str, Any]:
        """Stage tensors kept in checkpoints beside the model (e.g. a frozen reference CNN)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`extra_state` saved."""

    def stage_exports(self, run_dir: Path) -> dict[str, Path]:
        """Rank-0 products of the finished stage besides ``last.pt`` / ``best.pt`` (logged under the stage name)."""
        return {}

    # --- the loop's interface ----------------------------------------------------------------------------------

    def trainable(self) -> nn.Module:
        return self.clf.net

    def use_wrapped(self, module: nn.Module) -> None:
        self.clf.net = module

    def start_metrics(self) -> dict[str, float]:
        return {
            "plan/accum": self.plan.accum,
            "plan/steps_per_epoch": self.plan.steps_per_epoch,
            "data/classes": self.num_classes,
            "data/samples": self.num_samples,
            "plan/cpu_threads": torch.get_num_threads(),
        }

    def batches(self, start: int) -> Iterator[list[dict[str, Any]]]:
        """Micro-batch groups (one per optimiser step) from step ``start``: one loader per (rest of an) epoch, every
        random stream seeded by ``(seed, rank, start)``, so a resumed run does not replay the first batches."""
        seed_streams(self.cfg.seed * 1000 + self.dist.rank + 7919 * start)
        step = start
        while True:
            steps_left = min(self.plan.steps_per_epoch - step % self.plan.steps_per_epoch, self.total_steps - step)
            loader = train_loader(
                self.cfg.data_dir,
                self.plan.micro_batch,
                num_workers=self.cfg.num_workers,
                seed=self.cfg.seed + 7919 * step,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                epoch_batches=steps_left * self.plan.accum,
                images_map=self.augment,
            )
            for group in micro_batch_groups(loader, self.plan.accum):
                yield group
                step += 1

    def train_step(self, batch: list[dict[str, Any]], step: int) -> dict[str, float]:
        """One optimiser step over a group of micro-batches at the scheduled learning rate."""
        lr = float(self.schedule[step])
        epoch = step // self.plan.steps_per_epoch
        loss_fn = lambda micro: self.micro_loss(micro, epoch)  # noqa: E731 - the step's one closure
        metrics = accumulation_step(self.clf.net, self.optimizer, batch, loss_fn, lr)
        return {**metrics, "lr": lr, "epoch": float(epoch)}

    def micro_loss(self, batch: dict[str, Any], epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Margin loss (+ the stage's extra term) of one micro-batch of uint8 images, mixed when mixup is on."""
        images = normalize(batch["images"].to(self.dist.device, non_blocking=True))
        targets = batch["labels"].to(self.dist.device)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        with autocast(self.amp, self.dist.device):
            loss, landmarks = self.clf.loss(images, targets)
            metrics = {"loss_cls": float(loss.detach())}
            if (extra := self.extra_loss(images, landmarks, epoch)) is not None:
                loss = loss + extra[0]
                metrics.update(extra[1])
        return loss, metrics

    def state(self, resumable: bool = True) -> dict[str, Any]:
        """Our model format (loads with ``load_face_model``) plus the classifier and optimiser (a collective)."""
        payload: dict[str, Any] = {
            "meta": model_meta(
                self.face, self.cfg.preset, self.name, num_classes=self.num_classes, margin_kind=self.cfg.margin
            ),
            "model": {k: v.detach().cpu() for k, v in self.face.state_dict().items()},
            "margin": classifier_state(self.clf),
            "config": self.cfg.model_dump(mode="json"),
            "extra": self.extra_state(),
        }
        if resumable:
            payload["optimizer"] = optimizer_state(self.optimizer, self.clf)
        return payload

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Model, class matrix (this rank's slice), stage extras and optimiser of a checkpoint of any world size."""
        if int(state["meta"].get("num_classes", -1)) != self.num_classes:
            found = state["meta"].get("num_classes")
            raise ConfigError(f"{path}: checkpoint has {found} classes, the data {self.num_classes}")
        self.face.load_state_dict(state["model"])
        self.load_extra_state(state.get("extra", {}))
        load_classifier_state(self.clf, state["margin"])
        load_optimizer_state(self.optimizer, self.clf, state["optimizer"])

    @property
    def validates(self) -> bool:
        return bool(self.val_sets)

    def validate(self, step: int) -> dict[str, float]:
        """10-fold verification of the face model on every validation set, each rank embedding its share."""
        from lafs_core.eval.verify import verify

        metrics: dict[str, float] = {}
        for pair_set in self.val_sets:
            verified = verify(
                self.face, pair_set, self.cfg.val_batch_size, metric="cosine", amp=self.cfg.amp, distributed=True
            )
            metrics.update(verified.metrics())
        return metrics

    def export(self, run_dir: Path, step: int) -> dict[str, Path]:
        """Rank 0: the stage's products, the checkpoints and them logged to MLflow, the model logged and registered."""
        if not self.dist.is_main:
            return {}
        exports = self.stage_exports(run_dir)
        for name in ("last.pt", "best.pt"):
            if (run_dir / name).is_file():
                tracking.log_artifact(run_dir / name, "checkpoints")
        for path in exports.values():
            tracking.log_artifact(path, self.name)
        if self.cfg.log_model:
            from lafs_core.eval.mlflow_model import log_face_model

            log_face_model(self.face, self.face.cfg.image_size, self.cfg.registered_model or f"lafs-{self.name}")
        return exports

    def summary(self, result: LoopResult) -> dict[str, Any]:
        """The loop's summary plus the batch plan and the data sizes."""
        return {
            **super().summary(result),
            "accum": self.plan.accum,
            "steps_per_epoch": self.plan.steps_per_epoch,
            "classes": self.num_classes,
            "samples": self.num_samples,
        }
