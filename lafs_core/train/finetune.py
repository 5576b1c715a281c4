"""`lafs finetune`: supervised CosFace fine-tuning of an SSL-initialised Part fViT (method.md 8, few-shot 9).

Initialisation: the ViT from an SSL teacher (our pretraining export, or the official LAFS checkpoint's ``teacher``
dict through the models' importer); the landmark CNN from a Part fViT checkpoint or a ``landmark_cnn.pt`` artifact,
trainable. A frozen copy of that initial landmark CNN anchors the landmark regulariser (on by default). The
classifier is sized to the labelled set (the k-shot subset in the few-shot protocol).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lafs_core.config.finetune import FinetuneConfig
from lafs_core.config.model import ModelConfig
from lafs_core.errors import ConfigError, DataError
from lafs_core.losses.landmark_reg import frozen_copy, landmark_regularizer, regularizer_weight
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import (
    ImportReport,
    convert_checkpoint,
    infer_model_config,
    load_parts,
    read_checkpoint,
)
from lafs_core.models.face_model import FaceModel
from lafs_core.train.supervised import StageHooks, train_supervised

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
    """The initialised face model and a note of where each part came from."""
    torch.manual_seed(cfg.seed)
    face = build_face_model(cfg.model, with_landmark_cnn=True)
    sources = {"backbone": "scratch", "landmark_cnn": "scratch"}
    if cfg.init_backbone is not None:
        sources["backbone"] = f"{init_part(face, cfg.init_backbone, 'backbone', cfg.model).kind}:{cfg.init_backbone}"
    if cfg.init_landmarks is not None:
        report = init_part(face, cfg.init_landmarks, "landmark_cnn", cfg.model)
        sources["landmark_cnn"] = f"{report.kind}:{cfg.init_landmarks}"
    return face, sources


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and return the run summary."""
    face, sources = build_finetune_model(cfg)
    reference = frozen_copy(face.landmark_cnn) if cfg.landmark_reg else None
    image_size = cfg.model.image_size

    def extra_loss(images: torch.Tensor, landmarks: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        weight = regularizer_weight(epoch, cfg.landmark_reg_boundaries, cfg.landmark_reg_values)
        if reference is None or weight == 0:
            return landmarks.new_zeros(()), {"landmark_reg": 0.0, "landmark_reg_weight": weight}
        reference.to(images.device)
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            target = reference(images.float())
        reg = landmark_regularizer(landmarks, target, image_size)
        return weight * reg, {"landmark_reg": float(reg.detach()), "landmark_reg_weight": weight}

    def extra_state() -> dict[str, Any]:
        if reference is None:
            return {}
        return {"reference_landmark_cnn": {k: v.detach().cpu() for k, v in reference.state_dict().items()}}

    def load_extra_state(state: dict[str, Any]) -> None:
        if reference is not None and "reference_landmark_cnn" in state:
            reference.load_state_dict(state["reference_landmark_cnn"])

    hooks = StageHooks(
        STAGE,
        face,
        extra_loss=extra_loss if reference is not None else None,
        extra_state=extra_state,
        load_extra_state=load_extra_state,
        tags={f"lafs.init.{k}": v for k, v in sources.items()},
    )
    summary = train_supervised(cfg, hooks)
    summary["init"] = sources
    return summary
