"""``--align detect`` on real photos: dlib's HOG detector + 5 points, the largest face, no-face skips, missing extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_tools.align import ARCFACE_TEMPLATE, LFW_DEEPFUNNELED, fixed_crop, transform_points
from data_tools.detect import default_detector, describe, detect_align
from data_tools.pairsets import FileImages
from data_tools.readers.base import decode_rgb
from lafs_core.errors import DataError

LFW_FACES = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Serena_Williams/Serena_Williams_0003.jpg"]


def _rgb(path: Path) -> np.ndarray:
    image = decode_rgb(path.read_bytes())
    assert image is not None
    return image


@pytest.mark.parametrize("rel", LFW_FACES)
def test_detect_puts_the_eyes_where_the_fixed_crop_puts_them_on_deep_funneled_lfw(lfw_root: Path, rel: str) -> None:
    image = _rgb(lfw_root / rel)
    aligned, matrix = detect_align(image, rel)
    crop_matrix = fixed_crop(image, LFW_DEEPFUNNELED)[1]
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    # the deep-funneled median eye and nose points land within a few pixels in both alignments
    median = np.array([[104.17, 113.50], [145.33, 112.67], [125.00, 136.00]])
    gap = np.linalg.norm(transform_points(matrix, median) - transform_points(crop_matrix, median), axis=1)
    assert gap.max() < 4.0, gap
    assert np.abs(aligned.astype(float) - fixed_crop(image, LFW_DEEPFUNNELED)[0]).mean() < 25  # another face: 54


def test_a_rotated_and_shifted_photo_aligns_to_the_same_face(lfw_root: Path) -> None:
    image = _rgb(lfw_root / LFW_FACES[0])
    canvas = cv2.copyMakeBorder(image, 60, 20, 10, 70, cv2.BORDER_REFLECT)
    turn = cv2.getRotationMatrix2D((canvas.shape[1] / 2, canvas.shape[0] / 2), 12.0, 1.0)
    rotated = cv2.warpAffine(canvas, turn, (canvas.shape[1], canvas.shape[0]), borderMode=cv2.BORDER_REFLECT)
    upright = detect_align(image)[0].astype(float)
    again = detect_align(rotated)[0].astype(float)
    centre = (slice(20, 100), slice(20, 92))
    assert np.abs(upright[centre] - again[centre]).mean() < 4


def test_the_largest_face_wins(lfw_root: Path) -> None:
    big = _rgb(lfw_root / LFW_FACES[0])
    small = cv2.resize(_rgb(lfw_root / LFW_FACES[1]), (180, 180), interpolation=cv2.INTER_AREA)
    canvas = np.full((260, 460, 3), 127, np.uint8)
    canvas[5:255, 0:250] = big
    canvas[40:220, 270:450] = small
    faces = default_detector().detect(canvas)
    assert len(faces) == 2 and faces[0].area > faces[1].area
    assert faces[0].box[0] < 250 <= faces[1].box[0]
    expected = detect_align(big)[0].astype(float)
    assert np.abs(detect_align(canvas)[0].astype(float) - expected).mean() < 3


def test_an_image_without_a_face_is_a_data_error_and_pair_sets_skip_it(lfw_root: Path, tmp_path: Path) -> None:
    wall = np.full((250, 250, 3), 90, np.uint8)
    with pytest.raises(DataError, match="no face found"):
        detect_align(wall, "wall.png")
    cv2.imwrite(str(tmp_path / "wall.png"), wall)
    images = FileImages([lfw_root / LFW_FACES[0], tmp_path / "wall.png"], "detect")
    assert images.load(0).shape == (112, 112, 3) and images.load(1) is None
    assert describe()["method"] == "detect" and np.allclose(ARCFACE_TEMPLATE[:2, 1], 51.6, atol=0.2)


def test_without_the_detect_extra_the_cli_says_what_to_install(lfw_root: Path, tmp_path: Path) -> None:
    hide_dlib = "import sys; sys.modules['dlib'] = None; from lafs_cli.main import main; sys.argv[0] = 'lafs'; main()"
    args = [sys.executable, "-c", hide_dlib, "data", "shards", str(lfw_root / "Aaron_Eckhart"), str(tmp_path / "out"),
            "--align", "detect", "--landmarks", "grid", "--preset", "tiny"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'lafs[detect]'" in lines[0], done.stderr
