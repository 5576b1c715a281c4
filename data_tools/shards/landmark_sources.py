"""Landmark sources behind one interface: the regular grid, a landmark CNN checkpoint, MediaPipe face mesh.

Every source maps a batch of aligned RGB uint8 faces (B, H, W, 3) to pixel-centre landmarks (B, R, 2) float32 and
a per-image success mask, and names itself (model id + sha256) for the manifest.
"""

from __future__ import annotations

import hashlib
import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from lafs_core.errors import ConfigError, DataError

MEDIAPIPE_POINTS = 468


class LandmarkSource(ABC):
    """A fixed landmark model run once per aligned image."""

    spec: str
    model_id: str
    sha256: str
    num_landmarks: int
    convention: str
    image_size: int
    uses_pixels: bool = True
    """False when ``predict`` ignores the pixels (then callers may pass a (B, 0, 0, 3) placeholder batch)."""

    @abstractmethod
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W, 3) uint8 RGB -> landmarks (B, R, 2) float32 and an ok mask (B,) bool."""


def square_side(num_landmarks: int) -> int:
    """Side n of an n x n landmark layout; R must be a perfect square for the grid."""
    side = round(num_landmarks**0.5)
    if side * side != num_landmarks:
        raise ConfigError(f"the grid landmark source needs a square landmark count, got {num_landmarks}")
    return side


class GridSource(LandmarkSource):
    """The regular n x n grid of cell centres (the dino-grid baseline); exact and flip-symmetric when centred."""

    uses_pixels = False

    def __init__(self, num_landmarks: int, image_size: int = 112, convention: str = "centered") -> None:
        from lafs_core.models.sampler import landmark_layout

        side = square_side(num_landmarks)
        if image_size % side:
            raise ConfigError(f"image size {image_size} is not divisible by the grid side {side}")
        self.grid = landmark_layout(num_landmarks, image_size, convention).numpy().astype(np.float32)
        self.spec = "grid"
        self.num_landmarks = num_landmarks
        self.image_size = image_size
        self.convention = convention
        self.model_id = f"grid-{side}x{side}-{convention}"
        self.sha256 = hashlib.sha256(self.grid.tobytes()).hexdigest()

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same grid for every image (only the batch size is read)."""
        batch = len(images)
        return np.broadcast_to(self.grid, (batch, *self.grid.shape)).copy(), np.ones(batch, dtype=bool)


class CnnSource(LandmarkSource):
    """A landmark CNN checkpoint (trained here or imported official), run batched in eval mode on CPU/GPU."""

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        import torch

        from lafs_core.models.checkpoint import load_checkpoint

        path = Path(path)
        if not path.is_file():
            raise DataError(path, "landmark checkpoint not found")
        loaded = load_checkpoint(path)
        model = loaded.model.landmark_cnn
        if model is None:
            raise DataError(path, "checkpoint holds no landmark CNN")
        convention = str(loaded.meta.get("convention", loaded.model.convention))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.spec = f"cnn:{path}"
        self.num_landmarks = int(model.num_landmarks)
        self.image_size = int(model.image_size)
        self.convention = convention
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.model_id = f"cnn:{path.name}"

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One fp32 forward pass over the batch."""
        import torch

        from lafs_core.data.normalize import normalize
        from lafs_core.models.face_model import fixed_landmarks

        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"landmark CNN expects {self.image_size}px faces, got {images.shape[1:3]}")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device)
        landmarks = fixed_landmarks(self.model, normalize(x)).cpu().numpy()
        return landmarks.astype(np.float32), np.isfinite(landmarks).all(axis=(1, 2))


class MediapipeSource(LandmarkSource):
    """MediaPipe face mesh (468 points) reduced to R points spread evenly over the mesh indices."""

    def __init__(self, num_landmarks: int, image_size: int = 112, convention: str = "centered") -> None:
        if importlib.util.find_spec("mediapipe") is None:
            raise ConfigError(
                "the 'mediapipe' landmark source needs the mediapipe package (e.g. mediapipe==0.10.21 --no-deps, "
                "see environment.md), which is not installed; use --landmarks grid or cnn:PATH"
            )
        if num_landmarks > MEDIAPIPE_POINTS:
            raise ConfigError(f"mediapipe gives {MEDIAPIPE_POINTS} points; cannot reduce to {num_landmarks}")
        from mediapipe.python.solutions import face_mesh

        self.mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)
        self.indices = np.round(np.linspace(0, MEDIAPIPE_POINTS - 1, num_landmarks)).astype(np.int64)
        self.spec = "mediapipe"
        self.num_landmarks = num_landmarks
        self.image_size = image_size
        self.convention = convention
        self.model_id = f"mediapipe-facemesh-{MEDIAPIPE_POINTS}to{num_landmarks}"
        self.sha256 = hashlib.sha256(self.indices.tobytes()).hexdigest()

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-image mesh fit; images where no face is found are flagged not ok."""
        out = np.zeros((len(images), self.num_landmarks, 2), dtype=np.float32)
        ok = np.zeros(len(images), dtype=bool)
        for i, image in enumerate(images):
            result = self.mesh.process(np.ascontiguousarray(image))
            if not result.multi_face_landmarks:
                continue
            points = result.multi_face_landmarks[0].landmark
            height, width = image.shape[:2]
            xy = np.array([(p.x * width - 0.5, p.y * height - 0.5) for p in points], dtype=np.float32)
            out[i] = xy[self.indices]
            ok[i] = True
        return out, ok


def open_landmark_source(
    spec: str, num_landmarks: int, image_size: int = 112, convention: str = "centered"
) -> LandmarkSource:
    """Build a source from ``grid``, ``cnn:PATH`` or ``mediapipe``."""
    if spec == "grid":
        return GridSource(num_landmarks, image_size, convention)
    if spec.startswith("cnn:"):
        return CnnSource(spec.removeprefix("cnn:"))
    if spec == "mediapipe":
        return MediapipeSource(num_landmarks, image_size, convention)
    raise ConfigError(f"unknown landmark source {spec!r}; use grid, cnn:PATH or mediapipe")


def mirror(points: np.ndarray, image_size: int) -> np.ndarray:
    """Horizontal mirror of pixel-centre points: x -> W - 1 - x."""
    out = np.array(points, dtype=np.float64, copy=True)
    out[..., 0] = image_size - 1 - out[..., 0]
    return out


def flip_permutation(mean_landmarks: np.ndarray, image_size: int) -> list[int]:
    """perm with perm[j] = the landmark whose mirrored mean position is nearest landmark j's mean (a matching).

    After a horizontal flip, the view's landmark j is the flipped stored landmark ``perm[j]``: what a landmark model
    run on the flipped image would call landmark j. Solved as an assignment (scipy's Hungarian when available,
    else greedy nearest pairs); exact for a symmetric grid.
    """
    means = np.asarray(mean_landmarks, dtype=np.float64)
    cost = np.linalg.norm(means[:, None, :] - mirror(means, image_size)[None, :, :], axis=-1)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        return greedy_assignment(cost)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(means), dtype=np.int64)
    perm[rows] = cols
    return perm.tolist()


def greedy_assignment(cost: np.ndarray) -> list[int]:
    """Assign rows to columns by taking the globally cheapest free pair first."""
    n = cost.shape[0]
    perm = [-1] * n
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        row, col = divmod(int(flat), n)
        if row in used_rows or col in used_cols:
            continue
        perm[row] = col
        used_rows.add(row)
        used_cols.add(col)
        if len(used_rows) == n:
            break
    return perm
