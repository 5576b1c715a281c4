"""Batched photometric augmentation: each op equals torchvision's on the same factor; per-sample order and
probabilities; the batch permutation used internally is undone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torchvision.transforms.functional as TF

from lafs_core.data.augment import (
    GLOBAL_1,
    GLOBAL_2,
    LOCAL,
    PhotometricAugment,
    adjust_hue,
    blur,
    color_jitter,
    greyscale,
    recipe,
)

REFERENCE = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
IDENTITY = (1.0, 1.0, 1.0, 0.0)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 24, 24, generator=g)
    x[0, :, :4] = 0.5  # grey pixels (no hue)
    x[1, 0, :3] = x[1, 1, :3]  # ties for the max channel
    return x


@pytest.mark.parametrize(("op", "factor"), [(0, 1.4), (0, 0.6), (1, 1.4), (1, 0.6), (2, 1.2), (2, 0.8), (3, 0.1)])
def test_jitter_ops_match_torchvision(images, op, factor):
    factors = torch.tensor(IDENTITY).repeat(6, 1)
    factors[:, op] = factor
    order = torch.argsort(torch.rand(6, 4, generator=torch.Generator().manual_seed(op)), dim=1)
    ours = color_jitter(images * 255, factors, order) / 255
    torch.testing.assert_close(ours, REFERENCE[op](images, factor), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shift", [-0.5, -0.1, 0.03, 0.37, 0.5])
def test_hue_is_the_exact_hsv_rotation(images, shift):
    torch.testing.assert_close(
        adjust_hue(images, torch.full((6,), shift)), TF.adjust_hue(images, shift), atol=1e-5, rtol=0
    )


def test_each_sample_gets_its_own_op_order(images):
    factors = torch.tensor([1.3, 0.7, 1.15, 0.08]).repeat(6, 1)
    factors[::2] = torch.tensor([0.7, 1.3, 0.85, -0.09])
    order = torch.argsort(torch.rand(6, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    assert len({tuple(row) for row in order.tolist()}) > 3
    ours = color_jitter(images * 255, factors, order) / 255
    for i in range(6):
        expected = images[i]
        for op in order[i].tolist():
            expected = REFERENCE[op](expected, factors[i, op].item())
        torch.testing.assert_close(ours[i], expected, atol=1e-4, rtol=0)


def test_blur_matches_torchvision_per_sample_sigma(images):
    sigma = torch.tensor([0.3, 0.8, 1.0, 1.5, 2.0, 0.1])
    ours = blur(images, sigma)
    for i, s in enumerate(sigma.tolist()):
        torch.testing.assert_close(ours[i], TF.gaussian_blur(images[i], 13, s), atol=1e-5, rtol=0)


def test_nothing_enabled_is_identity():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    aug = PhotometricAugment(blur_p=0.0, jitter_p=0.0, grey_p=0.0)
    torch.testing.assert_close(aug(x), x.float())


def test_samples_keep_their_own_draws():
    """Brightness-only jitter scales each (distinct) sample by its own factor, greyscale keeps its luma."""
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 120 + 50
    aug = PhotometricAugment(blur_p=0.0, jitter_p=0.5, grey_p=0.5, contrast=0.0, saturation=0.0, hue=0.0)
    out = aug(x, torch.Generator().manual_seed(2))
    grey = (out[:, 0] == out[:, 1]).all(dim=(1, 2))
    source = torch.where(grey[:, None, None, None], greyscale(x).expand(-1, 3, -1, -1), x)
    ratio = out / source
    torch.testing.assert_close(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-5, rtol=0)
    scale = ratio[:, 0, 0, 0]
    assert ((scale >= 0.6 - 1e-5) & (scale <= 1.4 + 1e-5)).all()
    assert 0.3 < (scale != 1).float().mean() < 0.7 and 0.3 < grey.float().mean() < 0.7


def test_per_sample_probabilities():
    x = torch.rand(4000, 3, 4, 4) * 255
    x[:, 0] = 0
    g = torch.Generator().manual_seed(0)
    out = PhotometricAugment(blur_p=0.0, jitter_p=0.0, grey_p=0.2)(x, g)
    grey = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert abs(grey.float().mean().item() - 0.2) < 0.025
    solar = PhotometricAugment(blur_p=0.0, jitter_p=0.0, grey_p=0.0, solarize_p=0.2)
    flat = torch.full((4000, 3, 2, 2), 200.0)
    changed = ((solar(flat, g) - 55.0).abs() < 1e-3).all(dim=(1, 2, 3))
    assert abs(changed.float().mean().item() - 0.2) < 0.025
    jitter = PhotometricAugment(blur_p=0.0, grey_p=0.0, contrast=0.0, saturation=0.0, hue=0.0)(flat, g)
    assert abs((jitter != 200.0).all(dim=(1, 2, 3)).float().mean().item() - 0.8) < 0.025


def test_view_presets_and_reproducibility():
    assert (GLOBAL_1.blur_p, GLOBAL_1.solarize_p) == (1.0, 0.0)
    assert (GLOBAL_2.blur_p, GLOBAL_2.solarize_p) == (0.1, 0.2)
    assert (LOCAL.blur_p, LOCAL.solarize_p) == (0.5, 0.0)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    before = x.clone()
    first = GLOBAL_2(x, torch.Generator().manual_seed(5))
    again = GLOBAL_2(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, again)
    assert first.dtype == torch.float32 and first.min() >= 0 and first.max() <= 255
    assert not torch.equal(first, GLOBAL_2(x, torch.Generator().manual_seed(6)))
    assert torch.equal(x, before)
    floats = x.float()
    GLOBAL_1(floats, torch.Generator().manual_seed(5))
    assert torch.equal(floats, before.float())


def test_recipe_defaults_are_dino_and_strength_scales_the_jitter():
    assert recipe() == (GLOBAL_1, GLOBAL_2, LOCAL)
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    plain = replace(LOCAL, jitter_p=0.0, grey_p=0.0)
    _, _, zero = recipe(jitter_p=1.0, jitter_strength=0.0, grey_p=0.0)
    reference = plain(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(zero(x, torch.Generator().manual_seed(3)), reference, atol=1e-3, rtol=0)
    change = []
    for strength in (0.25, 1.0, 2.0):
        _, _, aug = recipe(jitter_p=1.0, jitter_strength=strength, grey_p=0.0)
        change.append((aug(x, torch.Generator().manual_seed(3)) - reference).abs().mean().item())
    assert change[0] < change[1] < change[2]
