"""Geometric views as affines: transformed stored landmarks equal the landmarks found on the transformed image."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import RandomResizedCrop

from lafs_core.data.views import (
    Views,
    ViewSpec,
    apply_affine,
    crop_affine,
    invert_affine,
    random_boxes,
    render_views,
    sample_views,
    view_landmarks,
)
from lafs_core.models.sampler import grid_landmarks

SIZE = 112


def mirror_perm(side: int) -> torch.Tensor:
    """Flip permutation of an n x n row-major grid (exact)."""
    idx = torch.arange(side * side)
    return (idx // side) * side + side - 1 - idx % side


def blob_images(points: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """One single-channel image per point: a Gaussian blob centred on it (pixel-centre coordinates)."""
    ys, xs = torch.meshgrid(torch.arange(SIZE).double(), torch.arange(SIZE).double(), indexing="ij")
    d2 = (xs[None] - points[:, 0, None, None]) ** 2 + (ys[None] - points[:, 1, None, None]) ** 2
    return (255 * torch.exp(-d2 / (2 * sigma**2)))[:, None].float()


def centroids(images: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre (x, y) of each single-channel image: a detector of the known point set."""
    h, w = images.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    weight = images[:, 0].double()
    total = weight.sum(dim=(1, 2))
    return torch.stack(((weight * xs).sum(dim=(1, 2)) / total, (weight * ys).sum(dim=(1, 2)) / total), dim=1)


def test_full_box_is_identity_and_flip_is_the_mirror():
    boxes = torch.tensor([[0.0, 0.0, SIZE, SIZE]] * 2)
    affine = crop_affine(boxes, torch.tensor([False, True]), SIZE)
    torch.testing.assert_close(affine[0], torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
    torch.testing.assert_close(affine[1], torch.tensor([[-1.0, 0, SIZE - 1], [0, 1, 0]]))


def test_random_boxes_follow_the_scale_and_ratio_ranges():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(4000, SIZE, SIZE, (0.4, 1.0), (3 / 4, 4 / 3), g)
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= SIZE + 1e-4).all() and (y0 + h <= SIZE + 1e-4).all()
    area = w * h / SIZE**2
    assert area.min() >= 0.4 - 1e-5 and area.max() <= 1.0 + 1e-5
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    torch.manual_seed(0)
    image = torch.zeros(1, SIZE, SIZE)
    reference = [RandomResizedCrop.get_params(image, [0.4, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)]
    reference_area = sum(hh * ww for _, _, hh, ww in reference) / (4000 * SIZE**2)
    assert math.isclose(area.mean().item(), reference_area, abs_tol=0.015)


def test_inverse_affine_round_trip():
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(16, SIZE, SIZE, (0.4, 1.0), (3 / 4, 4 / 3), g)
    affine = crop_affine(boxes, torch.rand(16, generator=g) < 0.5, SIZE)
    points = torch.rand(16, 10, 2, generator=g) * SIZE
    back = apply_affine(apply_affine(points, invert_affine(affine)), affine)
    torch.testing.assert_close(back, points, atol=1e-4, rtol=0)


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_view_landmarks_equal_the_detected_points_of_the_rendered_view(flip_p):
    """Known point set: blobs at stored landmarks; blob centres found in each warped view = transformed landmarks."""
    g = torch.Generator().manual_seed(2)
    points = 40 + torch.rand(12, 2, generator=g).double() * 32
    images = blob_images(points)
    spec = ViewSpec(num_views=1, scale=(0.6, 1.0), flip_p=flip_p)
    for _ in range(4):
        views = sample_views(points[None].float(), spec, torch.arange(12), SIZE, g)
        crops = render_views(images, Views(views.affine.expand(12, -1, -1, -1), views.landmarks, views.flipped), SIZE)
        found = centroids(crops[:, 0])
        inside = ((views.landmarks[0, 0] > 10) & (views.landmarks[0, 0] < SIZE - 10)).all(dim=1)
        assert inside.sum() >= 6
        torch.testing.assert_close(found[inside].float(), views.landmarks[0, 0][inside], atol=0.05, rtol=0)
        assert bool(views.flipped[0, 0]) == (flip_p == 1.0)


def test_flipped_views_reindex_landmarks_by_the_flip_permutation():
    """A symmetric point set: after a flip, landmark j of the view sits where the mirrored partner perm[j] went."""
    g = torch.Generator().manual_seed(3)
    grid = grid_landmarks(SIZE, 16)
    perm = mirror_perm(7)
    views = sample_views(grid[None], ViewSpec(num_views=64, flip_p=0.5), perm, SIZE, g)
    moved = apply_affine(grid.double()[None], invert_affine(views.affine[0].double())).float()
    for v in range(64):
        expected = moved[v][perm] if views.flipped[0, v] else moved[v]
        torch.testing.assert_close(views.landmarks[0, v], expected, atol=1e-4, rtol=0)
    assert 0 < int(views.flipped.sum()) < 64


def test_grid_is_exactly_preserved_by_a_full_image_flip():
    """An equivariant source: the grid of the flipped image is the grid, and so are the flipped stored landmarks."""
    grid = grid_landmarks(SIZE, 8)
    affine = crop_affine(torch.tensor([[0.0, 0.0, SIZE, SIZE]]), torch.tensor([True]), SIZE)
    moved = view_landmarks(grid[None], affine, torch.tensor([True]), mirror_perm(14))
    torch.testing.assert_close(moved[0], grid, atol=1e-5, rtol=0)


def test_coordinate_image_sampled_at_view_landmarks_gives_stored_landmarks():
    """Render a view of an image whose pixels hold their own coordinates: at each view landmark it reads the source."""
    ys, xs = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    coords = torch.stack((xs, ys))[None]
    g = torch.Generator().manual_seed(4)
    stored = 20 + torch.rand(1, 30, 2, generator=g) * 72
    views = sample_views(stored, ViewSpec(num_views=8), torch.arange(30), SIZE, g)
    crops = render_views(coords, views, SIZE)[0]
    for v in range(8):
        lmk = views.landmarks[0, v]
        grid = (lmk + 0.5) / SIZE * 2 - 1
        read = torch.nn.functional.grid_sample(crops[v : v + 1], grid[None, None], align_corners=False)[0, :, 0].T
        inside = ((lmk > 1) & (lmk < SIZE - 2)).all(dim=1)
        assert inside.sum() >= 10
        torch.testing.assert_close(read[inside], stored[0][inside], atol=0.02, rtol=0)
