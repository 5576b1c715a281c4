"""SSL step throughput: images/s of one pretraining step (views + student/teacher + DINO loss + update).

Three data paths on the same real LFW faces and the same networks (tiny preset by default), in one run:

- ``precomputed``: stored landmarks through the view affines, batched tensor augmentation, one vectorised sampler
  call per view (``lafs_core.data.ssl_views``);
- ``online``: the same, but the frozen landmark CNN runs on every clean warped view (paper-exact);
- ``reference``: the official data path (method.md 7.1/7.2): per image and per view a PIL random-resized crop +
  flip and PIL photometric augmentation of a clean and an augmented copy, the landmark CNN on the clean copies,
  then one ``grid_sample`` call per landmark. It lives only in this file, as the baseline.

Prints one JSON line with images/s per path and the ratios.

    .venv/bin/python -m bench.bench_ssl [--preset tiny] [--batch 16] [--iters 3] [--threads N] [--min-seconds 3]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from bench.common import emit, time_per_call
from lafs_core.config import load_config
from lafs_core.config.pretrain import PretrainConfig
from lafs_core.data.ssl_views import SSLViews
from lafs_core.distributed import init_distributed
from lafs_core.env import shared_datasets
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import save_model_checkpoint
from lafs_core.models.sampler import grid_landmarks, patch_offsets
from lafs_core.train.pretrain import PretrainStage


def lfw_batch(batch: int) -> torch.Tensor:
    """(B, 3, 112, 112) uint8 central crops of the first LFW deep-funneled faces."""
    root = shared_datasets() / "lfw_deepfunneled" / "lfw-deepfunneled"
    files = sorted(root.glob("A*/*.jpg"))[:batch]
    crops = [np.asarray(Image.open(f).convert("RGB").crop((69, 69, 181, 181))) for f in files]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def grid_flip_perm(num_landmarks: int) -> list[int]:
    """Mirror permutation of a square grid of landmarks."""
    side = round(num_landmarks**0.5)
    return torch.arange(num_landmarks).view(side, side).flip(1).reshape(-1).tolist()


class ReferencePath:
    """The official per-image, per-view PIL pipeline with a per-landmark sampling loop (baseline only)."""

    def __init__(self, cfg: PretrainConfig, cnn: torch.nn.Module) -> None:
        self.cfg = cfg
        self.cnn = cnn
        self.geometric = T.Compose(
            [
                T.RandomResizedCrop(
                    112, scale=tuple(cfg.global_crops_scale), interpolation=T.InterpolationMode.BICUBIC
                ),
                T.RandomHorizontalFlip(),
            ]
        )
        self.jitter = T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)])
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def photometric(self, image: Image.Image, view: int) -> Image.Image:
        blur_p = (1.0, 0.1)[view] if view < 2 else 0.5
        image = self.jitter(image)
        if random.random() < blur_p:
            image = image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        if view == 1 and random.random() < 0.2:
            image = ImageOps.solarize(image)
        return image

    def looped_tokens(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """One ``grid_sample`` per landmark, as the official ``patch_grid``."""
        patch = self.cfg.model.patch_size
        offsets = patch_offsets(patch, "centered")
        tokens = []
        for n in range(landmarks.shape[1]):
            points = landmarks[:, n, None, :] + offsets
            grid = (points + 0.5) * (2.0 / 112) - 1.0
            taps = F.grid_sample(images, grid[:, None], mode="bilinear", padding_mode="zeros", align_corners=False)
            tokens.append(taps[:, :, 0].transpose(1, 2).reshape(images.shape[0], -1))
        return torch.stack(tokens, dim=1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> SSLViews:
        cfg = self.cfg
        num_views = cfg.global_views + cfg.local_views
        pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        clean, aug = [], []
        for v in range(num_views):
            crops = [self.geometric(p) for p in pil]
            clean.append(torch.stack([self.to_tensor(c) for c in crops]))
            aug.append(torch.stack([self.to_tensor(self.photometric(c, v)) for c in crops]))
        tokens = []
        for v in range(num_views):
            points = self.cnn(clean[v]) + cfg.sigma * torch.randn(len(pil), cfg.model.num_landmarks, 2)
            if v >= cfg.global_views:
                ids = torch.randint(cfg.model.num_landmarks, (len(pil), cfg.subset_size))
                points = torch.gather(points, 1, ids[..., None].expand(-1, -1, 2))
            tokens.append(self.looped_tokens(aug[v], points))
        return SSLViews(tokens, [], [], [112] * num_views, cfg.global_views)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time each path for at least this long")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    images = lfw_batch(args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={tmp}", f"global_batch_size={args.batch}", "probe_every=0"]
        cfg = load_config(PretrainConfig, preset=args.preset, overrides=overrides)
        r = cfg.model.num_landmarks
        info = {"num_samples": 10_000, "image_size": 112, "num_landmarks": r, "flip_permutation": grid_flip_perm(r)}
        trainer = PretrainStage(cfg, init_distributed(), info=info)
        landmarks = grid_landmarks(112, 112 // round(r**0.5)).expand(args.batch, -1, -1)
        face_path = save_model_checkpoint(Path(tmp) / "stage1.pt", build_face_model(cfg.model), args.preset, "partfvit")
        online_cfg = cfg.model_copy(update={"landmarks": "online", "landmark_checkpoint": face_path})
        online = PretrainStage(online_cfg, init_distributed(), info=info)
        reference = ReferencePath(cfg, online.landmark_model)

        def step(t: PretrainStage, make) -> None:
            t.step_on_views(make(), 0)

        paths = {
            "precomputed": lambda: step(trainer, lambda: trainer.views(images, landmarks)),
            "online": lambda: step(online, lambda: online.views(images, landmarks)),
            "reference": lambda: step(trainer, lambda: reference(images)),
        }
        budget = args.min_seconds
        seconds = {name: time_per_call(fn, 1, args.iters, budget) for name, fn in paths.items()}
        views_only = {
            "precomputed": time_per_call(lambda: trainer.views(images, landmarks), 1, args.iters, budget),
            "online": time_per_call(lambda: online.views(images, landmarks), 1, args.iters, budget),
            "reference": time_per_call(lambda: reference(images), 1, args.iters, budget),
        }
    ips = {name: args.batch / s for name, s in seconds.items()}
    emit(
        "ssl_step",
        preset=args.preset,
        batch=args.batch,
        views=cfg.global_views + cfg.local_views,
        images_per_s=ips,
        views_images_per_s={name: args.batch / s for name, s in views_only.items()},
        precomputed_over_online=ips["precomputed"] / ips["online"],
        precomputed_over_reference=ips["precomputed"] / ips["reference"],
        online_over_reference=ips["online"] / ips["reference"],
    )


if __name__ == "__main__":
    main()
