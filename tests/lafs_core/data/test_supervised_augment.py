"""The supervised augmentation chain: Solarize removed, each step where it should be, mixup soft targets."""

from __future__ import annotations

import torch

from lafs_core.config.finetune import AugmentConfig
from lafs_core.data.supervised_augment import SupervisedAugment, build_mixup, face_rand_augment

OFF = {"flip": 0.0, "rand_augment": None, "crop_scale": None, "color_jitter": 0.0, "erasing_prob": 0.0}


def test_rand_augment_has_the_recipe_ops_without_solarize() -> None:
    ra = face_rand_augment("rand-m2-mstd0.5-inc1")
    names = [op.name for op in ra.ops]
    assert len(names) == 13
    assert not any("Solarize" in name for name in names)
    assert {"Invert", "PosterizeIncreasing", "Rotate", "TranslateXRel"} <= set(names)
    assert all(op.magnitude == 2 and op.prob == 0.5 for op in ra.ops)
    assert ra.num_layers == 2


def test_disabled_chain_is_identity_and_flip_mirrors() -> None:
    images = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    assert torch.equal(SupervisedAugment(AugmentConfig(**OFF), 112)(images), images)
    flipped = SupervisedAugment(AugmentConfig(**{**OFF, "flip": 1.0}), 112)(images)
    assert torch.equal(flipped, images.flip(-1))


def test_full_chain_keeps_shape_and_dtype_and_changes_images() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 112, 112), dtype=torch.uint8)
    out = SupervisedAugment(AugmentConfig(), 112)(images)
    assert out.shape == images.shape
    assert out.dtype == torch.uint8
    assert not torch.equal(out, images)


def test_random_erasing_blanks_between_2_and_10_percent() -> None:
    torch.manual_seed(0)
    images = torch.full((16, 3, 112, 112), 200, dtype=torch.uint8)
    out = SupervisedAugment(AugmentConfig(**{**OFF, "erasing_prob": 1.0}), 112)(images)
    erased = (out == 0).all(dim=1).float().mean(dim=(1, 2))
    assert ((erased >= 0.015) & (erased <= 0.105)).all(), erased


def test_mixup_mixes_images_and_one_hot_targets_with_the_same_lambda() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 3, 4, 4)
    labels = torch.arange(8) % 5
    mixed, targets = build_mixup(AugmentConfig(mixup_prob=1.0, mixup_alpha=0.2), 5)(x.clone(), labels)
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    assert labels[0] != labels[7]
    lam = float(targets[0, labels[0]])
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
