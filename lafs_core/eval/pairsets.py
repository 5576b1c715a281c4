"""Verification pair sets: LFW pair files, insightface ``.bin`` files and balanced pairs of labelled folders.

A :class:`PairSet` holds each distinct image once (an :class:`~lafs_core.eval.embed.ImageSource` of aligned 112x112
RGB faces), the pairs as index pairs into it, the same/different flags and the fold of every pair. The fold
structure comes from the source: LFW View 2 has its own 10 folds; View 1 and generated sets are stratified (each
fold takes an equal share of same and of different pairs); a ``.bin`` uses the official contiguous ``KFold``.

Named sets (``lfw-v1``, ``lfw-v2``, ``att``, ``yaleb``, ``yale``) resolve to the shared datasets.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from data_tools.align import LFW_DEEPFUNNELED, fixed_crop
from data_tools.readers.base import decode_rgb
from lafs_core.env import shared_datasets
from lafs_core.errors import DataError
from lafs_core.eval.embed import ImageSource
from lafs_core.eval.verification import contiguous_folds, pairs_problem, stratified_folds

log = logging.getLogger(__name__)

Align = Literal["auto", "lfw-deepfunneled", "none", "detect"]
ALIGNED_SIZE = 112
MAX_SAME_PAIRS = 3000

NAMED_SETS: dict[str, tuple[str, str]] = {
    "lfw-v1": ("lfw_deepfunneled/pairsDevTest.txt", "lfw_deepfunneled/lfw-deepfunneled"),
    "lfw-v2": ("lfw_deepfunneled/pairs.txt", "lfw_deepfunneled/lfw-deepfunneled"),
    "att": ("att_faces/att_faces", ""),
    "yaleb": ("extended_yale_b_cropped/CroppedYale", ""),
    "yale": ("yalefaces/yalefaces", ""),
}


def resize_center_crop(image: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """No alignment: scale the short side to ``size`` and take the centre square (already-cropped faces)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


def _align(image: np.ndarray, align: str, source: str) -> np.ndarray | None:
    if align == "lfw-deepfunneled":
        return fixed_crop(image, LFW_DEEPFUNNELED, source)[0]
    if align == "detect":
        from data_tools.detect import detect_align

        try:
            return detect_align(image, source)[0]
        except DataError:
            log.warning("skipping %s: no face found", source)
            return None
    return resize_center_crop(image)


class FileImages:
    """Image files decoded to RGB and aligned on load; ``None`` for a file that cannot be read or decoded."""

    def __init__(self, paths: list[Path], align: str) -> None:
        self.paths = paths
        self.align = align

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray | None:
        path = self.paths[index]
        try:
            image = decode_rgb(path.read_bytes())
        except OSError:
            image = None
        if image is None:
            log.warning("skipping %s: cannot read or decode", path)
            return None
        try:
            return _align(image, self.align, str(path))
        except DataError as exc:
            log.warning("skipping %s: %s", path, exc.problem)
            return None


class EncodedImages:
    """Encoded images held in memory (a ``.bin``), decoded and resized on load."""

    def __init__(self, data: list[bytes], align: str) -> None:
        self.data = data
        self.align = align

    def __len__(self) -> int:
        return len(self.data)

    def load(self, index: int) -> np.ndarray | None:
        image = decode_rgb(self.data[index])
        return None if image is None else _align(image, self.align, f"image {index}")


class ArrayImages:
    """Aligned images already decoded into one uint8 array (a cached pair set for repeated probes)."""

    def __init__(self, images: np.ndarray, valid: np.ndarray) -> None:
        self.images = images
        self.valid = valid

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> np.ndarray | None:
        return self.images[index] if self.valid[index] else None


@dataclass(frozen=True)
class PairSet:
    """Distinct images, pairs of indices into them, same/different flags and the fold of each pair."""

    name: str
    images: ImageSource
    pairs: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    source: str = ""
    fold_rule: str = ""

    def __len__(self) -> int:
        return len(self.issame)

    def check_readable(self, readable: np.ndarray) -> np.ndarray:
        """The pairs whose two images are ``readable`` (a flag per image); DataError naming the set's source when
        that leaves no pairs, an empty fold (it would silently drop out of the k folds) or a single class."""
        keep = np.asarray(readable, dtype=bool)[self.pairs].all(axis=1)
        n_folds = int(self.folds.max()) + 1 if self.folds.size else 0
        problem = pairs_problem(self.issame[keep], self.folds[keep], n_folds)
        if problem is not None:
            lost = len(readable) - int(np.count_nonzero(readable))
            raise DataError(self.source or self.name, f"{lost} of its {len(readable)} images are missing: {problem}")
        if not keep.all():
            log.warning("%s: %d of %d pairs left out (missing images)", self.source, int((~keep).sum()), keep.size)
        return keep

    def cached(self) -> PairSet:
        """The same set with every image decoded and aligned once, kept in memory (~37 KB per image)."""
        images = np.zeros((len(self.images), ALIGNED_SIZE, ALIGNED_SIZE, 3), dtype=np.uint8)
        valid = np.zeros(len(self.images), dtype=bool)
        for i in range(len(self.images)):
            image = self.images.load(i)
            if image is not None:
                images[i], valid[i] = image, True
        return replace(self, images=ArrayImages(images, valid))


def _unique_images(keys: list[str]) -> tuple[list[str], np.ndarray]:
    """Distinct keys in first-seen order and the index of each input key among them."""
    index: dict[str, int] = {}
    for key in keys:
        index.setdefault(key, len(index))
    return list(index), np.array([index[k] for k in keys], dtype=np.int64)


def lfw_pair_set(pairs_file: Path, images_root: Path | None = None, align: str = "lfw-deepfunneled") -> PairSet:
    """An LFW pair file (View 1 or View 2) over the LFW image folder, with the file's own fold structure."""
    from data_tools.readers.pairs import read_pairs

    parsed = read_pairs(pairs_file, images_root)
    keys = [str(p) for pair in parsed.pairs for p in (pair.path1, pair.path2)]
    distinct, index = _unique_images(keys)
    pair_set = PairSet(
        name=pairs_file.stem,
        images=FileImages([Path(k) for k in distinct], align),
        pairs=index.reshape(-1, 2),
        issame=np.array([p.same for p in parsed.pairs], dtype=bool),
        folds=np.array([p.fold for p in parsed.pairs], dtype=np.int64),
        source=str(pairs_file),
        fold_rule="lfw-view2-folds" if parsed.view == 2 else "stratified",
    )
    pair_set.check_readable(np.array([os.path.isfile(key) for key in distinct], dtype=bool))
    return pair_set


def bin_pair_set(path: Path, align: str = "none", n_folds: int = 10) -> PairSet:
    """An insightface ``.bin`` (read with the restricted unpickler); contiguous folds as the official KFold."""
    from data_tools.readers.verification_bin import load_verification_bin

    data, issame = load_verification_bin(path)
    return PairSet(
        name=path.stem,
        images=EncodedImages(data, align),
        pairs=np.arange(len(data), dtype=np.int64).reshape(-1, 2),
        issame=issame,
        folds=contiguous_folds(issame.size, n_folds),
        source=str(path),
        fold_rule="contiguous",
    )


def balanced_pairs(labels: np.ndarray, max_same: int = MAX_SAME_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """protocols.md 2: all same-identity pairs up to ``max_same`` (seeded sample), and as many different pairs.

    Returns ``(pairs (N, 2), issame (N,))``, same pairs first; different pairs are distinct unordered pairs drawn
    uniformly among all cross-identity image pairs.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    same_parts = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        i, j = np.triu_indices(idx.size, k=1)
        same_parts.append(np.stack([idx[i], idx[j]], axis=1))
    same = np.concatenate(same_parts) if same_parts else np.empty((0, 2), np.int64)
    if len(same) > max_same:
        same = same[np.sort(rng.choice(len(same), max_same, replace=False))]
    counts = np.unique(labels, return_counts=True)[1]
    cross_total = (labels.size**2 - int(np.sum(counts**2))) // 2
    want = min(len(same), cross_total)
    seen: set[tuple[int, int]] = set()
    diff: list[tuple[int, int]] = []
    while len(diff) < want:
        a = rng.integers(0, labels.size, size=2 * (want - len(diff)) + 16)
        b = rng.integers(0, labels.size, size=a.size)
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            key = (min(x, y), max(x, y))
            if labels[x] != labels[y] and key not in seen:
                seen.add(key)
                diff.append(key)
                if len(diff) == want:
                    break
    pairs = np.concatenate([same, np.array(diff, dtype=np.int64).reshape(-1, 2)]).astype(np.int64)
    issame = np.r_[np.ones(len(same), bool), np.zeros(len(diff), bool)]
    return pairs, issame


def folder_pair_set(
    root: Path, align: str = "none", max_same: int = MAX_SAME_PAIRS, seed: int = 0, n_folds: int = 10
) -> PairSet:
    """Balanced, seeded pairs of a labelled image folder (one sub-folder per identity, or flat names)."""
    from data_tools.readers.image_folder import ImageFolder

    folder = ImageFolder(root)
    labels = np.array([item.label for item in folder.items], dtype=np.int64)
    pairs, issame = balanced_pairs(labels, max_same, seed)
    if not issame.any():
        raise DataError(root, "no identity has two images: cannot make same-identity pairs")
    used, inverse = np.unique(pairs, return_inverse=True)
    return PairSet(
        name=root.name,
        images=FileImages([folder.root / folder.items[i].key for i in used.tolist()], align),
        pairs=inverse.reshape(-1, 2).astype(np.int64),
        issame=issame,
        folds=stratified_folds(issame, n_folds),
        source=str(root),
        fold_rule=f"stratified, balanced pairs seed {seed}",
    )


def load_pair_set(
    spec: str | Path,
    images: str | Path | None = None,
    align: Align = "auto",
    seed: int = 0,
    max_same: int = MAX_SAME_PAIRS,
) -> PairSet:
    """A pair set from a name (``lfw-v1``, ``lfw-v2``, ``att``, ``yaleb``, ``yale``), a ``.bin``, an LFW pair
    file or a labelled image folder. ``align="auto"``: the LFW deep-funneled crop for LFW pair files, else none.
    """
    name = None
    if str(spec) in NAMED_SETS:
        name = str(spec)
        rel, rel_images = NAMED_SETS[name]
        spec = shared_datasets() / rel
        images = images or (shared_datasets() / rel_images if rel_images else None)
    path = Path(spec)
    if not path.exists():
        raise DataError(path, f"pair source not found (a path, or one of {', '.join(NAMED_SETS)})")
    if path.is_dir():
        chosen = "none" if align == "auto" else align
        pair_set = folder_pair_set(path, chosen, max_same, seed)
    elif path.suffix == ".bin":
        pair_set = bin_pair_set(path, "none" if align == "auto" else align)
    else:
        chosen = "lfw-deepfunneled" if align == "auto" else align
        pair_set = lfw_pair_set(path, Path(images) if images else None, chosen)
    return replace(pair_set, name=name) if name else pair_set
