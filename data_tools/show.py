"""A visual check of a shard set: the first samples as a PNG grid with their landmarks drawn."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import cv2
import numpy as np

from data_tools.shards.writer import file_sha256
from lafs_core.data.shard_format import read_info
from lafs_core.errors import DataError

SCALE = 2


def first_samples(shard_dir: str | Path, count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(key, RGB image, landmarks) of the first ``count`` samples, in shard order."""
    shard_dir = Path(shard_dir)
    out: list[tuple[str, np.ndarray, np.ndarray]] = []
    for shard in read_info(shard_dir)["shards"]:
        path = shard_dir / shard["name"]
        check_shard(path, shard["sha256"])
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                fh = tar.extractfile(info)
                if fh is not None:
                    members.setdefault(key, {})[ext] = fh.read()
        for key, parts in members.items():
            bgr = cv2.imdecode(np.frombuffer(parts.get("jpg", b"-"), np.uint8), cv2.IMREAD_COLOR)
            if bgr is None or "lmk.npy" not in parts:
                raise DataError(path, f"sample {key}: no JPEG that decodes, or no landmarks")
            landmarks = np.load(io.BytesIO(parts["lmk.npy"]), allow_pickle=False)
            out.append((key, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), landmarks))
            if len(out) == count:
                return out
    return out


def check_shard(path: Path, sha256: str) -> None:
    """DataError unless the shard is there and hashes to its recorded sha256 (a damaged shard is not shown)."""
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise DataError(path, f"cannot read shard ({exc.strerror or exc})") from None
    if digest != sha256:
        raise DataError(path, "sha256 differs from the manifest (damaged); `lafs data verify` lists every problem")


def draw_landmarks(image: np.ndarray, landmarks: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """The image enlarged ``scale`` times with each landmark as a dot coloured by its index (blue -> red)."""
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    count = len(landmarks)
    for k, (x, y) in enumerate(landmarks):
        t = k / max(1, count - 1)
        colour = (int(255 * t), 64, int(255 * (1 - t)))
        centre = (round((x + 0.5) * scale - 0.5), round((y + 0.5) * scale - 0.5))
        cv2.circle(big, centre, max(1, scale), colour, -1, lineType=cv2.LINE_AA)
    return big


def landmark_grid(shard_dir: str | Path, count: int = 16) -> np.ndarray:
    """An RGB mosaic of the first ``count`` samples with their landmarks."""
    samples = first_samples(shard_dir, count)
    if not samples:
        raise DataError(shard_dir, "no samples to show")
    tiles = [draw_landmarks(image, lmk) for _, image, lmk in samples]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    h, w = tiles[0].shape[:2]
    mosaic = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        mosaic[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return mosaic


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Save an RGB image as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise DataError(path, "could not write PNG")
    return path
