"""Classical floors: raw grey pixels and LBP histograms, verified by the project's own pair-set and 10-fold code.

A learned model that does not beat these has not learned faces. Both descriptors are fixed (nothing is fitted):

- ``pixels``: the central 80x80 of the grey 112x112 face, z-scored per image, cosine distance.
- ``lbp``: 8-neighbour local binary patterns (radius 1) of the grey face, 256-bin histograms on an 11x11 grid of
  10x10 cells, square-rooted (Hellinger), centred per descriptor, cosine distance. Nothing is taken from the
  evaluation images as a set: centring on their mean descriptor instead (transductive) lifts lfw-v1 from 68.1 %
  to 73.1 %, an adaptation the learned models do not get either.

    python -m experiments.baselines.classical --pairs lfw-v1 --pairs VAL_PAIRS.txt \\
        --images ../shared/datasets/lfw_deepfunneled/lfw-deepfunneled --json OUT.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from data_tools.pairsets import load_pair_set
from lafs_core.eval.pairsets import PairSet
from lafs_core.eval.report import verification_report
from lafs_core.eval.verification import evaluate_embeddings

LBP_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
CELL = 10
GRID = 11


def grey(images: np.ndarray) -> np.ndarray:
    """(N, H, W) float32 grey faces from (N, H, W, 3) RGB uint8."""
    return np.stack([cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in images]).astype(np.float32)


def pixel_descriptors(images: np.ndarray, side: int = 80) -> np.ndarray:
    """Central ``side`` x ``side`` grey pixels, z-scored per image."""
    g = grey(images)
    top = (g.shape[1] - side) // 2
    left = (g.shape[2] - side) // 2
    flat = g[:, top : top + side, left : left + side].reshape(len(g), -1)
    return (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-6)


def lbp_codes(images: np.ndarray) -> np.ndarray:
    """(N, H-2, W-2) 8-bit LBP codes: bit k is set when neighbour k is at least the centre pixel."""
    g = grey(images)
    centre = g[:, 1:-1, 1:-1]
    h, w = g.shape[1:]
    codes = np.zeros(centre.shape, dtype=np.int64)
    for bit, (dy, dx) in enumerate(LBP_OFFSETS):
        codes |= (g[:, 1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] >= centre).astype(np.int64) << bit
    return codes


def lbp_descriptors(images: np.ndarray) -> np.ndarray:
    """Square-rooted 256-bin LBP histograms of a GRID x GRID layout of CELL x CELL cells, each descriptor centred."""
    codes = lbp_codes(images)[:, : GRID * CELL, : GRID * CELL]
    n = len(codes)
    cells = codes.reshape(n, GRID, CELL, GRID, CELL).transpose(0, 1, 3, 2, 4).reshape(n, GRID * GRID, CELL * CELL)
    offsets = (np.arange(n)[:, None] * GRID * GRID + np.arange(GRID * GRID)[None, :]) * 256
    hist = np.bincount((cells + offsets[..., None]).ravel(), minlength=n * GRID * GRID * 256)
    desc = np.sqrt(hist.reshape(n, -1).astype(np.float32))
    return desc - desc.mean(1, keepdims=True)


DESCRIPTORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"pixels": pixel_descriptors, "lbp": lbp_descriptors}


def pair_set_images(pair_set: PairSet) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct aligned image of a pair set (N, 112, 112, 3) and which ones could be read."""
    cached = pair_set.cached().images
    return cached.images, cached.valid


def classical_report(pair_set: PairSet, kind: str) -> dict[str, object]:
    """10-fold verification report of one classical descriptor on a pair set (pairs with unreadable images left out)."""
    images, valid = pair_set_images(pair_set)
    features = DESCRIPTORS[kind](images)
    keep = valid[pair_set.pairs].all(axis=1)
    pairs = pair_set.pairs[keep]
    result = evaluate_embeddings(
        features[pairs[:, 0]], features[pairs[:, 1]], pair_set.issame[keep], pair_set.folds[keep], "cosine"
    )
    return verification_report(result, pair_set.name, model=f"classical:{kind}", pairs_skipped=int((~keep).sum()))


def main(argv: Sequence[str] | None = None) -> int:
    """Print (and optionally save) the classical floors on each pair set."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.baselines.classical", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pairs", action="append", required=True, help="pair set (name, pair file, .bin, folder)")
    parser.add_argument("--images", type=Path, default=None, help="image root of LFW-style pair files")
    parser.add_argument("--json", type=Path, default=None, help="write all reports to this JSON file")
    args = parser.parse_args(argv)
    reports = []
    for spec in args.pairs:
        pair_set = load_pair_set(spec, images=args.images)
        for kind in DESCRIPTORS:
            report = classical_report(pair_set, kind)
            reports.append(report)
            mean, std = 100 * report["accuracy_mean"], 100 * report["accuracy_std"]
            print(f"{pair_set.name:>20} {kind:>7}: {mean:.2f} % +- {std:.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
