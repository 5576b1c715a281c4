"""`lafs partfvit`: train the Part fViT end to end (landmark CNN + ViT, CosFace, no landmark labels), method.md 2.2/6.

Gradients reach the landmark CNN only through the differentiable patch sampler, so its landmarks drift from the
initial layout towards positions that help recognition. The trained landmark CNN is saved on its own
(``landmark_cnn.pt``, our checkpoint format with only ``landmark_cnn.*`` keys, a model id and its sha256 in
``landmark_cnn.json``): it is the fixed landmark model of the shard precompute (``lafs data shards --landmarks
cnn:PATH``). A before/after landmark overlay PNG and the mean landmark displacement in pixels show what it learnt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lafs_core import tracking
from lafs_core.checkpoint_io import atomic_torch_save
from lafs_core.config import config_hash
from lafs_core.config.finetune import PartFViTConfig
from lafs_core.data.loader import eval_loader
from lafs_core.data.normalize import normalize
from lafs_core.distributed import DistInfo
from lafs_core.eval.pairsets import PairSet
from lafs_core.losses.landmark_reg import frozen_copy
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import model_meta
from lafs_core.models.face_model import fixed_landmarks
from lafs_core.train.loop import run_stage
from lafs_core.train.supervised import SupervisedStage

log = logging.getLogger(__name__)

STAGE = "partfvit"


def save_landmark_cnn(face: nn.Module, path: Path, preset: str, model_id: str) -> dict[str, Any]:
    """Write the landmark CNN alone (``{meta, model: landmark_cnn.*}``) atomically; return its id, path and sha256."""
    state = {f"landmark_cnn.{k}": v.detach().cpu() for k, v in face.landmark_cnn.state_dict().items()}
    meta = model_meta(face, preset, STAGE, artifact="landmark_cnn", model_id=model_id)
    meta["has_landmark_cnn"] = True
    atomic_torch_save({"meta": meta, "model": state}, path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"model_id": model_id, "path": str(path), "sha256": sha256}


def overlay_images(data_dir: Path, count: int) -> torch.Tensor:
    """The first ``count`` images of the shard set in a fixed order (uint8 (N, 3, H, W))."""
    images: list[torch.Tensor] = []
    for batch in eval_loader(data_dir, count, rank=0, world_size=1):
        images.append(batch["images"])
        if sum(len(b) for b in images) >= count:
            break
    return torch.cat(images)[:count]


def predict(cnn: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Landmarks (N, R, 2) of a landmark CNN in eval mode on uint8 images."""
    device = next(cnn.parameters()).device
    return fixed_landmarks(cnn, normalize(images.to(device))).cpu()


def write_overlay(images: torch.Tensor, before: torch.Tensor, after: torch.Tensor, path: Path) -> Path:
    """A 2-row PNG: landmarks of the initial CNN (top) and the trained CNN (bottom) on the same faces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.5), squeeze=False)
    for col in range(n):
        for row, (points, title) in enumerate(((before, "initial"), (after, "trained"))):
            ax = axes[row][col]
            ax.imshow(images[col].permute(1, 2, 0).numpy())
            ax.scatter(points[col, :, 0], points[col, :, 1], s=4, c="lime" if row else "red")
            ax.set_axis_off()
            if col == 0:
                ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


class PartFViTStage(SupervisedStage):
    """The Part fViT trained end to end; exports its landmark CNN, a before/after overlay and the displacement."""

    name = STAGE

    def __init__(self, cfg: PartFViTConfig, dist: DistInfo, val_sets: Sequence[PairSet] = ()) -> None:
        torch.manual_seed(cfg.seed)
        face = build_face_model(cfg.model, with_landmark_cnn=True)
        self.initial = frozen_copy(face.landmark_cnn)
        super().__init__(cfg, dist, face, val_sets)

    def extra_state(self) -> dict[str, Any]:
        return {"initial_landmark_cnn": {k: v.detach().cpu() for k, v in self.initial.state_dict().items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.initial.load_state_dict(state["initial_landmark_cnn"])

    def stage_exports(self, run_dir: Path) -> dict[str, Path]:
        """``landmark_cnn.pt`` (+ ``landmark_cnn.json`` with its id, sha256 and mean displacement) and the overlay."""
        cfg = self.cfg
        model_id = f"partfvit-{config_hash(cfg)[:12]}"
        saved = save_landmark_cnn(self.face, run_dir / "landmark_cnn.pt", cfg.preset, model_id)
        images = overlay_images(Path(cfg.data_dir), cfg.overlay_images)
        before = predict(self.initial, images)
        after = predict(self.face.landmark_cnn, images)
        displacement = float((after - before).norm(dim=-1).mean())
        overlay = write_overlay(images, before, after, run_dir / "landmarks_before_after.png")
        saved["mean_displacement_px"] = displacement
        info = run_dir / "landmark_cnn.json"
        info.write_text(json.dumps(saved, indent=2))
        tracking.log_metrics({"landmarks/mean_displacement_px": displacement})
        log.info("landmark CNN %s: mean displacement from the initial layout %.2f px", model_id, displacement)
        return {"landmark_cnn": run_dir / "landmark_cnn.pt", "landmark_info": info, "overlay": overlay}


def run_partfvit(cfg: PartFViTConfig, val_sets: Sequence[PairSet] = ()) -> dict[str, Any]:
    """Train the Part fViT and export its landmark CNN; returns the run summary (with the landmark CNN's facts)."""
    summary = run_stage(lambda dist: PartFViTStage(cfg, dist, val_sets), cfg)
    info = Path(summary["run_dir"]) / "landmark_cnn.json"
    if info.is_file():
        summary["landmark_cnn"] = json.loads(info.read_text())
    return summary
