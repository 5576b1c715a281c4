"""Geometric views as affines: random resized crop + horizontal flip, applied to landmarks, never to pixels.

An affine (B, 2, 3) maps VIEW pixel-centre coordinates to SOURCE-image pixel-centre coordinates (the sampler's
contract), so patches of a view are sampled straight from the stored image. The landmarks of a view are the stored
landmarks mapped by the inverse affine; on a flipped view they are re-indexed by the shards' flip permutation so
that landmark j keeps meaning what a landmark model run on the flipped image would call landmark j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ATTEMPTS = 10


@dataclass(frozen=True)
class ViewSpec:
    """Random resized crop (scale, ratio of the source area) + flip, rendered at ``size`` x ``size`` pixels."""

    num_views: int = 10
    size: int = 112
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5


@dataclass(frozen=True)
class Views:
    """``affine`` (B, V, 2, 3) view->source, ``landmarks`` (B, V, R, 2) in view pixels, ``flipped`` (B, V) bool."""

    affine: torch.Tensor
    landmarks: torch.Tensor
    flipped: torch.Tensor


def random_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, 4) crop boxes (x0, y0, w, h) in pixel-edge units, torchvision's RandomResizedCrop rule, vectorised.

    Ten (area, log-ratio) draws per sample; the first that fits wins; otherwise the centred crop of the whole image
    clamped to the ratio range.
    """
    area = height * width
    target = area * torch.empty(batch, ATTEMPTS).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(batch, ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    w = (target * aspect).sqrt()
    h = (target / aspect).sqrt()
    fits = (w <= width) & (h <= height)
    first = fits.float().argmax(dim=1)
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    source_ratio = width / height
    if source_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif source_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    none_fit = ~fits.any(dim=1)
    w = torch.where(none_fit, torch.full_like(w, fw), w)
    h = torch.where(none_fit, torch.full_like(h, fh), h)
    u = torch.rand(batch, 2, generator=generator)
    x0 = torch.where(none_fit, (width - w) / 2, u[:, 0] * (width - w))
    y0 = torch.where(none_fit, (height - h) / 2, u[:, 1] * (height - h))
    return torch.stack((x0, y0, w, h), dim=1)


def crop_affine(boxes: torch.Tensor, flipped: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 2, 3) view->source affines of crops ``boxes`` (x0, y0, w, h) rendered at ``size`` px, mirrored if flipped.

    View pixel centre u covers source edge coordinate x0 + (u + 0.5) w / size, i.e. source centre coordinate
    x0 + (u + 0.5) w / size - 0.5; a flip first maps u to size - 1 - u.
    """
    x0, y0, w, h = boxes.double().unbind(dim=1)
    sx, sy = w / size, h / size
    tx = x0 + 0.5 * sx - 0.5
    ty = y0 + 0.5 * sy - 0.5
    flip = flipped.to(torch.bool)
    ax = torch.where(flip, -sx, sx)
    tx = torch.where(flip, tx + sx * (size - 1), tx)
    zero = torch.zeros_like(sx)
    affine = torch.stack((torch.stack((ax, zero, tx), dim=1), torch.stack((zero, sy, ty), dim=1)), dim=1)
    return affine.float()


def apply_affine(points: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Map points (..., N, 2) by affines (..., 2, 3)."""
    return points @ affine[..., :, :2].transpose(-1, -2) + affine[..., None, :, 2]


def invert_affine(affine: torch.Tensor) -> torch.Tensor:
    """Inverse of affines (..., 2, 3)."""
    linear = torch.linalg.inv(affine[..., :, :2].double())
    shift = -(linear @ affine[..., :, 2:].double())
    return torch.cat((linear, shift), dim=-1).to(affine.dtype)


def view_landmarks(
    landmarks: torch.Tensor, affine: torch.Tensor, flipped: torch.Tensor, flip_perm: torch.Tensor
) -> torch.Tensor:
    """Stored landmarks (B, R, 2) in source pixels -> the view's landmarks (B, R, 2), re-indexed when flipped."""
    moved = apply_affine(landmarks.double(), invert_affine(affine.double())).to(landmarks.dtype)
    permuted = moved[:, flip_perm.to(moved.device)]
    return torch.where(flipped.to(torch.bool)[:, None, None], permuted, moved)


def sample_views(
    landmarks: torch.Tensor,
    spec: ViewSpec,
    flip_perm: torch.Tensor,
    image_size: int,
    generator: torch.Generator | None = None,
) -> Views:
    """Draw ``spec.num_views`` independent random views per sample for a batch of stored landmarks (B, R, 2)."""
    batch, num = landmarks.shape[0], spec.num_views
    boxes = random_boxes(batch * num, image_size, image_size, spec.scale, spec.ratio, generator)
    flipped = torch.rand(batch * num, generator=generator) < spec.flip_p
    affine = crop_affine(boxes, flipped, spec.size)
    repeated = landmarks.cpu().repeat_interleave(num, dim=0)
    moved = view_landmarks(repeated, affine, flipped, flip_perm)
    return Views(
        affine=affine.view(batch, num, 2, 3),
        landmarks=moved.view(batch, num, *landmarks.shape[1:]),
        flipped=flipped.view(batch, num),
    )


def render_views(images: torch.Tensor, views: Views, size: int) -> torch.Tensor:
    """The clean warped crops (B, V, C, size, size) float 0..255 of every view (online mode, parity checks)."""
    from lafs_core.models.sampler import warp_images

    batch, num = views.affine.shape[:2]
    source = images.float().repeat_interleave(num, dim=0)
    crops = warp_images(source, views.affine.reshape(batch * num, 2, 3).to(source.device), (size, size))
    return crops.view(batch, num, *crops.shape[1:])
