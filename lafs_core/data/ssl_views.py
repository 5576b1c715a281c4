"""A batch of faces -> the token views of one SSL step (method.md 7.1, 7.2, 7.4, 7.7), batched on tensors.

LAFS (``method="lafs"``): ``G`` global views keep all R landmarks in canonical order; ``L`` local views keep a sparse
subset of ``n`` landmarks drawn with or without replacement in random order (the "shuffle": the model's position
slots follow the sequence position, not the landmark id). Every landmark coordinate of every view gets Gaussian
noise of ``sigma`` pixels (the "perturbation"). Geometric crops/flips never touch pixels: each view is an affine
(``lafs_core.data.views``) and its patches are sampled straight from the source image.
Photometric ops follow DINO's per-view recipe (G1: blur 1.0; G2: blur 0.1 + solarize 0.2; locals: blur 0.5; colour
jitter and greyscale as configured) but run where they are cheapest: the blur on the source image before sampling
(its sigma is in source pixels), then colour jitter, greyscale and solarize on the sampled patch pixels only. Those
are per-pixel ops, so this equals jittering the image except that (a) the blur comes before the jitter instead of
after it (equal for the linear ops up to clamping), (b) bilinear taps are jittered after interpolation, and (c) the
contrast op blends towards the mean grey of the view's patches rather than of the whole image.

Landmarks are either the shards' precomputed ones mapped into each view (``"precomputed"``) or the frozen
landmark CNN's prediction on every clean warped view (``"online"``, paper-exact: fp32, eval mode, no gradient).

``method="dino-grid"``: the regular-grid fViT with standard DINO multi-crop (method.md 7.7): globals at
``image_size`` px sampled at the regular layout of R landmarks (the non-overlapping patch grid when R = (image /
patch)^2, as in the paper; the same R tokens as LAFS otherwise), locals at ``dino_local_size`` px on their patch grid
(48 px -> 36 tokens at patch 8), no landmark augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lafs_core.config.pretrain import PretrainConfig
from lafs_core.data.augment import recipe
from lafs_core.data.normalize import normalize
from lafs_core.data.views import Views, ViewSpec, crop_affine, random_boxes, render_views, sample_views
from lafs_core.models.face_model import fixed_landmarks
from lafs_core.models.sampler import grid_landmarks, landmark_layout, sample_patches


@dataclass(frozen=True)
class SSLViews:
    """Token views of one step: ``tokens[v]`` (B, n_v, P*P*3), the first ``num_global`` are the teacher's.

    ``landmarks[v]`` (B, n_v, 2) are the view-pixel points the tokens were sampled at (after perturbation),
    ``affines[v]`` (B, 2, 3) the view->source maps, ``sizes[v]`` the view side in pixels (for plots).
    """

    tokens: list[torch.Tensor]
    landmarks: list[torch.Tensor]
    affines: list[torch.Tensor]
    sizes: list[int]
    num_global: int


def subset_indices(
    batch: int, num_landmarks: int, size: int, replacement: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, size) landmark ids in random order, drawn uniformly with or without replacement."""
    if replacement:
        return torch.randint(num_landmarks, (batch, size), generator=generator)
    if size > num_landmarks:
        raise ValueError(f"cannot draw {size} of {num_landmarks} landmarks without replacement")
    return torch.argsort(torch.rand(batch, num_landmarks, generator=generator), dim=1)[:, :size]


def perturb(landmarks: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add independent Gaussian noise of std ``sigma`` pixels to every coordinate (not clamped: zero padding)."""
    if sigma <= 0:
        return landmarks
    noise = torch.randn(landmarks.shape, generator=generator).to(landmarks.device, landmarks.dtype)
    return landmarks + sigma * noise


class SSLViewMaker:
    """Turns ``(images uint8 (B,3,H,W), landmarks (B,R,2))`` into :class:`SSLViews` for the configured method.

    Random draws come from a CPU generator seeded per rank so every rank sees different views.
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        flip_perm: torch.Tensor | None = None,
        landmark_model: nn.Module | None = None,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.model_cfg = cfg.model
        self.convention = "centered" if cfg.method == "dino-grid" else cfg.model.sampler_convention
        self.generator = torch.Generator().manual_seed(seed)
        *global_augs, self.local_aug = recipe(cfg.color_jitter_p, cfg.color_jitter_strength, cfg.grayscale_p)
        self.augs = global_augs[: cfg.global_views]
        if cfg.method == "lafs":
            if flip_perm is None:
                raise ValueError("LAFS views need the shards' landmark flip permutation")
            if cfg.landmarks == "online" and landmark_model is None:
                raise ValueError("landmarks='online' needs a landmark model")
        self.flip_perm = flip_perm
        self.landmark_model = landmark_model

    def __call__(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> SSLViews:
        """Build all views of a batch on ``images.device``."""
        if self.cfg.method == "dino-grid":
            return self._grid_views(images)
        if landmarks is None:
            raise ValueError("LAFS views need landmarks")
        return self._lafs_views(images, landmarks)

    def _view_tokens(
        self, images: torch.Tensor, points: list[torch.Tensor], affines: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Normalised tokens of every view: blur the source as drawn, sample the patches at ``points`` through
        ``affines``, then colour-jitter / greyscale / solarize the sampled pixels only.

        The sources are centred (x - 127.5) before sampling so that out-of-image taps read mid-grey, which is 0 after
        normalisation, as sampling a normalised image would. The locals share one draw and one colour call.
        """
        batch, patch = images.shape[0], self.model_cfg.patch_size
        groups = [(aug, [v]) for v, aug in enumerate(self.augs)]
        if len(points) > len(self.augs):
            groups.append((self.local_aug, list(range(len(self.augs), len(points)))))
        tokens: list[torch.Tensor] = [images.new_empty(0)] * len(points)
        for aug, views in groups:
            draws = aug.draw(batch * len(views), self.generator)
            sources = aug.blur_where(images.repeat(len(views), 1, 1, 1), draws).sub_(127.5).chunk(len(views))
            raw = torch.cat(
                [
                    sample_patches(src, points[v], patch, self.convention, affines[v])
                    for v, src in zip(views, sources, strict=True)
                ]
            ).add_(127.5)
            pixels = raw.view(raw.shape[0], -1, 3).transpose(1, 2).unsqueeze(-1)
            coloured = normalize(aug.colour(pixels, draws)).squeeze(-1).transpose(1, 2).reshape(raw.shape)
            for v, chunk in zip(views, coloured.chunk(len(views)), strict=True):
                tokens[v] = chunk
        return tokens

    def _lafs_views(self, images: torch.Tensor, landmarks: torch.Tensor) -> SSLViews:
        cfg, mcfg = self.cfg, self.model_cfg
        batch, size = images.shape[0], mcfg.image_size
        specs = [
            ViewSpec(cfg.global_views, size, tuple(cfg.global_crops_scale)),
            ViewSpec(cfg.local_views, size, tuple(cfg.local_crops_scale)),
        ]
        affines: list[torch.Tensor] = []
        points: list[torch.Tensor] = []
        for spec in specs:
            if spec.num_views == 0:
                continue
            views = sample_views(landmarks.float().cpu(), spec, self.flip_perm, size, self.generator)
            view_affine = views.affine.to(images.device)
            if cfg.landmarks == "online":
                view_points = self._predict(images, views)
            else:
                view_points = views.landmarks.to(images.device)
            for v in range(spec.num_views):
                affines.append(view_affine[:, v])
                points.append(view_points[:, v])
        used = []
        for v, pts in enumerate(points):
            if v >= cfg.global_views:
                ids = subset_indices(batch, pts.shape[1], cfg.subset_size, cfg.subset_replacement, self.generator)
                pts = torch.gather(pts, 1, ids.to(pts.device)[..., None].expand(-1, -1, 2))
            used.append(perturb(pts, cfg.sigma, self.generator))
        tokens = self._view_tokens(images, used, affines)
        return SSLViews(tokens, used, affines, [size] * len(affines), cfg.global_views)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor, views: Views) -> torch.Tensor:
        """Landmark CNN (fp32, eval) on the clean warped crops: (B, V, R, 2) in view pixels."""
        batch, num = views.affine.shape[:2]
        size = self.model_cfg.image_size
        crops = render_views(images, views, size).reshape(batch * num, 3, size, size)
        return fixed_landmarks(self.landmark_model, normalize(crops)).view(batch, num, -1, 2)

    def _grid_views(self, images: torch.Tensor) -> SSLViews:
        cfg, mcfg = self.cfg, self.model_cfg
        batch, size = images.shape[0], mcfg.image_size
        global_grid = landmark_layout(mcfg.num_landmarks, size, self.convention)
        local_grid = grid_landmarks(cfg.dino_local_size, mcfg.patch_size, self.convention)
        layout = [
            (cfg.global_views, size, cfg.global_crops_scale, global_grid),
            (cfg.local_views, cfg.dino_local_size, cfg.dino_local_crops_scale, local_grid),
        ]
        affines: list[torch.Tensor] = []
        points: list[torch.Tensor] = []
        sizes: list[int] = []
        for count, view_size, crop_scale, grid in layout:
            grid = grid.to(images.device)
            for _ in range(count):
                boxes = random_boxes(batch, size, size, tuple(crop_scale), (3 / 4, 4 / 3), self.generator)
                flipped = torch.rand(batch, generator=self.generator) < 0.5
                affines.append(crop_affine(boxes, flipped, view_size).to(images.device))
                points.append(grid.expand(batch, -1, -1))
                sizes.append(view_size)
        return SSLViews(self._view_tokens(images, points, affines), points, affines, sizes, cfg.global_views)
