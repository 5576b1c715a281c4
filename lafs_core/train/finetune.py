"""`lafs finetune`: supervised CosFace fine-tuning of an SSL-initialised Part fViT (method.md 8, few-shot 9).

Initialisation: the ViT from an SSL teacher (our pretraining export, or the official LAFS checkpoint's ``teacher``
dict through the models' importer); the landmark CNN from a Part fViT checkpoint or a ``landmark_cnn.pt`` artifact,
trainable (a frozen copy anchors the landmark regulariser, on by default) or frozen (``freeze_landmark_cnn``).
Without a landmark model the model samples the regular layout of R landmarks (the grid). The classifier is sized to
the labelled set (the k-shot subset in the few-shot protocol).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lafs_core.checkpoint_io import read_checkpoint
from lafs_core.config.finetune import FinetuneConfig
from lafs_core.config.model import ModelConfig
from lafs_core.distributed import DistInfo
from lafs_core.errors import ConfigError, DataError
from lafs_core.eval.pairsets import PairSet
from lafs_core.losses.landmark_reg import frozen_copy, landmark_regularizer, regularizer_weight
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import ImportReport, convert_checkpoint, infer_model_config, load_parts
from lafs_core.models.face_model import FaceModel, fixed_landmarks
from lafs_core.train.loop import LoopResult, run_stage
from lafs_core.train.supervised import SupervisedStage

log = logging.getLogger(__name__)

STAGE = "finetune"
ARCH_FIELDS = ("dim", "depth", "mlp_dim", "patch_size", "sampler_convention")


def init_part(face: FaceModel, path: Path, part: str, cfg: ModelConfig) -> ImportReport:
    """Load one part (``backbone`` or ``landmark_cnn``) from any supported checkpoint; it must be complete.

    The checkpoint's architecture (as far as its shapes or header tell) and sampler convention must be those of
    ``cfg``: a convention mismatch would load but sample patches the weights never saw.
    """
    converted = convert_checkpoint(read_checkpoint(path))
    try:
        source_cfg = infer_model_config(converted)
    except (ValueError, KeyError):
        source_cfg = None
    if source_cfg is not None and part == "backbone":
        wrong = {f: getattr(source_cfg, f) for f in ARCH_FIELDS if getattr(source_cfg, f) != getattr(cfg, f)}
        inner = source_cfg.heads * source_cfg.dim_head
        if inner != cfg.heads * cfg.dim_head:
            wrong["heads x dim_head"] = inner
        if wrong:
            details = ", ".join(f"{name}={value}" for name, value in wrong.items())
            raise ConfigError(f"{path}: checkpoint model differs from the config ({details}); set model.* to match")
    report = load_parts(face, converted, [part], path)
    missing = [k for k in report.missing if k.startswith(f"{part}.")]
    if missing:
        raise DataError(path, f"checkpoint lacks {len(missing)} {part} keys, e.g. {missing[0]}")
    log.info("%s <- %s (%s); %d unused keys", part, path, report.kind, len(report.unexpected))
    return report


def build_finetune_model(cfg: FinetuneConfig) -> tuple[FaceModel, dict[str, str]]:
    """The initialised face model and a note of where each part came from.

    Without ``init_landmarks`` there is no landmark CNN: an untrained one would sample every patch at meaningless
    positions, so the model samples the regular layout of R landmarks instead, and the log says so.
    """
    torch.manual_seed(cfg.seed)
    face = build_face_model(cfg.model, with_landmark_cnn=cfg.init_landmarks is not None)
    side = round(cfg.model.num_landmarks**0.5)
    sources = {"backbone": "scratch", "landmark_cnn": f"none: the regular {side}x{side} layout"}
    if cfg.init_backbone is not None:
        sources["backbone"] = f"{init_part(face, cfg.init_backbone, 'backbone', cfg.model).kind}:{cfg.init_backbone}"
    if cfg.init_landmarks is None:
        log.info("no landmark model given: fine-tuning samples the regular %dx%d layout of landmarks", side, side)
        return face, sources
    report = init_part(face, cfg.init_landmarks, "landmark_cnn", cfg.model)
    sources["landmark_cnn"] = f"{report.kind}:{cfg.init_landmarks}"
    if cfg.freeze_landmark_cnn:
        face.landmark_cnn.requires_grad_(False)
        sources["landmark_cnn"] += " (frozen)"
    return face, sources


class FinetuneStage(SupervisedStage):
    """CosFace fine-tuning from the SSL teacher and a landmark CNN, with the landmark regulariser (method.md 8.4)."""

    name = STAGE

    def __init__(
        self,
        cfg: FinetuneConfig,
        dist: DistInfo,
        val_sets: Sequence[PairSet] = (),
        labels: tuple[int, int] | None = None,
    ) -> None:
        face, self.sources = build_finetune_model(cfg)
        trained = face.landmark_cnn is not None and not cfg.freeze_landmark_cnn
        self.reference = frozen_copy(face.landmark_cnn) if cfg.landmark_reg and trained else None
        super().__init__(cfg, dist, face, val_sets, labels)
        if self.reference is not None:
            self.reference.to(dist.device)

    def tags(self) -> dict[str, str]:
        return {f"lafs.init.{k}": v for k, v in self.sources.items()}

    def extra_loss(
        self, images: torch.Tensor, landmarks: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]] | None:
        """The staged-weight landmark regulariser against the frozen initial landmark CNN."""
        if self.reference is None:
            return None
        weight = regularizer_weight(epoch, self.cfg.landmark_reg_boundaries, self.cfg.landmark_reg_values)
        if weight == 0:
            return landmarks.new_zeros(()), {"landmark_reg": 0.0, "landmark_reg_weight": weight}
        target = fixed_landmarks(self.reference, images)
        reg = landmark_regularizer(landmarks, target, self.cfg.model.image_size)
        return weight * reg, {"landmark_reg": float(reg.detach()), "landmark_reg_weight": weight}

    def extra_state(self) -> dict[str, Any]:
        if self.reference is None:
            return {}
        return {"reference_landmark_cnn": {k: v.detach().cpu() for k, v in self.reference.state_dict().items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.reference is not None and "reference_landmark_cnn" in state:
            self.reference.load_state_dict(state["reference_landmark_cnn"])

    def summary(self, result: LoopResult) -> dict[str, Any]:
        return {**super().summary(result), "init": self.sources}


def run_finetune(cfg: FinetuneConfig, val_sets: Sequence[PairSet] = ()) -> dict[str, Any]:
    """Fine-tune and return the run summary."""
    return run_stage(lambda dist: FinetuneStage(cfg, dist, val_sets), cfg)
