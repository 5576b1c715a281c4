"""LAFS self-supervised pretraining (method.md section 7): DINO student/teacher over landmark-token views.

Runs alone (``python -m lafs_core.train.pretrain --preset tiny data_dir=...``) or under torchrun, e.g. two nodes::

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m lafs_core.train.pretrain --config cfg.yaml --resume auto

The global batch is fixed by the config and split evenly over ranks; an "epoch" is a fixed number of iterations
(full global batches per pass over the manifest, unless configured), so every per-iteration schedule (lr, weight decay,
teacher momentum and temperature) is the same array on 1 or N ranks and a checkpoint resumes on any world size.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lafs_core.config import config_hash, dump_config, load_config
from lafs_core.config.pretrain import PretrainConfig
from lafs_core.data.ssl_views import SSLViewMaker, SSLViews
from lafs_core.errors import ConfigError, DataError, LafsError
from lafs_core.losses.dino import DINOLoss, koleo_loss
from lafs_core.models.build import build_backbone, build_dino_head
from lafs_core.models.vit import GridFViT, PartFViT, compile_blocks
from lafs_core.train import checkpointing as ckpt
from lafs_core.train import tracking
from lafs_core.train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
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


def autocast_dtype(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA devices that support it ('auto'/'bf16'); None (fp32) on CPU or with amp='none'."""
    if cfg.amp == "none" or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


def build_networks(cfg: PretrainConfig) -> tuple[MultiCropNet, MultiCropNet]:
    """Student and teacher (a frozen copy of the student): Part fViT, or the grid fViT for dino-grid."""
    backbone = GridFViT(cfg.model) if cfg.method == "dino-grid" else build_backbone(cfg.model)
    student = MultiCropNet(backbone, build_dino_head(cfg.model))
    teacher = copy.deepcopy(student)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return student, teacher


def load_landmark_model(cfg: PretrainConfig, device: torch.device) -> nn.Module | None:
    """The frozen landmark CNN of ``landmark_checkpoint`` for ``landmarks=online`` (fp32, eval, no grad)."""
    if cfg.method != "lafs" or cfg.landmarks != "online":
        return None
    from lafs_core.models.checkpoint import load_face_model

    face = load_face_model(cfg.landmark_checkpoint)
    if face.landmark_cnn is None:
        raise DataError(cfg.landmark_checkpoint, "checkpoint has no landmark CNN for landmarks=online")
    if face.landmark_cnn.num_landmarks != cfg.model.num_landmarks:
        raise ConfigError(
            f"landmark CNN predicts {face.landmark_cnn.num_landmarks} landmarks, model.num_landmarks="
            f"{cfg.model.num_landmarks}"
        )
    cnn = face.landmark_cnn.to(device).float().eval()
    for param in cnn.parameters():
        param.requires_grad_(False)
    return cnn


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


class Trainer:
    """One pretraining run: state, the step, checkpoints and logging."""

    def __init__(self, cfg: PretrainConfig, dist: DistInfo, info: dict[str, Any] | None = None) -> None:
        """Build the networks, optimiser, loss and view maker; ``info`` defaults to the shards' ``_info.json``."""
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.run_dir = Path(cfg.output_dir)
        self.info = info if info is not None else shard_info(cfg)
        self.batch = per_rank_batch(cfg, dist.world_size)
        self.schedules = build_schedules(cfg, iterations_per_epoch(cfg, self.info))
        self.total_steps = min(self.schedules.total, cfg.max_steps or self.schedules.total)
        torch.manual_seed(cfg.seed)
        self.student, self.teacher = build_networks(cfg)
        self.student.to(self.device)
        self.teacher.to(self.device)
        self.teacher.train(cfg.teacher_mode == "train")
        if cfg.compile:
            compile_blocks(self.student)
            compile_blocks(self.teacher)
        self.optimizer = build_adamw(self.student, self.schedules.lr[0], cfg.weight_decay)
        self.loss_fn = DINOLoss(
            cfg.model.dino_out_dim,
            cfg.student_temp,
            cfg.center_momentum,
            cfg.teacher_centering,
            cfg.sinkhorn_iterations,
        ).to(self.device)
        self.landmark_model = load_landmark_model(cfg, self.device)
        flip = torch.as_tensor(self.info.get("flip_permutation", []), dtype=torch.long)
        self.views = SSLViewMaker(
            cfg, flip if flip.numel() else None, self.landmark_model, seed=cfg.seed + 1000 * dist.rank
        )
        self.amp = autocast_dtype(cfg, self.device)
        self.step = 0
        self.run_id: str | None = None
        self.ddp: nn.Module = self.student
        self.history = self.run_dir / "history.jsonl"

    # --- state -------------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """A world-size-independent checkpoint (plain tensors and Python values; loads with weights_only)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.step // self.schedules.iters_per_epoch,
            "iters_per_epoch": self.schedules.iters_per_epoch,
            "world_size": self.dist.world_size,
            "config": self.cfg.model_dump(mode="json"),
            "config_hash": config_hash(self.cfg),
            "mlflow_run_id": self.run_id,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dino_loss": self.loss_fn.state_dict(),
        }

    def restore(self, path: Path) -> None:
        """Load a checkpoint taken on any world size and continue its schedule."""
        state = ckpt.load_checkpoint(path, map_location=self.device)
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
        self.step = int(state["step"])
        self.run_id = state.get("mlflow_run_id")
        log.info("resumed from %s at step %d (saved on %d ranks)", path, self.step, state["world_size"])

    def save(self, path: Path | None = None) -> Path | None:
        """Rank 0 writes the checkpoint atomically (periodic ones are pruned to ``keep_checkpoints``)."""
        if not self.dist.is_main:
            return None
        target = path or ckpt.step_checkpoint_path(self.run_dir, self.step)
        ckpt.atomic_torch_save(self.state(), target)
        if path is None:
            ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
        return target

    # --- the step ----------------------------------------------------------------------------------------------

    def train_step(self, views: SSLViews) -> dict[str, float]:
        """One optimiser step on prepared views; returns the loss and the schedule values used."""
        values = self.schedules.at(self.step)
        set_lr(self.optimizer, values["lr"])
        set_weight_decay(self.optimizer, values["wd"])
        epoch = self.step // self.schedules.iters_per_epoch
        enabled = self.amp is not None
        with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=enabled):
            with torch.no_grad():
                teacher_out = self.teacher(views.tokens[: views.num_global])
            student_out, embeddings = self.ddp(views.tokens, return_embeddings=True)
        dino = self.loss_fn(student_out, teacher_out, values["teacher_temp"])
        koleo = torch.zeros((), device=self.device)
        if self.cfg.koleo_weight > 0:
            koleo = torch.stack([koleo_loss(e) for e in embeddings[: views.num_global]]).mean()
        loss = dino + self.cfg.koleo_weight * koleo
        flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=self.device)
        all_reduce_sum(flags)
        if flags.item() > 0:
            path = self.save(ckpt.checkpoint_dir(self.run_dir) / f"nonfinite_step_{self.step:08d}.pt")
            raise LafsError(
                f"pretraining stopped: non-finite DINO loss ({loss.item()}) at step {self.step} (epoch {epoch}); "
                f"state before the step saved to {path}; try amp=none, a lower base_lr or a higher teacher_temp"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = clip_gradients(self.student, self.cfg.clip_grad) if self.cfg.clip_grad > 0 else []
        cancel_last_layer_gradients(self.student, epoch, self.cfg.freeze_last_layer)
        self.optimizer.step()
        ema_update(self.teacher, self.student, values["momentum"])
        self.step += 1
        grad_norm = float(np.sqrt(np.sum(np.square(norms)))) if norms else 0.0
        dino_loss, entropy = float(dino.detach()), self.loss_fn.last_teacher_entropy()
        return {
            "loss": float(loss.detach()),
            "dino_loss": dino_loss,
            "koleo": float(koleo.detach()),
            "grad_norm": grad_norm,
            "teacher_entropy": entropy,
            "student_teacher_kl": dino_loss - entropy,
            **values,
        }

    # --- the loop ----------------------------------------------------------------------------------------------

    def fit(self) -> Path | None:
        """Train from the current step to the end (or ``max_steps``); returns the exported teacher on rank 0."""
        cfg = self.cfg
        if self.dist.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.student, device_ids=device_ids)
        stop = ckpt.StopRequest()
        probe = self._probe_set()
        batches = training_batches(cfg, self.dist, self.batch, self.schedules.iters_per_epoch, self.step)
        self.views.generator.manual_seed(cfg.seed + 1000 * self.dist.rank + 7919 * self.step)
        try:
            with tracking.stage_run(STAGE, cfg, run_id=self.run_id) as run:
                if run is not None:
                    self.run_id = run.info.run_id
                    import mlflow

                    mlflow.set_tags({"lafs.method": cfg.method, "lafs.sigma": str(cfg.sigma)})
                    dump_config(cfg, self.run_dir / "config.yaml")
                exported = self._loop(batches, stop, probe)
        finally:
            stop.restore()
        return exported

    def _loop(self, batches: Iterator[dict[str, Any]], stop: ckpt.StopRequest, probe: Any) -> Path | None:
        cfg = self.cfg
        first = self.step
        tick = time.perf_counter()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="pretrain", disable=not self.dist.is_main)
        while self.step < self.total_steps:
            batch = next(batches)
            images = batch["images"].to(self.device, non_blocking=True)
            landmarks = batch["landmarks"].to(self.device, non_blocking=True)
            views = self.views(images, landmarks)
            if self.step == first and self.dist.is_main:
                self._log_view_png(images, views)
            metrics = self.train_step(views)
            self._append_history(metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - tick
                done = self.step - first
                metrics["step_time"] = elapsed / max(done, 1)
                metrics["images_per_s"] = done * cfg.global_batch_size / max(elapsed, 1e-9)
                metrics["center_norm"] = self.loss_fn.center_norm()
                metrics["epoch"] = (self.step - 1) // self.schedules.iters_per_epoch
                tracking.log_metrics(metrics, step=self.step)
                log.info("step %d/%d loss %.4f", self.step, self.total_steps, metrics["loss"])
            if probe is not None and cfg.probe_every and self.step % cfg.probe_every == 0:
                self._run_probe(probe)
            stopping = self._stop_requested(stop)
            if stopping or self.step % cfg.checkpoint_every == 0:
                self.save()
            if stopping:
                barrier()
                raise LafsError(f"pretraining stopped by signal at step {self.step}; resume with --resume auto")
        bar.close()
        self.save()
        if probe is not None and cfg.probe_every and self.step % cfg.probe_every:
            self._run_probe(probe)
        exported = self._export()
        barrier()
        return exported

    def _stop_requested(self, stop: ckpt.StopRequest) -> bool:
        """True on every rank as soon as any rank got SIGTERM/SIGINT (so all stop at the same step)."""
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=self.device)
        all_reduce_sum(flag)
        return bool(flag.item() > 0)

    def _append_history(self, metrics: dict[str, float]) -> None:
        """Rank 0 appends ``{step, loss, lr, wd, momentum, teacher_temp}`` to ``history.jsonl`` (resume audits)."""
        if self.dist.is_main:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            record = {"step": self.step - 1, "world_size": self.dist.world_size, **metrics}
            with self.history.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    # --- probe, artefacts, export ------------------------------------------------------------------------------

    def _probe_set(self) -> Any:
        if not self.cfg.probe_every:
            return None
        from lafs_core.train.ssl_probe import build_probe_set

        probe = build_probe_set(self.cfg.data_dir, self.cfg.probe_pairs, self.cfg.seed)
        if probe is None:
            log.warning("no same-identity pairs in %s: the live probe is off", self.cfg.data_dir)
        return probe

    def _probe_tokens(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        backbone = self.teacher.backbone
        if self.cfg.method == "dino-grid":
            return backbone.tokenize(images)
        if self.landmark_model is not None:
            with torch.autocast(self.device.type, enabled=False):
                landmarks = self.landmark_model(images.float())
        return backbone.tokenize(images, landmarks)

    def _run_probe(self, probe: Any) -> None:
        from lafs_core.train.ssl_probe import probe_accuracy

        accuracy = probe_accuracy(self.teacher.backbone, probe, self._probe_tokens, self.device)
        tracking.log_metrics({"probe/verification_acc": accuracy}, step=self.step)
        if self.dist.is_main:
            with (self.run_dir / "probe.jsonl").open("a") as handle:
                handle.write(json.dumps({"step": self.step, "accuracy": accuracy}) + "\n")
        log.info("step %d probe verification accuracy %.4f", self.step, accuracy)

    def _log_view_png(self, images: torch.Tensor, views: SSLViews) -> None:
        from lafs_core.train.ssl_plots import save_view_png

        path = save_view_png(self.run_dir / "views.png", images, views, self.cfg.model.patch_size)
        tracking.log_artifact(path)

    def _export(self) -> Path | None:
        """Rank 0 writes the teacher backbone (+ DINO head) in the models' checkpoint format, stage 'pretrain'."""
        if not self.dist.is_main:
            return None
        from lafs_core.models.checkpoint import save_model_checkpoint
        from lafs_core.models.face_model import FaceModel

        model_cfg = self.cfg.model
        if self.cfg.method == "dino-grid":
            model_cfg = model_cfg.model_copy(update={"sampler_convention": "centered"})
        face = FaceModel(model_cfg, self.landmark_model)
        face.backbone.load_state_dict(self.teacher.backbone.state_dict())
        path = save_model_checkpoint(
            self.run_dir / "teacher.pt",
            face.cpu(),
            self.cfg.preset,
            STAGE,
            dino_head=self.teacher.head,
            method=self.cfg.method,
            sigma=self.cfg.sigma,
            step=self.step,
            config_hash=config_hash(self.cfg),
        )
        tracking.log_artifact(path)
        tracking.log_artifact(self.run_dir / "config.yaml")
        return path


def train(cfg: PretrainConfig) -> Path | None:
    """Run (or resume) pretraining in this process (one rank of a torchrun job, or alone)."""
    dist = init_distributed(None if cfg.backend == "auto" else cfg.backend)
    try:
        trainer = Trainer(cfg, dist)
        resume = ckpt.resolve_resume(cfg.resume, trainer.run_dir)
        if resume is not None:
            trainer.restore(resume)
        return trainer.fit()
    finally:
        cleanup()


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
