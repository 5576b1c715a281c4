"""Pieces shared by the supervised stages (Part fViT and fine-tuning): the step, the plan, checkpoints, probes.

- **Batching.** A config gives the global batch per optimiser step and the per-rank micro-batch; accumulation is
  ``global / (world x micro)``. Steps per epoch and the lr schedule depend only on the global batch, so a run resumed
  on a different world size continues the same schedule.
- **Accumulation.** Each micro-batch loss is scaled by 1/accum; DDP skips the all-reduce (``no_sync``) on all but
  the last micro-step; the lr is set from the per-optimiser-step schedule just before ``optimizer.step``.
- **Checkpoints** are world-size independent: the class matrix of Partial FC (and its AdamW moments) is gathered to
  the full (C, dim) matrix on save and re-sliced for the current rank on load. Every rank takes part in a save
  (the gather is a collective); rank 0 writes.
- **Verification** during training: every rank embeds its share of the pair set's images, the features are summed
  over ranks, and every rank computes the same accuracy, so ranks stay in step and agree on the best checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from lafs_core.config import dump_config
from lafs_core.config.finetune import SupervisedConfig
from lafs_core.data.loader import train_loader
from lafs_core.data.normalize import normalize
from lafs_core.data.supervised_augment import SupervisedAugment, build_mixup
from lafs_core.errors import ConfigError, DataError
from lafs_core.eval.embed import iter_flip_features
from lafs_core.eval.mlflow_model import log_face_model
from lafs_core.eval.pairsets import ArrayImages, load_pair_set
from lafs_core.eval.report import mlflow_metrics, set_name, verification_report
from lafs_core.eval.verification import evaluate_embeddings
from lafs_core.models.checkpoint import model_meta
from lafs_core.models.margin import MarginHead, build_margin_head
from lafs_core.models.partial_fc import PartialFC, shard_range
from lafs_core.models.vit import compile_blocks
from lafs_core.train import tracking
from lafs_core.train.checkpointing import (
    StopRequest,
    atomic_torch_save,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    step_checkpoint_path,
)
from lafs_core.train.distributed import all_reduce_mean, all_reduce_sum, barrier, init_distributed
from lafs_core.train.optim import build_adamw, set_lr
from lafs_core.train.schedules import cosine_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
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


def make_plan(cfg: SupervisedConfig, num_samples: int, world_size: int) -> Plan:
    """The plan of ``cfg`` for a training set of ``num_samples`` on ``world_size`` ranks."""
    steps = cfg.iters_per_epoch or max(1, num_samples // cfg.global_batch_size)
    return Plan(cfg.accumulation(world_size), cfg.micro_batch_size, steps, cfg.epochs, cfg.max_steps)


def lr_schedule(cfg: SupervisedConfig, plan: Plan) -> np.ndarray:
    """Per-optimiser-step lr: linear warm-up from 0, then cosine to ``min_lr`` (method.md 8.5)."""
    return cosine_schedule(cfg.lr, cfg.min_lr, plan.epochs, plan.steps_per_epoch, cfg.warmup_epochs)


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


def wrap(net: TrainNet, pfc: PartialFC | None, device: torch.device, distributed: bool) -> Classifier:
    """Move to ``device`` and wrap in DDP when more than one rank runs."""
    net.to(device)
    if pfc is not None:
        pfc.to(device)
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        return Classifier(DistributedDataParallel(net, device_ids=ids), pfc)
    return Classifier(net, pfc)


MicroLoss = Callable[[Any], tuple[torch.Tensor, dict[str, float]]]


def accumulation_step(
    net: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Sequence[Any], loss_fn: MicroLoss, lr: float
) -> dict[str, float]:
    """One optimiser step over ``micro_batches``: loss/accum backward each, all-reduce only on the last one.

    ``loss_fn(micro_batch) -> (loss, metrics)`` must run the forward through ``net`` (so DDP sees it). Returns the
    metrics averaged over the micro-batches, plus ``loss``.
    """
    accum = len(micro_batches)
    totals: dict[str, float] = {}
    for index, micro in enumerate(micro_batches):
        last = index == accum - 1
        sync = contextlib.nullcontext() if last or not isinstance(net, DistributedDataParallel) else net.no_sync()
        with sync:
            loss, metrics = loss_fn(micro)
            (loss / accum).backward()
        for key, value in {"loss": float(loss.detach()), **metrics}.items():
            totals[key] = totals.get(key, 0.0) + value / accum
    set_lr(optimizer, lr)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals


# ---------------------------------------------------------------- world-size independent class matrix


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _flat_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def gather_rows(local: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The full (C, ...) matrix from each rank's contiguous Partial FC slice (sum of zero-padded slices)."""
    rank, world = _rank_world()
    start, end = shard_range(num_classes, rank, world)
    full = local.new_zeros((num_classes, *local.shape[1:]))
    full[start:end] = local.detach()
    return all_reduce_sum(full)


def local_rows(full: torch.Tensor, num_classes: int) -> torch.Tensor:
    """This rank's slice of a full (C, ...) matrix."""
    rank, world = _rank_world()
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


# ---------------------------------------------------------------- verification with every rank in step


def rank_share(source: Any) -> Any:
    """This rank's images of a source (every ``world``-th from ``rank``), decoded once and kept in memory."""
    rank, world = _rank_world()
    indices = range(rank, len(source), world)
    images = np.zeros((len(indices), 0, 0, 3), dtype=np.uint8)
    valid = np.zeros(len(indices), dtype=bool)
    loaded = [source.load(i) for i in indices]
    shape = next((im.shape for im in loaded if im is not None), None)
    if shape is not None:
        images = np.zeros((len(indices), *shape), dtype=np.uint8)
        for row, image in enumerate(loaded):
            if image is not None:
                images[row], valid[row] = image, True
    return ArrayImages(images, valid)


def distributed_embeddings(
    model: nn.Module, share: Any, total: int, batch_size: int, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised flip-sum embeddings (total, dim) and readable mask, each rank embedding its ``share``.

    ``share`` holds images ``rank, rank + world, ...`` (:func:`rank_share`). The shares are summed over ranks (zero
    rows elsewhere), so every rank returns the same full matrix and no rank idles while another works.
    """
    rank, world = _rank_world()
    device = next(model.parameters()).device
    feats = torch.zeros(total, model.cfg.dim, dtype=torch.float64, device=device)
    valid = torch.zeros(total, dtype=torch.float64, device=device)
    if len(share):
        for indices, part, ok in iter_flip_features(model, share, batch_size, 0, image_size):
            rows = torch.as_tensor(rank + indices * world, device=device)
            mask = torch.as_tensor(ok, dtype=torch.float64, device=device)
            feats[rows] = torch.as_tensor(part, dtype=torch.float64, device=device) * mask[:, None]
            valid[rows] = mask
    all_reduce_sum(feats)
    all_reduce_sum(valid)
    out = feats.cpu().numpy()
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32), valid.cpu().numpy() > 0.5


@dataclass
class Verifier:
    """A pair set probed during training; :meth:`score` runs on every rank and returns the same metrics on each."""

    name: str
    pair_set: Any
    share: Any
    batch_size: int
    image_size: int

    @classmethod
    def load(cls, spec: str, batch_size: int, image_size: int) -> Verifier:
        """Resolve a pair-set spec (``lfw-v1``, a pair file, ``.bin`` or folder) and decode this rank's share."""
        pair_set = load_pair_set(spec)
        return cls(set_name(pair_set.name), pair_set, rank_share(pair_set.images), batch_size, image_size)

    def score(self, model: nn.Module) -> dict[str, float]:
        """``<set>/acc``, ``<set>/acc_std``, TAR@FAR and AUC of the 10-fold verification."""
        ps = self.pair_set
        emb, valid = distributed_embeddings(model, self.share, len(ps.images), self.batch_size, self.image_size)
        keep = valid[ps.pairs[:, 0]] & valid[ps.pairs[:, 1]]
        pairs, issame, folds = ps.pairs[keep], ps.issame[keep], ps.folds[keep]
        result = evaluate_embeddings(emb[pairs[:, 0]], emb[pairs[:, 1]], issame, folds, "cosine")
        return mlflow_metrics(verification_report(result, self.name))


@dataclass
class TrainState:
    """Counters and bookkeeping saved in every checkpoint."""

    step: int = 0
    best_value: float = -math.inf
    best_step: int = -1
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "run_id": self.run_id,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(
            step=int(data["step"]),
            best_value=float(data["best_value"]),
            best_step=int(data["best_step"]),
            run_id=data.get("run_id"),
            history=list(data.get("history", [])),
        )


def run_verifiers(model: nn.Module, verifiers: Sequence[Verifier]) -> dict[str, float]:
    """All verifiers' metrics (every rank takes part; results are identical on every rank)."""
    metrics: dict[str, float] = {}
    for verifier in verifiers:
        metrics.update(verifier.score(model))
    return metrics


def micro_batch_groups(loader: Any, accum: int) -> Iterator[list[Any]]:
    """Group a loader's batches ``accum`` at a time (one optimiser step each); a trailing partial group is dropped."""
    group: list[Any] = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum:
            yield group
            group = []


# ---------------------------------------------------------------- the loop shared by both stages


@dataclass
class StageHooks:
    """What a stage adds to the shared loop.

    ``face``: the initialised face model; ``extra_loss(images, landmarks, epoch) -> (loss, metrics)``: a term added
    to the classification loss (the landmark regulariser); ``extra_state``/``load_extra_state``: stage tensors kept
    in checkpoints (the frozen reference CNN); ``finish(face, run_dir) -> {name: path}``: rank-0 artifacts at the end.
    """

    stage: str
    face: nn.Module
    extra_loss: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict[str, float]]] | None = None
    extra_state: Callable[[], dict[str, Any]] | None = None
    load_extra_state: Callable[[dict[str, Any]], None] | None = None
    finish: Callable[[nn.Module, Any], dict[str, Any]] | None = None
    tags: dict[str, str] = field(default_factory=dict)


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


def checkpoint_payload(
    cfg: SupervisedConfig,
    hooks: StageHooks,
    clf: Classifier,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
    num_classes: int,
) -> dict[str, Any]:
    """A checkpoint in our model format (loads with ``load_face_model``) plus the training state (a collective)."""
    _, world = _rank_world()
    face = clf.bare.face
    payload: dict[str, Any] = {
        "meta": model_meta(face, cfg.preset, hooks.stage, num_classes=num_classes, margin_kind=cfg.margin),
        "model": {k: v.detach().cpu() for k, v in face.state_dict().items()},
        "margin": classifier_state(clf),
        "train": {**state.as_dict(), "world_size": world},
        "config": cfg.model_dump(mode="json"),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer_state(optimizer, clf)
    if hooks.extra_state is not None:
        payload["extra"] = hooks.extra_state()
    return payload


def save_checkpoint(path: Any, payload_fn: Callable[[], dict[str, Any]], is_main: bool) -> None:
    """Build the payload on every rank (it gathers), write it atomically on rank 0, then wait for the write."""
    payload = payload_fn()
    if is_main:
        atomic_torch_save(payload, path)
    barrier()


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


def _autocast(cfg: SupervisedConfig, device: torch.device) -> contextlib.AbstractContextManager:
    use = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


def _stop_everywhere(local: bool, device: torch.device) -> bool:
    """True when any rank was asked to stop (so all ranks checkpoint and leave together)."""
    flag = torch.tensor([1.0 if local else 0.0], device=device)
    return bool(all_reduce_sum(flag).item() > 0)


def train_supervised(cfg: SupervisedConfig, hooks: StageHooks) -> dict[str, Any]:
    """Run a supervised stage to completion (or until SIGTERM), resumable; returns a summary on every rank."""
    if cfg.data_dir is None:
        raise ConfigError(f"{hooks.stage}.data_dir is required (a labelled shard folder)")
    backend = None if cfg.backend == "auto" else cfg.backend
    info = init_distributed(backend)
    torch.set_num_threads(cpu_threads(cfg))
    run_dir = Path(cfg.output_dir)
    num_samples, num_classes = read_labels(cfg.data_dir)
    plan = make_plan(cfg, num_samples, info.world_size)
    if cfg.augment.mixup_prob > 0 and plan.micro_batch % 2:
        raise ConfigError("mixup needs an even micro_batch_size")
    schedule = lr_schedule(cfg, plan)
    torch.manual_seed(cfg.seed)

    face = hooks.face
    head, pfc = build_classifier(cfg, face.cfg.dim, num_classes)
    net = TrainNet(face, head)
    state = TrainState()
    resume = resolve_resume(cfg.resume, run_dir)
    ckpt: dict[str, Any] | None = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if int(ckpt["meta"].get("num_classes", -1)) != num_classes:
            raise ConfigError(f"{resume}: checkpoint has {ckpt['meta'].get('num_classes')} classes, data {num_classes}")
        face.load_state_dict(ckpt["model"])
        state = TrainState.from_dict(ckpt["train"])
        if hooks.load_extra_state is not None and "extra" in ckpt:
            hooks.load_extra_state(ckpt["extra"])
    if cfg.compile:
        compile_blocks(net)
    clf = wrap(net, pfc, info.device, info.distributed)
    if ckpt is not None:
        load_classifier_state(clf, ckpt["margin"])
    optimizer = build_adamw(
        clf.parameters_module(), cfg.lr, cfg.weight_decay, {"net.face.landmark_cnn.": cfg.landmark_weight_decay}
    )
    if ckpt is not None:
        load_optimizer_state(optimizer, clf, ckpt["optimizer"])
        log.info(
            "resumed %s at step %d (saved on %d ranks, now %d)",
            resume,
            state.step,
            ckpt["train"].get("world_size", 0),
            info.world_size,
        )
    del ckpt

    stream_seed = cfg.seed * 1000 + info.rank + 7919 * state.step
    torch.manual_seed(stream_seed)
    np.random.seed(stream_seed)  # timm Mixup draws from numpy's global stream
    augment = SupervisedAugment(cfg.augment, face.cfg.image_size)
    mixup = build_mixup(cfg.augment, num_classes) if cfg.augment.mixup_prob > 0 else None
    verifiers = [Verifier.load(spec, cfg.val_batch_size, face.cfg.image_size) for spec in cfg.val_pairs]
    best_metric = cfg.val_metric or (f"{verifiers[0].name}/acc" if verifiers else "")
    image_size = face.cfg.image_size

    def payload(with_optimizer: bool = True) -> dict[str, Any]:
        return checkpoint_payload(cfg, hooks, clf, optimizer if with_optimizer else None, state, num_classes)

    def verify() -> dict[str, float]:
        metrics = run_verifiers(clf.bare.face, verifiers)
        tracking.log_metrics(metrics, step=state.step)
        state.history.append({"step": float(state.step), **metrics})
        value = metrics.get(best_metric)
        if value is not None and value > state.best_value:
            state.best_value, state.best_step = value, state.step
            save_checkpoint(run_dir / "best.pt", lambda: payload(False), info.is_main)
        return metrics

    def loss_fn(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        images = normalize(batch["images"].to(info.device, non_blocking=True))
        targets = batch["labels"].to(info.device)
        if mixup is not None:
            images, targets = mixup(images, targets)
        epoch = state.step // plan.steps_per_epoch
        with _autocast(cfg, info.device):
            loss, landmarks = clf.loss(images, targets)
            metrics = {"loss_cls": float(loss.detach())}
            if hooks.extra_loss is not None:
                extra, extra_metrics = hooks.extra_loss(images, landmarks, epoch)
                loss = loss + extra
                metrics.update(extra_metrics)
        return loss, metrics

    stop = StopRequest()
    last_metrics: dict[str, float] = {}
    stopped = False
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
    with tracking.stage_run(hooks.stage, cfg, run_id=state.run_id, tags=hooks.tags) as run:
        if run is not None:
            state.run_id = run.info.run_id
            tracking.log_metrics(
                {
                    "plan/accum": plan.accum,
                    "plan/steps_per_epoch": plan.steps_per_epoch,
                    "data/classes": num_classes,
                    "data/samples": num_samples,
                    "plan/cpu_threads": torch.get_num_threads(),
                },
                step=state.step,
            )
        bar = tqdm(total=plan.total_steps, initial=state.step, desc=hooks.stage, unit="step", disable=not info.is_main)
        clf.net.train()
        while state.step < plan.total_steps and not stopped:
            in_epoch = state.step % plan.steps_per_epoch
            steps_left = min(plan.steps_per_epoch - in_epoch, plan.total_steps - state.step)
            loader = train_loader(
                cfg.data_dir,
                plan.micro_batch,
                num_workers=cfg.num_workers,
                seed=cfg.seed + 7919 * state.step,
                rank=info.rank,
                world_size=info.world_size,
                epoch_batches=steps_left * plan.accum,
                images_map=augment,
            )
            for group in micro_batch_groups(loader, plan.accum):
                metrics = accumulation_step(clf.net, optimizer, group, loss_fn, float(schedule[state.step]))
                state.step += 1
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == plan.total_steps:
                    reduced = all_reduce_mean(torch.tensor(list(metrics.values()), device=info.device))
                    logged = dict(zip(metrics, reduced.tolist(), strict=True))
                    logged["lr"] = float(schedule[state.step - 1])
                    logged["epoch"] = (state.step - 1) // plan.steps_per_epoch
                    tracking.log_metrics({f"train/{k}": v for k, v in logged.items()}, step=state.step)
                    bar.set_postfix(loss=f"{logged['loss']:.3f}")
                if cfg.val_every and state.step % cfg.val_every == 0 and state.step < plan.total_steps:
                    last_metrics = verify()
                if state.step % cfg.checkpoint_every == 0 and state.step < plan.total_steps:
                    save_checkpoint(step_checkpoint_path(run_dir, state.step), payload, info.is_main)
                    if info.is_main:
                        prune_checkpoints(run_dir, cfg.keep_checkpoints)
                if _stop_everywhere(stop.requested, info.device):
                    stopped = True
                    break
                if state.step >= plan.total_steps:
                    break
        bar.close()
        stop.restore()
        if not stopped:
            last_metrics = verify() if verifiers else {}
        save_checkpoint(step_checkpoint_path(run_dir, state.step), payload, info.is_main)
        save_checkpoint(run_dir / "last.pt", lambda: payload(False), info.is_main)
        artifacts: dict[str, Any] = {}
        if info.is_main:
            prune_checkpoints(run_dir, cfg.keep_checkpoints)
            if hooks.finish is not None and not stopped:
                artifacts = hooks.finish(clf.bare.face, run_dir)
            if run is not None:
                for name in ("last.pt", "best.pt", "config.yaml"):
                    if (run_dir / name).is_file():
                        tracking.log_artifact(run_dir / name, "checkpoints" if name.endswith(".pt") else None)
                for path in artifacts.values():
                    tracking.log_artifact(path, hooks.stage)
                if cfg.log_model and not stopped:
                    name = cfg.registered_model or f"lafs-{hooks.stage}"
                    artifacts["mlflow_model_format"] = log_face_model(clf.bare.face, image_size, name)
        barrier()
    return {
        "stage": hooks.stage,
        "steps": state.step,
        "stopped": stopped,
        "world_size": info.world_size,
        "accum": plan.accum,
        "steps_per_epoch": plan.steps_per_epoch,
        "classes": num_classes,
        "samples": num_samples,
        "metrics": last_metrics,
        "best": {"metric": best_metric, "value": state.best_value, "step": state.best_step},
        "run_id": state.run_id,
        "run_dir": str(run_dir),
        "artifacts": {k: str(v) for k, v in artifacts.items()},
    }
