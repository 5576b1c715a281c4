"""Batched photometric augmentation on image tensors, one random draw per sample (method.md 7.1).

Colour jitter (brightness .4, contrast .4, saturation .2, hue .1, in a random order per sample) with p=0.8,
greyscale p=0.2, Gaussian blur (sigma U(0.1, 2.0)) and solarize (threshold 128) with per-view-type probabilities:
``GLOBAL_1`` blur 1.0; ``GLOBAL_2`` blur 0.1 + solarize 0.2; ``LOCAL`` blur 0.5. Images are (B, 3, H, W) uint8 or
float 0..255 on any device; the result is float32 0..255, ready for ``normalize``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)
BLUR_KERNEL = 13


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of RGB images (B, 3, H, W)."""
    r, g, b = x.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = x.unbind(dim=1)
    high, argmax = x.max(dim=1)
    low = x.min(dim=1).values
    delta = high - low
    safe = delta.clamp_min(1e-8)
    hue = torch.where(
        argmax == 0, ((g - b) / safe) % 6, torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(high > 0, delta / high.clamp_min(1e-8), torch.zeros_like(high))
    return torch.stack((hue, sat, high), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] -> RGB in [0, 1]."""
    h, s, v = x.unbind(dim=1)
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device)[None, :, None, None] + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (B,), reflect padding."""
    batch, channels, height, width = x.shape
    taps = torch.arange(BLUR_KERNEL, device=x.device, dtype=x.dtype) - BLUR_KERNEL // 2
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    pad = BLUR_KERNEL // 2
    y = x.reshape(1, batch * channels, height, width)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=batch * channels)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kernel[:, None, :, None], groups=batch * channels)
    return y.view(batch, channels, height, width)


@dataclass(frozen=True)
class PhotometricAugment:
    """One view type's photometric pipeline with per-sample probabilities."""

    blur_p: float
    solarize_p: float = 0.0
    jitter_p: float = 0.8
    grey_p: float = 0.2
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch; random draws come from ``generator`` (CPU) so results are reproducible per seed."""
        batch = images.shape[0]
        device = images.device
        x = images.float() / 255.0

        def draw(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator).to(device)

        jitter = draw(batch) < self.jitter_p
        order = torch.argsort(torch.rand(batch, 4, generator=generator), dim=1).to(device)
        factors = draw(batch, 4)
        for slot in range(4):
            for op in range(4):
                idx = torch.nonzero(jitter & (order[:, slot] == op)).squeeze(1)
                if idx.numel():
                    x[idx] = self._jitter(x[idx], op, factors[idx, op])
        grey = torch.nonzero(draw(batch) < self.grey_p).squeeze(1)
        if grey.numel():
            x[grey] = greyscale(x[grey]).expand(-1, 3, -1, -1)
        blur_on = draw(batch) < self.blur_p
        sigma = self.blur_sigma[0] + draw(batch) * (self.blur_sigma[1] - self.blur_sigma[0])
        idx = torch.nonzero(blur_on).squeeze(1)
        if idx.numel():
            x[idx] = blur(x[idx], sigma[idx])
        solar = draw(batch) < self.solarize_p
        idx = torch.nonzero(solar).squeeze(1)
        if idx.numel():
            x[idx] = torch.where(x[idx] >= 0.5, 1.0 - x[idx], x[idx])
        return x.clamp_(0.0, 1.0).mul_(255.0)

    def _jitter(self, x: torch.Tensor, op: int, u: torch.Tensor) -> torch.Tensor:
        """Apply jitter op (0 brightness, 1 contrast, 2 saturation, 3 hue) with uniform draws ``u`` in [0, 1)."""
        if op == 3:
            shift = (u * 2 - 1) * self.hue
            hsv = rgb_to_hsv(x)
            hsv[:, 0] = (hsv[:, 0] + shift[:, None, None]) % 1.0
            return hsv_to_rgb(hsv)
        strength = (self.brightness, self.contrast, self.saturation)[op]
        factor = (1 - strength + u * 2 * strength)[:, None, None, None]
        if op == 0:
            return (x * factor).clamp(0, 1)
        grey = greyscale(x)
        base = grey.mean(dim=(2, 3), keepdim=True) if op == 1 else grey
        return (base + factor * (x - base)).clamp(0, 1)


GLOBAL_1 = PhotometricAugment(blur_p=1.0)
GLOBAL_2 = PhotometricAugment(blur_p=0.1, solarize_p=0.2)
LOCAL = PhotometricAugment(blur_p=0.5)
