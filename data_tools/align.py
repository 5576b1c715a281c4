"""Face alignment to 112x112: a 5-point similarity transform to the ArcFace template, or a fixed crop preset.

Coordinates are pixel-centre ``(x, y)`` (pixel ``(row i, col j)`` is at ``x=j, y=i``), the convention of
``cv2.warpAffine`` and of the landmarks in the shards. Every function returns the 2x3 affine ``M`` that maps source
pixels to aligned pixels, so landmarks can follow the image (:func:`transform_points`).

The LFW deep-funneled preset (:data:`LFW_DEEPFUNNELED`) was derived by measurement: dlib's 68-point shape
predictor (``shape_predictor_68_face_landmarks.dat``, HOG face detector, the face nearest the image centre) was run on
2,000 deep-funneled images drawn with ``random.Random(0).sample`` from the sorted file list (1,994 detected); the
5 points (eye centres = mean of the 6 eye-contour points, nose tip = point 30, mouth corners = points 48 and 54)
have the per-coordinate medians in :data:`LFW_DEEPFUNNELED_MEDIAN_POINTS`. The least-squares scale + translation
(no rotation: the images are already upright) from those medians to the template is a square box of 127.9 px at
(61.3, 53.5); rounded, the preset is the box ``x 61..189, y 53..181`` (128 px, centred on x = 125) resized to
112, which puts every median point within 1.9 px of its template point.

``--align detect`` (:mod:`data_tools.detect`) gets dlib's 5-point predictions, which are not the ArcFace points:
two corners per eye and the bottom of the nose, no mouth. Rather than guess eye centres and a nose-tip offset,
:data:`DLIB_5PT_TEMPLATE` was measured the same way as the crop preset: on 1,000 deep-funneled images
(``random.Random(0).sample``; 995 with a face) the 68-point predictor gave each face's ArcFace 5 points and so its
ArcFace alignment, and the 5-point predictions mapped through that alignment have the per-coordinate medians in
the template (median absolute deviation 0.8-1.6 px). A similarity fit of the 5 dlib points to it is therefore the
ArcFace alignment (``experiments/baselines/detect_alignment.py template``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lafs_core.errors import DataError

ALIGNED_SIZE = 112

ARCFACE_TEMPLATE = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
    dtype=np.float64,
) + np.array([8.0, 0.0])
"""insightface 112x96 template + 8 px in x (method.md 10.2): left eye, right eye, nose, left and right mouth corner
(left/right as seen in the image)."""

LFW_DEEPFUNNELED_MEDIAN_POINTS = np.array(
    [[104.17, 113.50], [145.33, 112.67], [125.00, 136.00], [108.00, 158.00], [144.00, 158.00]], dtype=np.float64
)
"""Median 5 points measured with dlib on 1,994 LFW deep-funneled 250x250 images (see the module docstring)."""


@dataclass(frozen=True)
class FixedCrop:
    """A square crop box in pixel-edge coordinates of a ``source_size`` image, resized to ``ALIGNED_SIZE``."""

    name: str
    source_size: tuple[int, int]
    left: float
    top: float
    size: float

    def matrix(self) -> np.ndarray:
        """2x3 affine (pixel centres) that maps the box onto the 112x112 output."""
        s = ALIGNED_SIZE / self.size
        return np.array([[s, 0.0, s * (0.5 - self.left) - 0.5], [0.0, s, s * (0.5 - self.top) - 0.5]])

    def describe(self) -> dict[str, object]:
        """What a manifest records about this alignment."""
        return {
            "method": "fixed-crop",
            "preset": self.name,
            "source_size": list(self.source_size),
            "box_xywh": [self.left, self.top, self.size, self.size],
            "size": ALIGNED_SIZE,
        }


LFW_DEEPFUNNELED = FixedCrop("lfw-deepfunneled", (250, 250), left=61.0, top=53.0, size=128.0)
CROP_PRESETS: dict[str, FixedCrop] = {LFW_DEEPFUNNELED.name: LFW_DEEPFUNNELED}


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` to ``dst``.

    Umeyama (1991) closed form on (N, 2) point sets; returns the 2x3 matrix.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ d @ vt
    var_s = (sc**2).sum() / len(src)
    if var_s == 0:
        raise ValueError("source points are all identical")
    scale = np.trace(np.diag(sing) @ d) / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (N, 2) points."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp to 112x112 with bilinear sampling and a black (0) border, like insightface."""
    return cv2.warpAffine(
        image, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )  # fmt: skip


def align_5pt(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Align with 5 landmarks (left eye, right eye, nose, left mouth, right mouth) to the ArcFace template."""
    matrix = estimate_similarity(np.asarray(landmarks).reshape(5, 2), ARCFACE_TEMPLATE)
    return warp(image, matrix), matrix


def fixed_crop(
    image: np.ndarray, preset: FixedCrop = LFW_DEEPFUNNELED, source: str = "<image>"
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a fixed crop preset; the image must have the preset's source size."""
    height, width = image.shape[:2]
    if (width, height) != preset.source_size:
        raise DataError(source, f"{width}x{height} image, but the {preset.name} crop expects {preset.source_size}")
    matrix = preset.matrix()
    left, top, size = int(preset.left), int(preset.top), int(preset.size)
    whole = (left, top, size) == (preset.left, preset.top, preset.size)
    if whole and left >= 0 and top >= 0 and left + size <= width and top + size <= height:
        # A whole-pixel box inside the image: cv2.resize of the crop is the same pixel-centre mapping as the
        # warp (to cv2's fixed-point rounding) and 2.8x faster.
        crop = image[top : top + size, left : left + size]
        return cv2.resize(crop, (ALIGNED_SIZE, ALIGNED_SIZE), interpolation=cv2.INTER_LINEAR), matrix
    return warp(image, matrix), matrix


DLIB_5PT_TEMPLATE = np.array(
    [[80.45, 52.46], [66.60, 52.92], [31.55, 52.65], [45.33, 52.95], [55.80, 79.62]], dtype=np.float64
)
"""Where dlib's 5 points (eye corners on the image's right: outer, inner; on its left: outer, inner; nose bottom) sit
in the ArcFace 112x112 frame: medians over 995 LFW faces (see the module docstring). The eye-corner midpoints fall on
the template's eye centres (38.4 / 73.5 vs 38.3 / 73.5) and the nose bottom 8 px below its nose tip."""


def align_dlib_5pt(image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Align with dlib's 5 points (``data_tools.detect`` order) to :data:`DLIB_5PT_TEMPLATE`, i.e. the ArcFace frame."""
    matrix = estimate_similarity(np.asarray(points).reshape(5, 2), DLIB_5PT_TEMPLATE)
    return warp(image, matrix), matrix
