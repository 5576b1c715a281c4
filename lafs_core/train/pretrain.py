"""LAFS self-supervised pretraining (method.md section 7): DINO student/teacher over landmark-token views.

Runs alone (``python -m lafs_core.train.pretrain --preset tiny data_dir=...``) or under torchrun, e.g. two nodes::

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m lafs_core.train.pretrain --config cfg.yaml --resume auto

The global batch is fixed by the config and split evenly over ranks; an "epoch" is a fixed number of iterations
(full global batches per pass over the manifest, unless configured), so every per-iteration schedule (lr, weight decay,
teacher momentum and temperature) is the same array on 1 or N ranks and a checkpoint resumes on any world size.
The loop itself (resume, DDP, checkpoints, tracking, the live probe's schedule) is :mod:`lafs_core.train.loop`.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lafs_core import tracking
from lafs_core.config import config_hash, load_config
from lafs_core.config.pretrain import PretrainConfig
from lafs_core.data.ssl_views import SSLViewMaker, SSLViews
from lafs_core.distributed import DistInfo
from lafs_core.errors import ConfigError, DataError, LafsError
from lafs_core.eval.pairsets import PairSet
from lafs_core.losses.dino import DINOLoss, koleo_loss
from lafs_core.models.build import build_backbone, build_dino_head
from lafs_core.models.face_model import FaceModel
from lafs_core.models.vit import GridFViT, PartFViT, compile_blocks
from lafs_core.precision import autocast, autocast_dtype
from lafs_core.train.loop import Stage, check_finite, gradients_finite, run_stage
from lafs_core.train.optim import build_adamw, set_lr, set_weight_decay
from lafs_core.train.schedules import cosine_schedule, linear_then_constant

log = logging.getLogger(__name__)

STAGE = "pretrain"
CHECKPOINT_FORMAT = "lafs-pretrain/1"
RESUME_KEYS = ("model", "method", "epochs", "global_batch_size", "base_lr", "warmup_epochs", "landmarks")


class MultiCropNet(nn.Module):
    """Backbone + DINO head over a list of token views, one backbone pass per distinct token count."""

    def __init__(self, backbone: PartFViT, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self, views: Sequence[torch.Tensor], return_embeddings: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-view head outputs (B, out_dim), in the order of ``views``; with ``return_embeddings`` also the
        per-view backbone embeddings (B, dim)."""
        groups: dict[int, list[int]] = {}
        for index, tokens in enumerate(views):
            groups.setdefault(tokens.shape[1], []).append(index)
        embeddings: list[torch.Tensor | None] = [None] * len(views)
        for indices in groups.values():
            out = self.backbone.forward_tokens(torch.cat([views[i] for i in indices]))
            for i, chunk in zip(indices, out.chunk(len(indices)), strict=True):
                embeddings[i] = chunk
        logits = list(self.head(torch.cat(embeddings)).chunk(len(views)))
        return (logits, embeddings) if return_embeddings else logits


@dataclass(frozen=True)
class Schedules:
    """Per-iteration values indexed by the global step (identical on every world size)."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    iters_per_epoch: int

    @property
    def total(self) -> int:
        return len(self.lr)

    def at(self, step: int) -> dict[str, float]:
        """The schedule values used by optimiser step ``step`` (0-based)."""
        return {
            "lr": float(self.lr[step]),
            "wd": float(self.wd[step]),
            "momentum": float(self.momentum[step]),
            "teacher_temp": float(self.teacher_temp[step]),
        }


def build_schedules(cfg: PretrainConfig, iters_per_epoch: int) -> Schedules:
    """lr: warm-up + cosine to ``min_lr``; wd 0.04 -> 0.4 and momentum 0.996 -> 1 cosine; teacher temperature ramp."""
    ipe, epochs = iters_per_epoch, cfg.epochs
    lr = cosine_schedule(cfg.peak_lr(), cfg.min_lr, epochs, ipe, warmup_epochs=cfg.warmup_epochs)
    wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, epochs, ipe)
    momentum = cosine_schedule(cfg.momentum_teacher, cfg.momentum_teacher_end, epochs, ipe)
    ramp = min(cfg.warmup_teacher_temp_epochs, epochs)
    if cfg.teacher_temp_per_epoch:
        per_epoch = linear_then_constant(cfg.warmup_teacher_temp, cfg.teacher_temp, ramp, epochs)
        temp = np.repeat(per_epoch, ipe)
    else:
        temp = linear_then_constant(cfg.warmup_teacher_temp, cfg.teacher_temp, ramp, epochs, ipe)
    return Schedules(lr, wd, momentum, temp, ipe)


def iterations_per_epoch(cfg: PretrainConfig, info: dict[str, Any]) -> int:
    """The configured epoch length, else full global batches per pass over the shards (world-size independent)."""
    from lafs_core.data.loader import batches_per_epoch

    if cfg.iters_per_epoch:
        return cfg.iters_per_epoch
    if int(info.get("num_samples", 0)) <= 0:
        raise DataError(cfg.data_dir or "", "the shard set lists no samples")
    return batches_per_epoch(info, cfg.global_batch_size, 1)


def per_rank_batch(cfg: PretrainConfig, world_size: int) -> int:
    """The global batch split evenly over ranks (a ConfigError when it does not divide)."""
    if cfg.global_batch_size % world_size:
        raise ConfigError(
            f"pretrain.global_batch_size={cfg.global_batch_size} is not divisible by the world size {world_size}"
        )
    return cfg.global_batch_size // world_size


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """DINO-style per-tensor clipping: scale each gradient to L2 norm <= ``clip``; returns the norms before."""
    norms = []
    for param in model.parameters():
        if param.grad is None:
            continue
        norm = float(param.grad.detach().norm(2))
        norms.append(norm)
        coef = clip / (norm + 1e-6)
        if coef < 1:
            param.grad.mul_(coef)
    return norms


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_epochs: int) -> None:
    """Drop the head's last-layer gradients during the first ``freeze_epochs`` epochs (stabilises DINO)."""
    if epoch >= freeze_epochs:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, over all parameters."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)


def build_networks(cfg: PretrainConfig) -> tuple[MultiCropNet, MultiCropNet]:
    """Student and teacher (a frozen copy of the student): Part fViT, or the grid fViT for dino-grid."""
    backbone = GridFViT(cfg.model) if cfg.method == "dino-grid" else build_backbone(cfg.model)
    student = MultiCropNet(backbone, build_dino_head(cfg.model))
    teacher = copy.deepcopy(student)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return student, teacher


def frozen_landmark_cnn(path: str | Path, num_landmarks: int, device: torch.device) -> nn.Module:
    """The landmark CNN of a checkpoint (a face model, a ``landmark_cnn.pt`` or an official file), frozen on
    ``device`` (fp32, eval, no grad)."""
    from lafs_core.models.checkpoint import load_checkpoint

    face = load_checkpoint(path).model
    if face.landmark_cnn is None:
        raise DataError(path, "checkpoint has no landmark CNN")
    if face.landmark_cnn.num_landmarks != num_landmarks:
        raise ConfigError(
            f"landmark CNN predicts {face.landmark_cnn.num_landmarks} landmarks, model.num_landmarks={num_landmarks}"
        )
    cnn = face.landmark_cnn.to(device).float().eval()
    cnn.requires_grad_(False)
    return cnn


def shards_landmark_cnn(info: dict[str, Any], num_landmarks: int, device: torch.device) -> nn.Module | None:
    """The landmark CNN that wrote the shards' landmarks (``cnn:PATH``, same sha256), else None (grid or gone)."""
    import hashlib

    spec = info.get("landmark_model", {})
    path = Path(str(spec.get("spec", "")).removeprefix("cnn:"))
    if not str(spec.get("spec", "")).startswith("cnn:") or not path.is_file():
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() != spec.get("sha256"):
        log.warning("%s changed since the shards were written: the probe uses grid landmarks", path)
        return None
    return frozen_landmark_cnn(path, num_landmarks, device)


def shard_info(cfg: PretrainConfig) -> dict[str, Any]:
    """The shard set's ``_info.json``, checked against the model config."""
    if cfg.data_dir is None:
        raise ConfigError("pretrain.data_dir is not set (a shard folder from `lafs data shards`)")
    from lafs_core.data.loader import read_info

    info = read_info(cfg.data_dir)
    if cfg.method == "lafs" and cfg.landmarks == "precomputed" and info["num_landmarks"] != cfg.model.num_landmarks:
        raise DataError(
            cfg.data_dir,
            f"shards hold {info['num_landmarks']} landmarks per image but model.num_landmarks="
            f"{cfg.model.num_landmarks}",
        )
    if info["image_size"] != cfg.model.image_size:
        raise DataError(cfg.data_dir, f"shard images are {info['image_size']} px, model expects {cfg.model.image_size}")
    return info


def training_batches(
    cfg: PretrainConfig, dist: DistInfo, batch: int, epoch_len: int, start_step: int = 0
) -> Iterator[dict[str, Any]]:
    """Endless per-rank batches ``{"images", "landmarks", "labels", "keys"}`` from the resampled shards.

    The stream is seeded by the start step, so a resumed run draws new samples instead of replaying the first ones.
    """
    from lafs_core.data.loader import train_loader

    loader = train_loader(
        cfg.data_dir,
        batch,
        num_workers=cfg.num_workers,
        seed=cfg.seed + start_step,
        rank=dist.rank,
        world_size=dist.world_size,
        epoch_batches=epoch_len,
    )
    while True:
        yield from loader


class PretrainStage(Stage):
    """One pretraining run: student, teacher, optimiser, DINO loss and view maker; the step; the probe; the export."""

    name = STAGE

    def __init__(
        self, cfg: PretrainConfig, dist: DistInfo, info: dict[str, Any] | None = None, probe: PairSet | None = None
    ) -> None:
        """Build the networks, optimiser, loss and view maker; ``info`` defaults to the shards' ``_info.json``;
        ``probe``: the live probe's pair set (``cfg.probe_set`` read by the caller), else pairs of the shards."""
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.info = info if info is not None else shard_info(cfg)
        self.batch = per_rank_batch(cfg, dist.world_size)
        self.images_per_step = cfg.global_batch_size
        self.teacher_out_dim = cfg.model.dino_out_dim
        self.schedules = build_schedules(cfg, iterations_per_epoch(cfg, self.info))
        self.total_steps = min(self.schedules.total, cfg.max_steps or self.schedules.total)
        self.validate_every = cfg.probe_every
        # Before seeding, so that building the probe (a landmark CNN loaded from disk) draws nothing from the run's
        # random streams.
        self.probe, self.probe_landmarks = self._probe_set(probe)
        torch.manual_seed(cfg.seed)
        self.student, self.teacher = build_networks(cfg)
        self.student.to(self.device)
        self.teacher.to(self.device)
        self.teacher.train(cfg.teacher_mode == "train")
        if cfg.compile:
            compile_blocks(self.student)
            compile_blocks(self.teacher)
        self.forward: nn.Module = self.student
        self.optimizer = build_adamw(self.student, self.schedules.lr[0], cfg.weight_decay)
        self.loss_fn = DINOLoss(
            cfg.model.dino_out_dim,
            cfg.student_temp,
            cfg.center_momentum,
            cfg.teacher_centering,
            cfg.sinkhorn_iterations,
        ).to(self.device)
        self.landmark_model = None
        if cfg.method == "lafs" and cfg.landmarks == "online":
            self.landmark_model = frozen_landmark_cnn(cfg.landmark_checkpoint, cfg.model.num_landmarks, self.device)
        flip = torch.as_tensor(self.info.get("flip_permutation", []), dtype=torch.long)
        self.views = SSLViewMaker(
            cfg, flip if flip.numel() else None, self.landmark_model, seed=cfg.seed + 1000 * dist.rank
        )
        self.amp = autocast_dtype(cfg.amp, self.device)
        self._show_views = False

    # --- the loop's interface ----------------------------------------------------------------------------------

    def trainable(self) -> nn.Module:
        return self.student

    def use_wrapped(self, module: nn.Module) -> None:
        self.forward = module

    def tags(self) -> dict[str, str]:
        return {"lafs.method": self.cfg.method, "lafs.sigma": str(self.cfg.sigma)}

    def batches(self, start: int) -> Iterator[dict[str, Any]]:
        """Resampled shard batches seeded by ``start``; the view generator is re-seeded for ``start`` too."""
        self.views.generator.manual_seed(self.cfg.seed + 1000 * self.dist.rank + 7919 * start)
        self._show_views = self.dist.is_main
        return training_batches(self.cfg, self.dist, self.batch, self.schedules.iters_per_epoch, start)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """Views of the batch (a PNG of the first ones), then :meth:`step_on_views`."""
        images = batch["images"].to(self.device, non_blocking=True)
        landmarks = batch["landmarks"].to(self.device, non_blocking=True)
        views = self.views(images, landmarks)
        if self._show_views:
            from lafs_core.train.ssl_plots import save_view_png

            path = save_view_png(Path(self.cfg.output_dir) / "views.png", images, views, self.cfg.model.patch_size)
            tracking.log_artifact(path)
            self._show_views = False
        return self.step_on_views(views, step)

    def state(self, resumable: bool = True) -> dict[str, Any]:
        """A world-size-independent checkpoint (plain tensors and Python values; loads with weights_only)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "iters_per_epoch": self.schedules.iters_per_epoch,
            "config": self.cfg.model_dump(mode="json"),
            "config_hash": config_hash(self.cfg),
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dino_loss": self.loss_fn.state_dict(),
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Load a checkpoint taken on any world size; the config must not have changed in what shapes the run."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise DataError(path, f"not a pretraining checkpoint (format {state.get('format')!r})")
        if state["iters_per_epoch"] != self.schedules.iters_per_epoch:
            raise ConfigError(
                f"{path}: checkpoint epoch length {state['iters_per_epoch']} != this run's "
                f"{self.schedules.iters_per_epoch} (global batch or data changed)"
            )
        current = self.cfg.model_dump(mode="json")
        changed = [key for key in RESUME_KEYS if state["config"].get(key) != current.get(key)]
        if changed:
            raise ConfigError(f"{path}: cannot resume, the config changed in {', '.join(changed)}")
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_fn.load_state_dict(state["dino_loss"])

    @property
    def validates(self) -> bool:
        return self.probe is not None

    def validate(self, step: int) -> dict[str, float]:
        """The live probe: the teacher, as fine-tuning will use it, verified on labelled pairs of the shards."""
        from lafs_core.eval.verify import verify

        backbone = self.teacher.backbone
        model = FaceModel(backbone.cfg, self.probe_landmarks, backbone=backbone)
        verified = verify(model, self.probe, metric="cosine", amp=self.cfg.amp)
        log.info("step %d probe verification accuracy %.4f", step, verified.result.accuracy_mean)
        return {"probe/verification_acc": verified.result.accuracy_mean, "probe/auc": verified.result.auc}

    def export(self, run_dir: Path, step: int) -> dict[str, Path]:
        """Rank 0 writes the teacher backbone (+ DINO head) in the models' checkpoint format, stage 'pretrain'."""
        if not self.dist.is_main:
            return {}
        from lafs_core.models.checkpoint import save_model_checkpoint

        model_cfg = self.teacher.backbone.cfg
        face = FaceModel(model_cfg, self.landmark_model)
        face.backbone.load_state_dict(self.teacher.backbone.state_dict())
        path = save_model_checkpoint(
            run_dir / "teacher.pt",
            face.cpu(),
            self.cfg.preset,
            STAGE,
            dino_head=self.teacher.head,
            method=self.cfg.method,
            sigma=self.cfg.sigma,
            step=step,
            config_hash=config_hash(self.cfg),
        )
        tracking.log_artifact(path)
        return {"teacher": path}

    # --- the step ----------------------------------------------------------------------------------------------

    def step_on_views(self, views: SSLViews, step: int) -> dict[str, float]:
        """One optimiser step on prepared views; returns the losses, the schedule values used and the epoch."""
        values = self.schedules.at(step)
        set_lr(self.optimizer, values["lr"])
        set_weight_decay(self.optimizer, values["wd"])
        epoch = step // self.schedules.iters_per_epoch
        with autocast(self.amp, self.device):
            with torch.no_grad():
                teacher_out = self.teacher(views.tokens[: views.num_global])
            student_out, embeddings = self.forward(views.tokens, return_embeddings=True)
        dino = self.loss_fn(student_out, teacher_out, values["teacher_temp"])
        koleo = torch.zeros((), device=self.device)
        if self.cfg.koleo_weight > 0:
            koleo = torch.stack([koleo_loss(e) for e in embeddings[: views.num_global]]).mean()
        loss = dino + self.cfg.koleo_weight * koleo
        check_finite(loss, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = clip_gradients(self.student, self.cfg.clip_grad) if self.cfg.clip_grad > 0 else []
        cancel_last_layer_gradients(self.student, epoch, self.cfg.freeze_last_layer)
        finite = gradients_finite(self.student.parameters(), self.device)
        if finite:
            self.optimizer.step()
            ema_update(self.teacher, self.student, values["momentum"])
        grad_norm = float(np.sqrt(np.sum(np.square(norms)))) if norms else 0.0
        dino_loss, entropy = float(dino.detach()), self.loss_fn.last_teacher_entropy()
        return {
            "loss": float(loss.detach()),
            "dino_loss": dino_loss,
            "koleo": float(koleo.detach()),
            "grad_norm": grad_norm,
            "teacher_entropy": entropy,
            "student_teacher_kl": dino_loss - entropy,
            "center_norm": self.loss_fn.center_norm(),
            "nonfinite_grad": 0.0 if finite else 1.0,
            "epoch": float(epoch),
            **values,
        }

    # --- the probe ---------------------------------------------------------------------------------------------

    def _probe_set(self, given: PairSet | None) -> tuple[Any, nn.Module | None]:
        """The live probe's pairs (``given``, else labelled pairs of the shard set) and the landmark model it embeds
        with (the online CNN, else the CNN that wrote the shards' landmarks, else the grid); (None, None) when the
        probe is off."""
        if not self.cfg.probe_every:
            return None, None
        if self.cfg.probe_set and given is None:
            raise ConfigError(f"pretrain.probe_set={self.cfg.probe_set!r} is read by `lafs pretrain`; run that")
        from lafs_core.eval.pairsets import shard_pair_set

        cfg = self.cfg
        probe = given.cached() if given is not None else shard_pair_set(cfg.data_dir, cfg.probe_pairs, cfg.seed)
        if probe is None:
            log.warning("no same-identity pairs in %s: the live probe is off", self.cfg.data_dir)
            return None, None
        num_landmarks = self.cfg.model.num_landmarks
        if self.cfg.method == "lafs" and self.cfg.landmarks == "online":
            return probe, frozen_landmark_cnn(self.cfg.landmark_checkpoint, num_landmarks, self.device)
        if self.cfg.method == "lafs":
            return probe, shards_landmark_cnn(self.info, num_landmarks, self.device)
        return probe, None


def train(cfg: PretrainConfig, probe: PairSet | None = None) -> dict[str, Any]:
    """Run (or resume) pretraining in this process (one rank of a torchrun job, or alone); the run's summary, whose
    ``artifacts["teacher"]`` is the exported teacher on rank 0. ``probe``: the pair set of ``cfg.probe_set``."""
    return run_stage(lambda dist: PretrainStage(cfg, dist, probe=probe), cfg)


def parse_args(argv: Sequence[str] | None = None) -> PretrainConfig:
    """``--config FILE --preset NAME --resume auto|PATH key=value ...`` -> the resolved config."""
    parser = argparse.ArgumentParser(prog="python -m lafs_core.train.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", type=Path, default=None)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--resume", default=None, help="'auto', a checkpoint path, or 'none'")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    return load_config(PretrainConfig, args.config, overrides, args.preset)


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun / ``python -m`` entry point; user errors print one line and exit 2."""
    import sys

    from lafs_core.env import configure_offline_env

    configure_offline_env()
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    try:
        train(parse_args(argv))
    except LafsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
