"""Batched photometric augmentation on image tensors, one random draw per sample (method.md 7.1).

Colour jitter (brightness .4, contrast .4, saturation .2, hue .1, in a random order per sample) with p=0.8,
greyscale p=0.2, Gaussian blur (sigma U(0.1, 2.0)) and solarize (threshold 128) with per-view-type probabilities:
``GLOBAL_1`` blur 1.0; ``GLOBAL_2`` blur 0.1 + solarize 0.2; ``LOCAL`` blur 0.5. Images are (B, 3, H, W) uint8 or
float 0..255 on any device; the result is float32 0..255, ready for ``normalize``.

Everything is vectorised over the batch (no loop over samples) and works in float32 on the 0..255 scale, in
place where safe. The batch is first permuted so that the samples whose hue op sits in order slot k form one
contiguous block (undone at the end). The jitter then takes one pass per order slot: every jittered sample gets a
per-sample affine colour map ``f * x + w * grey + c`` (brightness, contrast or saturation; identity where its op
in that slot is hue), then that slot's hue block gets the exact HSV hue rotation in place. The ops equal
torchvision's functional ones on the same factors (luma weights are PIL's .299/.587/.114).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)
BLUR_KERNEL = 13
MAX_VALUE = 255.0
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of RGB images (B, 3, H, W)."""
    r, g, b = x.unbind(dim=1)
    return (r * LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate the hue of RGB images (B, 3, H, W) by ``shift`` (B,) turns, as torchvision's HSV round trip.

    Scale-free (any value range). With ``high``/``low`` the channel max/min and ``h`` the hue in turns, channel
    ``c`` becomes ``high - (high - low) * clamp(2 - 6 * d_c, 0, 1)``, where ``d_c`` is the distance of
    ``h + shift + (1/2, 1/6, -1/6)[c]`` to the nearest integer. ``out`` may be ``x`` (in place).
    """
    r, g, b = x.unbind(dim=1)
    high = torch.maximum(torch.maximum(r, g), b)
    delta = high - torch.minimum(torch.minimum(r, g), b)
    inv = delta.clamp_min(1e-12).reciprocal_().mul_(1 / 6)
    hue = torch.where(
        high == r,
        (g - b).mul_(inv),
        torch.where(high == g, (b - r).mul_(inv).add_(1 / 3), (r - g).mul_(inv).add_(2 / 3)),
    )
    hue.add_(shift.to(x.device, x.dtype)[:, None, None])
    offsets = torch.tensor([1 / 2, 1 / 6, -1 / 6], device=x.device, dtype=x.dtype)[None, :, None, None]
    turns = hue.unsqueeze(1) + offsets
    weight = turns.sub_(turns.round()).abs_().mul_(-6).add_(2).clamp_(0, 1).mul_(delta.unsqueeze(1))
    return torch.sub(high.unsqueeze(1), weight, out=out)


def hue_order(order: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """A batch permutation that groups samples by the slot of their hue op, and the group sizes.

    Groups 0..3: active samples whose hue op is in that slot; group 4: inactive samples. In the permuted batch each
    slot's hue samples are one contiguous slice, so the hue op runs in place on a view (no gather/scatter).
    """
    key = torch.where(active, (order == HUE).int().argmax(dim=1), order.shape[1])
    perm = torch.argsort(key, stable=True)
    return perm, torch.bincount(key, minlength=order.shape[1] + 1).tolist()


def jitter_sorted_(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, groups: list[int]) -> None:
    """Colour jitter in place on a batch permuted by :func:`hue_order` (``factors``/``order`` permuted alike)."""
    device, dtype = x.device, x.dtype
    active = sum(groups[:-1])
    y = x[:active]
    rows = torch.arange(active)
    factors, order = factors[:active], order[:active]
    start = 0
    for slot in range(order.shape[1]):
        op = order[:, slot]
        factor = torch.where(op == HUE, 1.0, factors[rows, op.clamp_max(SATURATION)])
        if (factor != 1).any():
            blend = 1 - factor
            weight = torch.where(op == SATURATION, blend, 0.0)
            contrast = torch.where(op == CONTRAST, blend, 0.0)
            grey = greyscale(y) if (weight != 0).any() or (contrast != 0).any() else None
            y.mul_(factor.to(device, dtype)[:, None, None, None])
            if grey is not None:
                offset = contrast.to(device, dtype) * grey.mean(dim=(1, 2, 3))
                y.add_(offset[:, None, None, None]).addcmul_(grey, weight.to(device, dtype)[:, None, None, None])
            y.clamp_(0, MAX_VALUE)
        stop = start + groups[slot]
        if stop > start:
            hue = y[start:stop]
            adjust_hue(hue, factors[start:stop, HUE], out=hue)
        start = stop


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Colour-jitter float images (B, 3, H, W) on the 0..255 scale, each sample with its own op order.

    ``factors`` (B, 4): brightness, contrast and saturation blend factors (1 = unchanged) and the hue shift in turns;
    ``order`` (B, 4): a permutation of the ops (0 brightness, 1 contrast, 2 saturation, 3 hue) per sample. Both on the
    CPU. Each linear op clamps to 0..255, as torchvision's. Returns a new tensor.
    """
    perm, groups = hue_order(order, torch.ones(x.shape[0], dtype=torch.bool))
    on_device = perm.to(x.device)
    y = x.index_select(0, on_device)
    jitter_sorted_(y, factors[perm], order[perm], groups)
    return y.index_select(0, torch.argsort(perm).to(x.device))


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (B,), reflect padding: two depthwise convs over the batch.

    Each pass pads only its own axis (padding both up front makes the first pass convolve 12 extra rows; this is
    ~1.7x faster on CPU and gives the same values).
    """
    batch, channels, height, width = x.shape
    taps = torch.arange(BLUR_KERNEL, device=x.device, dtype=x.dtype) - BLUR_KERNEL // 2
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None].to(x.device, x.dtype) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    pad = BLUR_KERNEL // 2
    y = F.pad(x.reshape(1, batch * channels, height, width), (pad, pad, 0, 0), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=batch * channels)
    y = F.pad(y, (0, 0, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel[:, None, :, None], groups=batch * channels)
    return y.view(batch, channels, height, width)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert values at or above the midpoint (PIL threshold 128 on uint8) of 0..255 images."""
    return torch.where(x >= MAX_VALUE / 2, MAX_VALUE - x, x)


@dataclass(frozen=True)
class PhotometricDraws:
    """One batch's random draws of a :class:`PhotometricAugment` (per sample, on the CPU)."""

    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    grey: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


def _apply_where(
    x: torch.Tensor, mask: torch.Tensor, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``op(rows, ids)`` on the rows of ``x`` selected by ``mask`` (in place where possible); returns ``x``."""
    idx = torch.nonzero(mask).squeeze(1)
    if idx.numel() == x.shape[0]:
        return op(x, idx).contiguous()
    if idx.numel():
        rows = idx.to(x.device)
        x.index_copy_(0, rows, op(x.index_select(0, rows), idx))
    return x


@dataclass(frozen=True)
class PhotometricAugment:
    """One view type's photometric pipeline with per-sample probabilities.

    ``aug(images, generator)`` runs jitter -> greyscale -> blur -> solarize on whole images (DINO's order). The
    SSL views split it: :meth:`draw` once, :meth:`blur_where` on the source images before the patches are sampled
    and :meth:`colour` (jitter, greyscale, solarize: per-pixel ops) on the sampled tokens only, which touches
    3-12x fewer pixels than whole images at the tiny preset.
    """

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
        return self.colour(images, self.draw(images.shape[0], generator), with_blur=True)

    def draw(self, batch: int, generator: torch.Generator | None = None) -> PhotometricDraws:
        """Every random choice of a batch: which ops apply to which sample, the jitter factors and op order."""
        u = torch.rand(batch, 9, generator=generator)
        order = torch.argsort(torch.rand(batch, 4, generator=generator), dim=1)
        low, high = self.blur_sigma
        return PhotometricDraws(
            jitter=u[:, 0] < self.jitter_p,
            factors=self.jitter_factors(u[:, 5:]),
            order=order,
            grey=u[:, 1] < self.grey_p,
            blur=u[:, 2] < self.blur_p,
            sigma=low + u[:, 3] * (high - low),
            solarize=u[:, 4] < self.solarize_p,
        )

    def blur_where(self, images: torch.Tensor, draws: PhotometricDraws) -> torch.Tensor:
        """Float32 copy of ``images`` with the drawn samples blurred."""
        x = images.to(torch.float32, copy=True)
        return _apply_where(x, draws.blur, lambda sub, idx: blur(sub, draws.sigma[idx]))

    def colour(self, images: torch.Tensor, draws: PhotometricDraws, with_blur: bool = False) -> torch.Tensor:
        """Jitter -> greyscale -> (blur) -> solarize of (B, 3, H, W) images as drawn; float32 0..255, a new tensor.

        Without blur every op is per pixel (contrast uses the mean grey of what it is given), so ``images`` may be
        any (B, 3, N, 1) arrangement of pixels, e.g. the sampled patch tokens of a view.
        """
        batch, device = images.shape[0], images.device
        perm, groups = hue_order(draws.order, draws.jitter)
        x = images.index_select(0, perm.to(device)).to(torch.float32)
        if groups[-1] < batch:
            jitter_sorted_(x, draws.factors[perm], draws.order[perm], groups)
        sigma = draws.sigma[perm]
        ops = [(draws.grey[perm], lambda sub, _: greyscale(sub).expand(-1, 3, -1, -1))]
        if with_blur:
            ops.append((draws.blur[perm], lambda sub, idx: blur(sub, sigma[idx])))
        ops.append((draws.solarize[perm], lambda sub, _: solarize(sub)))
        for mask, op in ops:
            x = _apply_where(x, mask, op)
        return x.index_select(0, torch.argsort(perm).to(device)).clamp_(0, MAX_VALUE)

    def jitter_factors(self, u: torch.Tensor) -> torch.Tensor:
        """(B, 4) brightness/contrast/saturation factors U(1 - s, 1 + s) and hue shifts U(-h, h) from U(0, 1) draws."""
        strength = torch.tensor([self.brightness, self.contrast, self.saturation, self.hue])
        base = torch.tensor([1.0, 1.0, 1.0, 0.0])
        return base - strength + u * 2 * strength


GLOBAL_1 = PhotometricAugment(blur_p=1.0)
GLOBAL_2 = PhotometricAugment(blur_p=0.1, solarize_p=0.2)
LOCAL = PhotometricAugment(blur_p=0.5)


def recipe(
    jitter_p: float = 0.8, jitter_strength: float = 1.0, grey_p: float = 0.2
) -> tuple[PhotometricAugment, PhotometricAugment, PhotometricAugment]:
    """(GLOBAL_1, GLOBAL_2, LOCAL) with the colour-jitter probability, a factor on all four jitter strengths (as
    SimCLR's ``s``) and the greyscale probability replaced; the defaults give the DINO/LAFS recipe unchanged."""
    return tuple(
        replace(
            aug,
            jitter_p=jitter_p,
            grey_p=grey_p,
            brightness=aug.brightness * jitter_strength,
            contrast=aug.contrast * jitter_strength,
            saturation=aug.saturation * jitter_strength,
            hue=aug.hue * jitter_strength,
        )
        for aug in (GLOBAL_1, GLOBAL_2, LOCAL)
    )
