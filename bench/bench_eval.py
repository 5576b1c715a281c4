"""Verification embedding throughput (protocols.md 4.6): images/s with flip-sum, tiny and base presets.

Runs ``lafs_core.eval.embed.embed_source`` (the code path of ``lafs eval verify``) on in-memory 112x112 images, so
the figure is the model's (two forward passes per image: the image and its mirror), not JPEG decoding. Randomly
initialised FaceModels with the landmark CNN (the paper's model) and, for reference, on the regular grid.
Prints one JSON line.

    .venv/bin/python -m bench.bench_eval [--images 512] [--batch-size 128] [--presets tiny,base] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import emit
from lafs_core.config import StageConfig, load_config
from lafs_core.eval.embed import embed_source
from lafs_core.models.build import build_face_model


class RandomFaces:
    """``n`` random RGB uint8 112x112 images held in memory."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.images = np.random.default_rng(seed).integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


def measure(preset: str, landmark_cnn: bool, images: int, batch_size: int, device: torch.device) -> float:
    """Images per second (with flip) after one warm-up batch."""
    torch.manual_seed(0)
    model = build_face_model(load_config(StageConfig, preset=preset).model, with_landmark_cnn=landmark_cnn)
    model = model.to(device).eval()
    autocast = torch.bfloat16 if device.type == "cuda" else None
    embed_source(model, RandomFaces(batch_size), batch_size, autocast_dtype=autocast)
    source = RandomFaces(images, seed=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    embed_source(model, source, batch_size, autocast_dtype=autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--presets", default="tiny,base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    figures: dict[str, float] = {}
    for preset in args.presets.split(","):
        figures[f"{preset}_landmarks"] = round(measure(preset, True, args.images, args.batch_size, device), 2)
        figures[f"{preset}_grid"] = round(measure(preset, False, args.images, args.batch_size, device), 2)
    if "tiny_landmarks" in figures and "base_landmarks" in figures:
        figures["ratio_tiny_over_base"] = round(figures["tiny_landmarks"] / figures["base_landmarks"], 2)
    emit(
        "eval_embedding",
        unit="images/s, each image embedded twice (flip-sum)",
        torch_device=str(device),
        images=args.images,
        batch_size=args.batch_size,
        **figures,
    )


if __name__ == "__main__":
    main()
