"""Landmark patch sampler: one vectorised bilinear ``grid_sample`` for all landmarks of all views.

Coordinates are pixel-centre coordinates: pixel (row i, col j) has centre (x=j, y=i). Two conventions:

- ``centered`` (models trained here): the P x P patch is centred on the landmark, offsets
  ``-(P-1)/2 .. (P-1)/2``; patch row = image row; token = flatten over (row, col, channel), channel fastest.
- ``official`` (released checkpoints, method.md section 3): offsets ``-P/2 .. P/2-1`` and a -0.5 half-pixel shift;
  the patch is the *transpose* of the image region (patch row index <-> horizontal offset u); token = flatten over
  (u, v, channel), channel fastest.

An optional per-view affine (B, 2, 3) maps view pixel coordinates to source-image pixel coordinates, so the patches
of a cropped / flipped / rescaled view are sampled straight from the source image.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Convention = Literal["official", "centered"]
CONVENTIONS: tuple[str, ...] = ("official", "centered")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown sampler convention {convention!r}; choose one of {CONVENTIONS}")


def patch_offsets(patch_size: int, convention: Convention, device=None, dtype=None) -> torch.Tensor:
    """(P*P, 2) offsets (dx, dy) in pixels, in token order, including the convention's half-pixel shift."""
    _check_convention(convention)
    steps = torch.arange(patch_size, device=device, dtype=dtype or torch.float32)
    if convention == "centered":
        steps = steps - (patch_size - 1) / 2
        dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    else:
        steps = steps - patch_size // 2 - 0.5
        dx, dy = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack((dx.reshape(-1), dy.reshape(-1)), dim=-1)


def grid_landmarks(image_size: int, patch_size: int, convention: Convention = "centered") -> torch.Tensor:
    """(R, 2) row-major landmarks of the non-overlapping P x P grid; sampling there reproduces the patches exactly."""
    _check_convention(convention)
    cells = image_size // patch_size
    start = torch.arange(cells, dtype=torch.float32) * patch_size
    centre = start + ((patch_size - 1) / 2 if convention == "centered" else patch_size // 2 + 0.5)
    ys, xs = torch.meshgrid(centre, centre, indexing="ij")
    return torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=-1)


def landmark_layout(num_landmarks: int, image_size: int, convention: Convention = "centered") -> torch.Tensor:
    """(R, 2) centres of the regular sqrt(R) x sqrt(R) layout of R landmarks over the image, row-major.

    Where untrained landmarks start (the landmark CNN's initial output, the rows of the position table) and where a
    model without a landmark CNN samples its patches: the "grid" of R landmarks. With R = (image / patch)^2 it is
    :func:`grid_landmarks` of the patch size, i.e. the non-overlapping patch grid.
    """
    side = round(num_landmarks**0.5)
    if side * side != num_landmarks or image_size % side:
        raise ValueError(f"{num_landmarks} landmarks make no square layout on a {image_size}-pixel image")
    return grid_landmarks(image_size, image_size // side, convention)


def grid_patches(images: torch.Tensor, patch_size: int, convention: Convention = "centered") -> torch.Tensor:
    """Non-overlapping patches (B, R, P*P*C) by reshaping; equals ``sample_patches`` at ``grid_landmarks``."""
    _check_convention(convention)
    b, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    x = images[:, :, : gh * patch_size, : gw * patch_size]
    x = x.reshape(b, c, gh, patch_size, gw, patch_size)
    order = (0, 2, 4, 3, 5, 1) if convention == "centered" else (0, 2, 4, 5, 3, 1)
    return x.permute(order).reshape(b, gh * gw, patch_size * patch_size * c)


def sample_points(
    landmarks: torch.Tensor, patch_size: int, convention: Convention, affine: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, N, P*P, 2) source-image pixel-centre coordinates of every tap, in token order."""
    offsets = patch_offsets(patch_size, convention, device=landmarks.device, dtype=landmarks.dtype)
    points = landmarks[:, :, None, :] + offsets
    if affine is not None:
        affine = affine.to(points.dtype)
        points = torch.einsum("bij,bnkj->bnki", affine[:, :, :2], points) + affine[:, None, None, :, 2]
    return points


def sample_patches(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    patch_size: int = 8,
    convention: Convention = "centered",
    affine: torch.Tensor | None = None,
) -> torch.Tensor:
    """Patches (B, N, P*P*C) around ``landmarks`` (B, N, 2) (x, y), bilinear, zero padding, differentiable.

    ``affine`` (B, 2, 3), when given, maps the landmarks' (view) pixel coordinates to ``images`` pixel coordinates.
    """
    b, c, h, w = images.shape
    points = sample_points(landmarks, patch_size, convention, affine)
    scale = points.new_tensor([2.0 / w, 2.0 / h])
    grid = (points + 0.5) * scale - 1.0
    n = landmarks.shape[1]
    taps = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return taps.permute(0, 2, 3, 1).reshape(b, n, patch_size * patch_size * c)


def warp_images(images: torch.Tensor, affine: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Render views (B, C, H', W') whose pixel (x, y) shows source point ``affine @ (x, y, 1)`` (bilinear, zeros)."""
    height, width = size
    ys, xs = torch.meshgrid(
        torch.arange(height, device=images.device, dtype=torch.float32),
        torch.arange(width, device=images.device, dtype=torch.float32),
        indexing="ij",
    )
    view = torch.stack((xs, ys), dim=-1).reshape(1, height * width, 2).expand(images.shape[0], -1, -1)
    points = torch.einsum("bij,bnj->bni", affine[:, :, :2].float(), view) + affine[:, None, :, 2].float()
    h, w = images.shape[-2:]
    grid = (points + 0.5) * points.new_tensor([2.0 / w, 2.0 / h]) - 1.0
    grid = grid.reshape(-1, height, width, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
