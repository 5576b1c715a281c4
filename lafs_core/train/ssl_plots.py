"""The landmark-view PNG of a pretraining run: for a few faces, every view's landmarks drawn on the warped crop.

It shows at a glance whether crops, flips, the flip permutation, perturbation and the local subsets behave: points
are coloured by sequence position, so a global view shows a smooth canonical layout and a local view a scatter.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lafs_core.data.ssl_views import SSLViews
from lafs_core.models.sampler import warp_images


def save_view_png(path: str | Path, images: torch.Tensor, views: SSLViews, patch_size: int, faces: int = 4) -> Path:
    """Write a (faces x views) grid of clean warped crops with the sampled landmark points drawn on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faces = min(faces, images.shape[0])
    num_views = len(views.tokens)
    fig, axes = plt.subplots(faces, num_views, figsize=(1.6 * num_views, 1.7 * faces), squeeze=False)
    source = images[:faces].float()
    for v in range(num_views):
        size = views.sizes[v]
        crops = warp_images(source, views.affines[v][:faces].to(source.device), (size, size))
        points = views.landmarks[v][:faces].detach().float().cpu()
        for f in range(faces):
            ax = axes[f][v]
            ax.imshow(crops[f].permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy())
            ax.scatter(points[f, :, 0], points[f, :, 1], c=range(points.shape[1]), cmap="viridis", s=4)
            ax.set_xlim(-0.5, size - 0.5)
            ax.set_ylim(size - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if f == 0:
                kind = "global" if v < views.num_global else "local"
                ax.set_title(f"{kind} {v} ({points.shape[1]} tok)", fontsize=7)
    fig.suptitle(f"first batch: landmarks per view (patch {patch_size} px, colour = sequence slot)", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
