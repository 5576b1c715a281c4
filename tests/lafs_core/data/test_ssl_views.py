"""SSL views: subset sampling, shuffle and perturbation statistics; canonical globals; online and dino-grid modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafs_core.config import load_config
from lafs_core.config.pretrain import PretrainConfig
from lafs_core.data.augment import PhotometricAugment
from lafs_core.data.normalize import normalize
from lafs_core.data.ssl_views import SSLViewMaker, perturb, subset_indices
from lafs_core.models.landmark_cnn import LandmarkCNN
from lafs_core.models.sampler import grid_landmarks, landmark_layout, sample_patches, warp_images


def _grid_flip_perm(side: int) -> torch.Tensor:
    return torch.arange(side * side).view(side, side).flip(1).reshape(-1)


def _faces(batch: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8, generator=gen)


def test_subset_with_replacement_has_expected_distinct_count() -> None:
    gen = torch.Generator().manual_seed(1)
    ids = subset_indices(4000, 196, 36, replacement=True, generator=gen)
    distinct = np.array([len(set(row)) for row in ids.tolist()])
    expected = 196 * (1 - (195 / 196) ** 36)
    assert expected == pytest.approx(32.9, abs=0.1)
    assert distinct.mean() == pytest.approx(expected, abs=0.1)
    assert distinct.max() <= 36
    assert (distinct < 36).mean() > 0.9


def test_subset_without_replacement_is_distinct_and_uniform() -> None:
    gen = torch.Generator().manual_seed(2)
    ids = subset_indices(3000, 196, 36, replacement=False, generator=gen)
    assert all(len(set(row)) == 36 for row in ids.tolist())
    counts = np.bincount(ids.reshape(-1).numpy(), minlength=196)
    expected = 3000 * 36 / 196
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    with pytest.raises(ValueError, match="without replacement"):
        subset_indices(1, 10, 11, replacement=False)


@pytest.mark.parametrize("replacement", [True, False])
def test_shuffle_breaks_the_id_to_slot_link(replacement: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    ids = subset_indices(5000, 49, 16, replacement=replacement, generator=gen).numpy()
    # every slot sees every landmark id about equally often: the slot says nothing about the id
    for slot in (0, 7, 15):
        counts = np.bincount(ids[:, slot], minlength=49)
        assert np.abs(counts - 5000 / 49).max() < 5 * np.sqrt(5000 / 49)
    # and the sequence is not sorted by id
    assert (np.diff(ids, axis=1) > 0).all(axis=1).mean() < 0.01


def test_perturbation_std_is_sigma_per_coordinate() -> None:
    gen = torch.Generator().manual_seed(4)
    points = torch.rand(2000, 49, 2) * 111
    moved = perturb(points, 5.0, gen)
    delta = (moved - points).reshape(-1, 2)
    assert delta.std(dim=0).tolist() == pytest.approx([5.0, 5.0], rel=0.02)
    assert delta.mean(dim=0).abs().max() < 0.05
    assert abs(float(torch.corrcoef(delta.T)[0, 1])) < 0.02
    assert torch.equal(perturb(points, 0.0, gen), points)


def _cfg(*overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, preset="tiny", overrides=list(overrides))


def test_lafs_views_shapes_canonical_globals_and_perturbation() -> None:
    cfg = _cfg("local_views=3", "sigma=3.0", "global_crops_scale=[1.0, 1.0]", "local_crops_scale=[1.0, 1.0]")
    grid = grid_landmarks(112, 16, "centered")
    maker = SSLViewMaker(cfg, _grid_flip_perm(7), seed=5)
    batch = 16
    views = maker(_faces(batch), grid.expand(batch, -1, -1))
    assert views.num_global == 2
    assert [t.shape[1] for t in views.tokens] == [49, 49, 16, 16, 16]
    assert all(t.shape == (batch, t.shape[1], 8 * 8 * 3) for t in views.tokens)
    # full-image crops of a flip-symmetric grid: the unperturbed view landmarks are the grid itself, in order,
    # flipped or not, so the deviation is pure perturbation noise of std sigma
    delta = torch.cat([views.landmarks[0], views.landmarks[1]]) - grid
    assert float(delta.std()) == pytest.approx(3.0, rel=0.05)
    assert float(delta.mean().abs()) < 0.1
    sigma0 = SSLViewMaker(_cfg("sigma=0", "global_crops_scale=[1.0, 1.0]"), _grid_flip_perm(7), seed=6)
    clean = sigma0(_faces(batch), grid.expand(batch, -1, -1))
    torch.testing.assert_close(clean.landmarks[0], grid.expand(batch, -1, -1), atol=1e-3, rtol=0)


def test_lafs_views_cropped_landmarks_follow_the_affine() -> None:
    cfg = _cfg("sigma=0", "local_views=1")
    grid = grid_landmarks(112, 16, "centered")
    views = SSLViewMaker(cfg, _grid_flip_perm(7), seed=7)(_faces(8), grid.expand(8, -1, -1))
    for v in range(2):
        aff = views.affines[v]
        source = views.landmarks[v] @ aff[:, :, :2].transpose(1, 2) + aff[:, None, :, 2]
        # mapped back to the source, each view landmark is one of the stored grid points
        dist = (
            torch.cdist(source, grid.expand(8, -1, -1), compute_mode="donot_use_mm_for_euclid_dist").min(dim=-1).values
        )
        assert float(dist.max()) < 1e-3


def test_online_mode_uses_the_landmark_cnn_on_every_view() -> None:
    torch.manual_seed(0)
    cnn = LandmarkCNN(49, width_mult=0.35, dropout=0.0).eval()
    cfg = _cfg("landmarks=online", "landmark_checkpoint=unused.pt", "sigma=0", "local_views=2")
    images = _faces(3)
    views = SSLViewMaker(cfg, _grid_flip_perm(7), landmark_model=cnn, seed=8)(images, torch.zeros(3, 49, 2))
    assert [t.shape[1] for t in views.tokens] == [49, 49, 16, 16]
    with torch.no_grad():
        crop = warp_images(images.float(), views.affines[0], (112, 112))
        expected = cnn(normalize(crop))
    torch.testing.assert_close(views.landmarks[0], expected, atol=1e-3, rtol=1e-4)


def test_dino_grid_multicrop() -> None:
    cfg = _cfg("method=dino-grid", "model.num_landmarks=196", "local_views=8", "dino_local_size=48")
    views = SSLViewMaker(cfg, seed=9)(_faces(2))
    assert [t.shape[1] for t in views.tokens] == [196, 196] + [36] * 8
    assert views.sizes == [112, 112] + [48] * 8
    local_affine = views.affines[2]
    crop_scale = (local_affine[:, 0, 0].abs() * local_affine[:, 1, 1] * 48 * 48) / (112 * 112)
    assert bool(((crop_scale >= 0.05 - 1e-4) & (crop_scale <= 0.4 + 1e-4)).all())
    torch.testing.assert_close(views.landmarks[2][0], grid_landmarks(48, 8, "centered"))
    torch.testing.assert_close(views.landmarks[0][0], grid_landmarks(112, 8, "centered"))


def test_dino_grid_globals_take_the_layout_of_r_landmarks() -> None:
    """With fewer landmarks than grid cells the grid baseline samples the same R-point layout a LAFS model starts
    from, and its locals have as many tokens as LAFS locals (tiny: 7x7 globals, 32-px locals of 4x4)."""
    views = SSLViewMaker(_cfg("method=dino-grid", "local_views=2"), seed=9)(_faces(2))
    assert [t.shape[1] for t in views.tokens] == [49, 49, 16, 16]
    torch.testing.assert_close(views.landmarks[1][1], landmark_layout(49, 112))
    assert views.sizes == [112, 112, 32, 32]


def _views_with(aug: PhotometricAugment, images: torch.Tensor, *overrides: str):
    maker = SSLViewMaker(_cfg("local_views=2", *overrides), _grid_flip_perm(7), seed=11)
    maker.augs = [aug, aug]
    maker.local_aug = aug
    return maker(images, grid_landmarks(112, 16, "centered").expand(images.shape[0], -1, -1))


def test_token_colour_equals_sampling_the_jittered_image() -> None:
    """Photometric ops run on the sampled tokens: with nothing drawn the tokens are the patches of the normalised
    image (perturbed points reach outside it, where taps read 0), and a brightness factor scales every token pixel
    of a sample alike, as brightening the image before sampling would."""
    images = _faces(6) // 2
    views = _views_with(PhotometricAugment(blur_p=0.0, jitter_p=0.0, grey_p=0.0), images, "sigma=6.0")
    for v, tokens in enumerate(views.tokens):
        expected = sample_patches(normalize(images), views.landmarks[v], 8, "centered", views.affines[v])
        torch.testing.assert_close(tokens, expected, atol=1e-4, rtol=0)
    bright = PhotometricAugment(blur_p=0.0, jitter_p=1.0, grey_p=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    full = ("sigma=0", "global_crops_scale=[1.0, 1.0]", "local_crops_scale=[1.0, 1.0]")
    views = _views_with(bright, images, *full)
    factors = []
    for v, tokens in enumerate(views.tokens):
        plain = sample_patches(images.float(), views.landmarks[v], 8, "centered", views.affines[v])
        ratio = (tokens + 1) * 127.5 / plain.clamp_min(1.0)
        keep = plain > 20
        per_sample = torch.stack([r[k].median() for r, k in zip(ratio, keep, strict=True)])
        torch.testing.assert_close(ratio[keep], per_sample[:, None, None].expand_as(ratio)[keep], atol=1e-3, rtol=0)
        factors.append(per_sample)
    factors = torch.cat(factors)
    assert bool(((factors > 0.6 - 1e-3) & (factors < 1.4 + 1e-3)).all())
    assert float(factors.std()) > 0.05
