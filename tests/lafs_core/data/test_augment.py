"""Batched photometric augmentation: each op equals torchvision's on the same factor; per-sample probabilities."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from lafs_core.data.augment import GLOBAL_1, GLOBAL_2, LOCAL, PhotometricAugment, blur, hsv_to_rgb, rgb_to_hsv


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 24, 24, generator=g)


def only(op: int, strength: float) -> PhotometricAugment:
    """Jitter op ``op`` at the top of its range (draw u = 1 gives factor 1 + strength)."""
    fields = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    fields[("brightness", "contrast", "saturation", "hue")[op]] = strength
    return PhotometricAugment(blur_p=0.0, **fields)


@pytest.mark.parametrize(
    ("op", "reference"),
    [
        (0, lambda x: TF.adjust_brightness(x, 1.4)),
        (1, lambda x: TF.adjust_contrast(x, 1.4)),
        (2, lambda x: TF.adjust_saturation(x, 1.2)),
        (3, lambda x: TF.adjust_hue(x, 0.1)),
    ],
)
def test_jitter_ops_match_torchvision(images, op, reference):
    strength = (0.4, 0.4, 0.2, 0.1)[op]
    ours = only(op, strength)._jitter(images.clone(), op, torch.ones(6))
    torch.testing.assert_close(ours, reference(images), atol=1e-4, rtol=0)


def test_hsv_round_trip(images):
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(images)), images, atol=1e-5, rtol=0)


def test_blur_matches_torchvision_per_sample_sigma(images):
    sigma = torch.tensor([0.3, 0.8, 1.0, 1.5, 2.0, 0.1])
    ours = blur(images, sigma)
    for i, s in enumerate(sigma.tolist()):
        torch.testing.assert_close(ours[i], TF.gaussian_blur(images[i], 13, s), atol=1e-5, rtol=0)


def test_nothing_enabled_is_identity():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    aug = PhotometricAugment(blur_p=0.0, jitter_p=0.0, grey_p=0.0)
    torch.testing.assert_close(aug(x), x.float())


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


def test_view_presets_and_reproducibility():
    assert (GLOBAL_1.blur_p, GLOBAL_1.solarize_p) == (1.0, 0.0)
    assert (GLOBAL_2.blur_p, GLOBAL_2.solarize_p) == (0.1, 0.2)
    assert (LOCAL.blur_p, LOCAL.solarize_p) == (0.5, 0.0)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    first = GLOBAL_2(x, torch.Generator().manual_seed(5))
    again = GLOBAL_2(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, again)
    assert first.dtype == torch.float32 and first.min() >= 0 and first.max() <= 255
    assert not torch.equal(first, GLOBAL_2(x, torch.Generator().manual_seed(6)))
