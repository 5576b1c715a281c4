"""Landmark patch sampler: vectorised == per-landmark reference, conventions, gradients, affine views, grid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lafs_core.models.sampler import grid_landmarks, grid_patches, sample_patches, warp_images

SIZE = 112


def reference_patches(images: torch.Tensor, landmarks: torch.Tensor, patch: int, convention: str) -> torch.Tensor:
    """One grid_sample per landmark, written straight from method.md section 3 / the sampler docstring."""
    b, _, h, w = images.shape
    tokens = []
    for n in range(landmarks.shape[1]):
        x = landmarks[:, n, 0][:, None, None]
        y = landmarks[:, n, 1][:, None, None]
        if convention == "official":
            u = torch.arange(-(patch // 2), patch - patch // 2, dtype=landmarks.dtype)
            # grid[b, a, c] = ((x + u_a) / (W/2) - 1, (y + u_c) / (H/2) - 1): patch row a <-> horizontal offset.
            gx = (x + u[None, :, None]) / (w / 2) - 1
            gy = (y + u[None, None, :]) / (h / 2) - 1
        else:
            o = torch.arange(patch, dtype=landmarks.dtype) - (patch - 1) / 2
            # grid[b, r, c] = pixel centre (x + o_c, y + o_r) in align_corners=False coordinates.
            gx = (2 * (x + o[None, None, :]) + 1) / w - 1
            gy = (2 * (y + o[None, :, None]) + 1) / h - 1
        grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        tokens.append(out.permute(0, 2, 3, 1).reshape(b, -1))
    return torch.stack(tokens, dim=1)


def index_image() -> torch.Tensor:
    """(1, 3, H, W): channel 0 = row index, channel 1 = column index, channel 2 = 7."""
    rows = torch.arange(SIZE, dtype=torch.float32)[:, None].expand(SIZE, SIZE)
    cols = torch.arange(SIZE, dtype=torch.float32)[None, :].expand(SIZE, SIZE)
    return torch.stack((rows, cols, torch.full_like(rows, 7.0)))[None]


def smooth_image(batch: int = 1) -> torch.Tensor:
    """Low-frequency RGB content, so that two bilinear resamplings stay close to one."""
    ys, xs = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    chans = [torch.sin(xs / 9 + k) * torch.cos(ys / 13 - k) + 0.3 * torch.sin((xs + ys) / 17) for k in range(3)]
    return torch.stack(chans)[None].repeat(batch, 1, 1, 1)


@pytest.mark.parametrize("convention", ["official", "centered"])
@pytest.mark.parametrize("patch", [8, 5])
def test_vectorised_matches_per_landmark_reference(convention: str, patch: int) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
    landmarks = torch.rand(3, 37, 2, generator=gen, dtype=torch.float64) * 130 - 9  # some beyond the border
    fast = sample_patches(images, landmarks, patch, convention)
    assert fast.shape == (3, 37, patch * patch * 3)
    torch.testing.assert_close(fast, reference_patches(images, landmarks, patch, convention), atol=1e-9, rtol=0)


def test_official_convention_transpose_and_half_pixel_shift() -> None:
    tokens = sample_patches(index_image(), torch.tensor([[[40.0, 20.0]]]), 8, "official").view(8, 8, 3)
    steps = torch.arange(-4, 4, dtype=torch.float32)
    # token (a, c, ch): a (patch row) walks the horizontal offset, c walks the vertical one, shifted by -0.5.
    expected_col = (40 + steps - 0.5)[:, None].expand(8, 8)
    expected_row = (20 + steps - 0.5)[None, :].expand(8, 8)
    torch.testing.assert_close(tokens[..., 1], expected_col)
    torch.testing.assert_close(tokens[..., 0], expected_row)
    torch.testing.assert_close(tokens[..., 2], torch.full((8, 8), 7.0))
    assert tokens[0, 0, 1] == pytest.approx(35.5) and tokens[-1, 0, 1] == pytest.approx(42.5)


def test_centered_convention_is_centred_and_not_transposed() -> None:
    tokens = sample_patches(index_image(), torch.tensor([[[40.0, 20.0]]]), 8, "centered").view(8, 8, 3)
    steps = torch.arange(8, dtype=torch.float32) - 3.5
    torch.testing.assert_close(tokens[..., 0], (20 + steps)[:, None].expand(8, 8))
    torch.testing.assert_close(tokens[..., 1], (40 + steps)[None, :].expand(8, 8))
    assert tokens[..., 0].mean() == pytest.approx(20.0) and tokens[..., 1].mean() == pytest.approx(40.0)


def test_out_of_image_taps_are_zero() -> None:
    image = torch.ones(1, 3, SIZE, SIZE)
    tokens = sample_patches(image, torch.tensor([[[-20.0, 50.0], [50.0, 200.0]]]), 8, "centered")
    assert torch.count_nonzero(tokens) == 0


@pytest.mark.parametrize("convention", ["official", "centered"])
def test_gradient_reaches_coordinates_and_matches_finite_differences(convention: str) -> None:
    image = smooth_image()
    landmarks = torch.tensor([[[40.3, 52.7], [70.2, 30.6]]], dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 2, 192, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def objective(lm: torch.Tensor) -> torch.Tensor:
        return (sample_patches(image.double(), lm, 8, convention) * weights).sum()

    objective(landmarks).backward()
    grad = landmarks.grad
    assert grad is not None and torch.all(grad != 0)
    eps = 1e-4
    for n in range(2):
        for axis in range(2):
            step = torch.zeros_like(landmarks)
            step[0, n, axis] = eps
            numeric = (objective(landmarks + step) - objective(landmarks - step)) / (2 * eps)
            assert grad[0, n, axis].item() == pytest.approx(numeric.item(), rel=1e-3, abs=1e-6)


def cv2_view(image: torch.Tensor, affine: torch.Tensor, size: int) -> torch.Tensor:
    """The view as OpenCV renders it: view pixel (x, y) <- source (affine @ (x, y, 1)), bilinear, zero border."""
    hwc = image[0].permute(1, 2, 0).numpy().astype(np.float32)
    out = cv2.warpAffine(
        hwc,
        affine[0].numpy().astype(np.float64),
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return torch.from_numpy(out).permute(2, 0, 1)[None]


def crop_scale_flip(scale: float, tx: float, ty: float, flip: bool, view: int = SIZE) -> torch.Tensor:
    """Affine (1, 2, 3) view -> source for a crop at (tx, ty) of side ``scale * view``, optionally mirrored."""
    sx = -scale if flip else scale
    ox = tx + (scale * (view - 1) if flip else 0.0)
    return torch.tensor([[[sx, 0.0, ox], [0.0, scale, ty]]], dtype=torch.float32)


@pytest.mark.parametrize("convention", ["official", "centered"])
@pytest.mark.parametrize(
    ("scale", "tx", "ty", "flip"), [(0.7, 13.2, 20.6, False), (0.55, 30.0, 8.0, True), (1.2, -9.0, -4.5, True)]
)
def test_affine_path_equals_crop_then_sample(convention: str, scale: float, tx: float, ty: float, flip: bool) -> None:
    image = smooth_image()
    affine = crop_scale_flip(scale, tx, ty, flip)
    view = cv2_view(image, affine, SIZE)
    torch.testing.assert_close(warp_images(image, affine, (SIZE, SIZE)), view, atol=0.02, rtol=0)
    # Taps stay a pixel inside the source: at its border, zero padding enters the two paths differently.
    landmarks = torch.rand(1, 30, 2, generator=torch.Generator().manual_seed(2)) * 72 + 16
    direct = sample_patches(image, landmarks, 8, convention, affine=affine)
    cropped = sample_patches(view, landmarks, 8, convention)
    assert (direct - cropped).abs().max() < 0.02
    assert (direct - cropped).abs().mean() < 0.004


def test_affine_integer_translation_and_flip_is_exact() -> None:
    image = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    affine = torch.cat((crop_scale_flip(1.0, 7.0, -5.0, True), crop_scale_flip(1.0, -3.0, 11.0, False)))
    view = torch.cat([cv2_view(image[i : i + 1], affine[i : i + 1], SIZE) for i in range(2)])
    landmarks = torch.rand(2, 20, 2, generator=torch.Generator().manual_seed(4)) * 80 + 16
    for convention in ("official", "centered"):
        direct = sample_patches(image, landmarks, 8, convention, affine=affine)
        torch.testing.assert_close(direct, sample_patches(view, landmarks, 8, convention), atol=1e-4, rtol=0)


@pytest.mark.parametrize("convention", ["official", "centered"])
def test_grid_landmarks_reproduce_non_overlapping_patches(convention: str) -> None:
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    landmarks = grid_landmarks(SIZE, 8, convention)
    assert landmarks.shape == (196, 2)
    sampled = sample_patches(images, landmarks.expand(2, -1, -1), 8, convention)
    torch.testing.assert_close(grid_patches(images, 8, convention), sampled, atol=2e-4, rtol=0)


def test_centered_grid_patches_are_the_row_major_image_blocks() -> None:
    images = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    tokens = grid_patches(images, 8, "centered")
    block = images[0, :, 8 * 2 : 8 * 3, 8 * 5 : 8 * 6]  # grid row 2, column 5 -> token 2 * 14 + 5
    torch.testing.assert_close(tokens[0, 2 * 14 + 5], block.permute(1, 2, 0).reshape(-1))
