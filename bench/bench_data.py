"""Data-path throughput (protocols.md 4.3 and 4.4), one JSON line each.

1. Landmark precompute (decode + align + landmark model + JPEG + shard write) vs decode-only on the same files (copied
   to a temporary identity folder, read by both), with ``--workers`` decode processes vs as many decode threads:
   images/s, their ratio, and the CPU time per image of the writing process and of the workers.
   A 16-image warm-up run does the imports first; the landmark model's load and the workers' start are timed.
2. Shard loader: what the pretraining stage's loader delivers (verified shards, decode, shuffle, batches): samples/s.
   The views are made by the step (``bench_ssl`` times them), so ``samples_per_s_without_photometric`` is the same
   figure, kept under the name the targets read.

    .venv/bin/python bench/bench_data.py --images 1000 --landmarks grid
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from data_tools.shards.precompute import precompute
from lafs_core.config import load_config
from lafs_core.config.data import ShardsConfig
from lafs_core.data.loader import train_loader
from lafs_core.env import shared_datasets


def pick_files(root: Path, count: int) -> list[Path]:
    """The first ``count`` images of an identity-folder dataset, in sorted order."""
    return sorted(root.glob("*/*.jpg"))[:count]


def decode_rate(files: list[Path], workers: int) -> float:
    """Images/s of read + decode only."""

    def decode(path: Path) -> int:
        return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR).shape[0]

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode, files))
    return len(files) / (time.perf_counter() - start)


def copy_folder(files: list[Path], dest: Path) -> list[Path]:
    """Copies of ``files`` in an identity-folder tree at ``dest`` (real files: a symlink costs a stat per listing)."""
    copies = []
    for path in files:
        (dest / path.parent.name).mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copyfile(path, dest / path.parent.name / path.name)))
    return copies


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) used so far by this process and by its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def loader_rate(shard_dir: Path, batch_size: int, workers: int, batches: int) -> float:
    """Samples/s of the training loader as the pretraining stage reads it (verified shards, decode, shuffle, batch;
    the views and their photometric augmentation are made by the step). The first batch (worker start-up) is not
    timed."""
    loader = train_loader(shard_dir, batch_size, num_workers=workers)
    seen, start = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        if i == 0:
            start = time.perf_counter()
            continue
        seen += batch["images"].shape[0]
        if i == batches:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    """Run both benchmarks and print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=shared_datasets() / "lfw_deepfunneled" / "lfw-deepfunneled")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--landmarks", default="grid")
    parser.add_argument("--align", default="lfw-deepfunneled")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loader-batches", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "faces"
        files = copy_folder(pick_files(args.source, args.images), folder)
        cfg = load_config(
            ShardsConfig,
            preset=args.preset,
            overrides=[
                f"landmarks={args.landmarks}",
                f"align={args.align}",
                f"workers={args.workers}",
                "shard_size=500",
            ],
        )
        decode_rate(files[:50], args.workers)
        warm = Path(tmp) / "warm"
        copy_folder(pick_files(args.source, 16), warm)
        precompute(warm, Path(tmp) / "warm-shards", cfg)
        decode = decode_rate(files, args.workers)
        own, children = cpu_seconds()
        start = time.perf_counter()
        result = precompute(folder, Path(tmp) / "shards", cfg)
        rate = result.info["num_samples"] / (time.perf_counter() - start)
        own_after, children_after = cpu_seconds()
        print(
            json.dumps(
                {
                    "bench": "precompute_vs_decode",
                    "images": len(files),
                    "landmarks": args.landmarks,
                    "align": args.align,
                    "workers": args.workers,
                    "precompute_images_per_s": round(rate, 1),
                    "decode_images_per_s": round(decode, 1),
                    "ratio": round(rate / decode, 4),
                    "cpu_ms_per_image": {
                        "writer": round(1e3 * (own_after - own) / len(files), 3),
                        "workers": round(1e3 * (children_after - children) / len(files), 3),
                    },
                }
            )
        )
        samples = loader_rate(Path(tmp) / "shards", args.batch_size, args.workers, args.loader_batches)
        print(
            json.dumps(
                {
                    "bench": "shard_loader",
                    "batch_size": args.batch_size,
                    "workers": args.workers,
                    "samples_per_s": round(samples, 1),
                    "samples_per_s_without_photometric": round(samples, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
