"""Precomputed vs online landmarks (method.md 2.3): how far transformed stored landmarks are from re-running the CNN.

For real shard samples, draw LAFS views (random resized crop scale (0.4, 1), flip p=0.5), map the stored landmarks
into each view (``views.sample_views``, flip permutation included), render the clean view (``render_views``) and run
the same landmark CNN on it. Prints one JSON line: mean / median pixel distance per landmark over all views, the
same on identity views (a consistency check: ~0), on flip-only views with and without the flip permutation, and the
spread of the online landmarks around their own mean (for scale).

    .venv/bin/python bench/bench_landmark_parity.py --shards DIR --checkpoint PATH
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from data_tools.shards.landmark_sources import CnnSource
from lafs_core.data.loader import eval_loader, read_info
from lafs_core.data.normalize import normalize
from lafs_core.data.views import Views, ViewSpec, crop_affine, render_views, sample_views, view_landmarks


def online(model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """Landmark CNN on rendered views (B, V, 3, S, S) -> (B, V, R, 2)."""
    b, v = crops.shape[:2]
    with torch.inference_mode():
        return model(normalize(crops.flatten(0, 1))).view(b, v, -1, 2)


def fixed_views(landmarks: torch.Tensor, flipped: bool, perm: torch.Tensor, size: int) -> Views:
    """One whole-image view per sample, flipped or not."""
    batch = landmarks.shape[0]
    boxes = torch.tensor([[0.0, 0.0, size, size]]).expand(batch, -1)
    flags = torch.full((batch,), flipped)
    affine = crop_affine(boxes, flags, size)
    return Views(affine[:, None], view_landmarks(landmarks, affine, flags, perm)[:, None], flags[:, None])


def main() -> None:
    """Measure and print the discrepancy figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    info = read_info(args.shards)
    source = CnnSource(args.checkpoint, device="cpu")
    if source.sha256 != info["landmark_model"]["sha256"]:
        raise SystemExit(f"{args.checkpoint} is not the landmark model of {args.shards}")
    model, size = source.model, info["image_size"]
    perm = torch.tensor(info["flip_permutation"])
    identity_perm = torch.arange(len(perm))
    generator = torch.Generator().manual_seed(args.seed)
    sums = {"random": [], "identity": [], "flip": [], "flip_no_perm": [], "spread": []}
    seen = 0
    for batch in eval_loader(args.shards, args.batch_size):
        images, stored = batch["images"], batch["landmarks"]
        views = sample_views(stored, ViewSpec(num_views=args.views, size=size), perm, size, generator)
        found = online(model, render_views(images, views, size))
        sums["random"].append((found - views.landmarks).norm(dim=-1).flatten())
        sums["spread"].append((found - found.mean(dim=2, keepdim=True)).norm(dim=-1).flatten())
        for name, flip, p in (("identity", False, perm), ("flip", True, perm), ("flip_no_perm", True, identity_perm)):
            fixed = fixed_views(stored, flip, p, size)
            found = online(model, render_views(images, fixed, size))
            sums[name].append((found - fixed.landmarks).norm(dim=-1).flatten())
        seen += len(images)
        if seen >= args.images:
            break
    stats = {name: torch.cat(values) for name, values in sums.items()}
    print(
        json.dumps(
            {
                "bench": "landmark_parity",
                "landmark_model": info["landmark_model"]["id"],
                "images": seen,
                "views_per_image": args.views,
                "mean_px_random_views": round(stats["random"].mean().item(), 3),
                "median_px_random_views": round(stats["random"].median().item(), 3),
                "mean_px_identity_view": round(stats["identity"].mean().item(), 4),
                "mean_px_flip_with_perm": round(stats["flip"].mean().item(), 3),
                "mean_px_flip_without_perm": round(stats["flip_no_perm"].mean().item(), 3),
                "mean_px_online_spread": round(stats["spread"].mean().item(), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
