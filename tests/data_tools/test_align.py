"""Alignment: the similarity fit, 5-point alignment of real LFW faces, and the LFW deep-funneled fixed crop.

The landmarks come from a real landmark source: ``data/lfw_dlib_5pts.json`` holds dlib 68-point predictions (reduced
to 5 points) for 30 LFW deep-funneled images that were not used to derive the crop preset.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_tools.align import (
    ARCFACE_TEMPLATE,
    LFW_DEEPFUNNELED,
    LFW_DEEPFUNNELED_MEDIAN_POINTS,
    align_5pt,
    estimate_similarity,
    fixed_crop,
    transform_points,
    warp,
)
from lafs_core.errors import DataError

DLIB_POINTS = json.loads((Path(__file__).parent / "data/lfw_dlib_5pts.json").read_text())["points"]


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_similarity_is_exact_on_clean_points_and_least_squares_on_noisy_ones() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, (5, 2))
    truth = _similarity(0.4, 0.6, 12.0, -30.0)
    np.testing.assert_allclose(estimate_similarity(src, transform_points(truth, src)), truth, atol=1e-9)
    noisy = transform_points(truth, src) + rng.normal(0, 2.0, (5, 2))
    # independent formulation: linear least squares in (a, b, tx, ty) with x' = a x - b y + tx, y' = b x + a y + ty
    rows = np.concatenate([np.c_[src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)],
                           np.c_[src[:, 1], src[:, 0], np.zeros(5), np.ones(5)]])  # fmt: skip
    a, b, tx, ty = np.linalg.lstsq(rows, np.concatenate([noisy[:, 0], noisy[:, 1]]), rcond=None)[0]
    np.testing.assert_allclose(estimate_similarity(src, noisy), [[a, -b, tx], [b, a, ty]], atol=1e-8)
    mirrored = transform_points(truth, src) * [-1, 1]
    assert np.linalg.det(estimate_similarity(src, mirrored)[:, :2]) > 0  # never a reflection


@pytest.mark.parametrize("rel", list(DLIB_POINTS)[:3])
def test_5pt_alignment_of_a_real_face_is_invariant_to_how_the_photo_was_taken(lfw_root: Path, rel: str) -> None:
    image = _rgb(lfw_root / rel)
    points = np.array(DLIB_POINTS[rel])
    aligned, matrix = align_5pt(image, points)
    assert aligned.shape == (112, 112, 3)
    assert np.abs(transform_points(matrix, points) - ARCFACE_TEMPLATE).mean() < 3.0
    # the same face, rotated by 25 degrees, scaled and shifted: aligning with the moved landmarks gives the same crop
    moved = _similarity(np.deg2rad(25), 1.3, 0.0, 0.0)
    moved[:, 2] = 170.0 - transform_points(moved, [[125.0, 125.0]])[0]  # keep the face inside the 340x340 photo
    photo = cv2.warpAffine(image, moved, (340, 340))
    realigned, _ = align_5pt(photo, transform_points(moved, points))
    inner = np.s_[20:100, 20:92]
    assert np.abs(realigned[inner].astype(float) - aligned[inner]).mean() < 2.0
    unmoved, _ = align_5pt(photo, points)  # control: stale landmarks give a different crop
    assert np.abs(unmoved[inner].astype(float) - aligned[inner]).mean() > 20.0


def test_5pt_warp_puts_a_marked_landmark_pixel_on_its_template_position() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    points = transform_points(_similarity(-0.3, 2.0, 20.0, 15.0), ARCFACE_TEMPLATE - 56) + 60
    x, y = np.round(points[0]).astype(int)
    image[y - 1 : y + 2, x - 1 : x + 2] = 255  # a bright 3x3 spot on the left eye
    aligned, matrix = align_5pt(image, points)
    spot = np.argwhere(aligned[..., 0] == aligned[..., 0].max()).mean(0)[::-1]
    np.testing.assert_allclose(spot, transform_points(matrix, [[x, y]])[0], atol=0.6)
    np.testing.assert_allclose(spot, ARCFACE_TEMPLATE[0], atol=1.0)


def test_fixed_crop_places_measured_eyes_nose_and_mouth_near_the_template() -> None:
    matrix = LFW_DEEPFUNNELED.matrix()
    assert np.abs(transform_points(matrix, LFW_DEEPFUNNELED_MEDIAN_POINTS) - ARCFACE_TEMPLATE).max() < 2.0
    held_out = np.array([transform_points(matrix, np.array(p)) for p in DLIB_POINTS.values()])  # (30, 5, 2)
    error = np.linalg.norm(held_out - ARCFACE_TEMPLATE, axis=2)
    assert np.linalg.norm(np.median(held_out, 0) - ARCFACE_TEMPLATE, axis=1).max() < 3.0
    assert np.median(error[:, :2]) < 4.0  # eyes of a typical image within 4 px of the template
    assert np.percentile(error[:, :2], 90) < 6.0  # 9 eyes in 10; the rest are turned heads (one is 13 px off)


def test_fixed_crop_is_the_documented_box_resized(lfw_root: Path) -> None:
    image = _rgb(lfw_root / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg")
    aligned, _ = fixed_crop(image)
    box = image[53:181, 61:189]
    assert box.shape == (128, 128, 3)
    expected = cv2.resize(box, (112, 112), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(aligned, expected)
    warped = warp(image, LFW_DEEPFUNNELED.matrix()).astype(float)  # the same geometry through the general path
    assert np.abs(warped - expected).mean() < 0.5
    with pytest.raises(DataError, match="100x120 image, but the lfw-deepfunneled crop expects"):
        fixed_crop(np.zeros((120, 100, 3), np.uint8), source="x.jpg")
