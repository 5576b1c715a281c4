"""Model throughput: forward+backward images/s of the tiny and base presets, and what the patch sampler costs.

Prints one JSON line: per preset the training-mode step rate of the full FaceModel (landmark CNN + sampler + ViT),
the sampler's fwd+bwd time relative to the ViT's, and the vectorised sampler's speed-up over a per-landmark loop
of ``grid_sample`` calls (the official code's data path).

    .venv/bin/python -m bench.bench_models [--tiny-batch 32] [--base-batch 8] [--iters 3] [--threads N]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.common import emit, time_per_call
from lafs_core.config import StageConfig, load_config
from lafs_core.models.build import build_face_model
from lafs_core.models.sampler import sample_patches


def looped_sampler(images: torch.Tensor, landmarks: torch.Tensor, patch: int) -> torch.Tensor:
    """The official data path: one ``grid_sample`` per landmark (kept here only as the benchmark's baseline)."""
    b, _, h, w = images.shape
    steps = torch.arange(patch, dtype=images.dtype, device=images.device) - patch // 2
    tokens = []
    for n in range(landmarks.shape[1]):
        gx = (landmarks[:, n, 0, None, None] + steps[None, :, None]) / (w / 2) - 1
        gy = (landmarks[:, n, 1, None, None] + steps[None, None, :]) / (h / 2) - 1
        grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        tokens.append(out.permute(0, 2, 3, 1).reshape(b, -1))
    return torch.stack(tokens, dim=1)


def measure(preset: str, batch: int, iters: int, device: torch.device) -> dict[str, float]:
    """Step rate and sampler/ViT cost split for one preset."""
    cfg = load_config(StageConfig, preset=preset).model
    model = build_face_model(cfg).to(device).train()
    images = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(images).pow(2).mean().backward()

    step_s = time_per_call(step, warmup=1, iters=iters)
    landmarks = (torch.rand(batch, cfg.num_landmarks, 2, device=device) * (cfg.image_size - 1)).requires_grad_(True)
    tokens = sample_patches(images, landmarks, cfg.patch_size, cfg.sampler_convention).detach()

    def sampler() -> None:
        sample_patches(images, landmarks, cfg.patch_size, cfg.sampler_convention).sum().backward()

    def vit() -> None:
        model.backbone.zero_grad(set_to_none=True)
        model.backbone.forward_tokens(tokens).pow(2).mean().backward()

    def looped() -> None:
        looped_sampler(images, landmarks, cfg.patch_size).sum().backward()

    sampler_s = time_per_call(sampler, warmup=1, iters=max(iters, 5))
    vit_s = time_per_call(vit, warmup=1, iters=iters)
    looped_s = time_per_call(looped, warmup=1, iters=max(iters, 3))
    return {
        "batch": batch,
        "train_images_per_s": batch / step_s,
        "vit_images_per_s": batch / vit_s,
        "sampler_ms": 1000 * sampler_s,
        "sampler_over_vit": sampler_s / vit_s,
        "looped_sampler_ms": 1000 * looped_s,
        "vectorised_speedup": looped_s / sampler_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-batch", type=int, default=32)
    parser.add_argument("--base-batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    results = {
        "tiny": measure("tiny", args.tiny_batch, args.iters, device),
        "base": measure("base", args.base_batch, args.iters, device),
    }
    emit("models", **results)


if __name__ == "__main__":
    main()
