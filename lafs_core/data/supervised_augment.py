"""The supervised (fine-tuning / Part fViT) augmentation chain, method.md 8.3, in the official order.

Per sample on RGB uint8 (3, H, W): horizontal flip -> timm RandAugment with the Solarize ops removed (as the
official ``rand_aa_face``) -> RandomResizedCrop (scale (0.9, 1)) -> ColorJitter 0.1 -> RandomErasing (p 0.5, scale
(0.02, 0.1), value 0). Then, on the normalised batch, timm ``Mixup`` (batch mode, no cutmix, no label smoothing),
which always returns soft targets for the soft-target margin loss.
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_choices, rand_augment_transform
from torchvision.transforms import v2

from lafs_core.config.finetune import AugmentConfig

GREY_FILL = (128, 128, 128)


def face_rand_augment(config_str: str) -> v2.Transform:
    """timm RandAugment from a config string (e.g. ``rand-m2-mstd0.5-inc1``) without Solarize/SolarizeAdd ops.

    Fill is grey 128 and the interpolation random bilinear/bicubic (timm's defaults), as the official code.
    """
    increasing = "inc1" in config_str.split("-")
    ops = [name for name in rand_augment_choices("default", increasing=increasing) if "Solarize" not in name]
    return rand_augment_transform(config_str, {"img_mean": GREY_FILL}, transforms=ops)


def sample_transform(cfg: AugmentConfig, image_size: int) -> v2.Transform:
    """The per-sample chain on a (3, H, W) uint8 tensor; returns uint8 of the same size."""
    steps: list[v2.Transform] = [v2.Identity()]
    if cfg.flip > 0:
        steps.append(v2.RandomHorizontalFlip(cfg.flip))
    if cfg.rand_augment:
        steps += [v2.ToPILImage(), face_rand_augment(cfg.rand_augment), v2.PILToTensor()]
    if cfg.crop_scale is not None:
        steps.append(v2.RandomResizedCrop(image_size, scale=cfg.crop_scale, antialias=True))
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        steps.append(v2.ColorJitter(j, j, j, j))
    if cfg.erasing_prob > 0:
        steps.append(v2.RandomErasing(cfg.erasing_prob, scale=cfg.erasing_scale, ratio=(0.3, 3.3), value=0))
    return v2.Compose(steps)


class SupervisedAugment:
    """Per-sample chain over a uint8 batch (B, 3, H, W), each sample with its own random draw."""

    def __init__(self, cfg: AugmentConfig, image_size: int) -> None:
        self.transform = sample_transform(cfg, image_size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augmented copy of a uint8 batch (CPU tensors: PIL ops need host memory)."""
        return torch.stack([self.transform(image) for image in images.cpu()])


def build_mixup(cfg: AugmentConfig, num_classes: int) -> Mixup:
    """timm batch mixup with the recipe's probability and alpha; targets come back as (B, C) soft labels."""
    return Mixup(
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=0.0,
        prob=cfg.mixup_prob,
        mode="batch",
        label_smoothing=0.0,
        num_classes=num_classes,
    )
