"""Reading verification pair sets: LFW pair files, insightface ``.bin`` files and labelled image folders.

Each reader returns a :class:`lafs_core.eval.pairsets.PairSet` whose images are decoded and aligned on load (the
LFW deep-funneled fixed crop, none = resize and centre-crop, or ``detect`` for raw photos). Named sets (``lfw-v1``,
``lfw-v2``, ``att``, ``yaleb``, ``yale``) resolve to the shared datasets; the labelled folders among them are also the
named face sources of :func:`named_source`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from data_tools.align import LFW_DEEPFUNNELED, fixed_crop
from data_tools.readers.base import decode_rgb
from lafs_core.env import shared_datasets
from lafs_core.errors import DataError
from lafs_core.eval.pairsets import ALIGNED_SIZE, MAX_SAME_PAIRS, PairSet, generated_pairs
from lafs_core.eval.verification import contiguous_folds

log = logging.getLogger(__name__)

Align = Literal["auto", "lfw-deepfunneled", "none", "detect"]

NAMED_SETS: dict[str, tuple[str, str]] = {
    "lfw-v1": ("lfw_deepfunneled/pairsDevTest.txt", "lfw_deepfunneled/lfw-deepfunneled"),
    "lfw-v2": ("lfw_deepfunneled/pairs.txt", "lfw_deepfunneled/lfw-deepfunneled"),
    "att": ("att_faces/att_faces", ""),
    "yaleb": ("extended_yale_b_cropped/CroppedYale", ""),
    "yale": ("yalefaces/yalefaces", ""),
}
# Named face sources (training data, embedding, identification): the labelled folders above plus LFW's images.
NAMED_SOURCES: dict[str, str] = {
    "lfw": "lfw_deepfunneled/lfw-deepfunneled",
    **{name: rel for name, (rel, images) in NAMED_SETS.items() if not images},
}


def named_source(spec: str | Path) -> Path:
    """``spec`` as a path; the names of the shared face folders (``lfw``, ``att``, ``yaleb``, ``yale``) resolve."""
    rel = NAMED_SOURCES.get(str(spec))
    return shared_datasets() / rel if rel else Path(spec)


# The lfw-v1 validation pairs (protocols.md 1.5): people of the pool with 2..k-1 images, k = 4, seed 0.
VALIDATION_SET = "lfw-v1-val"
LFW_IMAGES = "lfw_deepfunneled/lfw-deepfunneled"


def validation_pair_file() -> Path:
    """The ``lfw-v1-val`` pair file, made from the shared LFW by its rule once and kept under ``<home>/.cache``."""
    from data_tools.fewshot import select_validation_pairs
    from lafs_core.env import project_home

    path = project_home() / ".cache" / "pairs" / f"{VALIDATION_SET}.txt"
    if not path.is_file():
        test = shared_datasets() / NAMED_SETS["lfw-v1"][0]
        select_validation_pairs(shared_datasets() / LFW_IMAGES, 4, test).write(path)
    return path


def named_pair_file(spec: str | Path) -> Path:
    """``spec`` as a path; the names of the shared LFW pair files (``lfw-v1``, ``lfw-v2``) and of the lfw-v1
    validation pairs (``lfw-v1-val``) resolve."""
    if str(spec) == VALIDATION_SET:
        return validation_pair_file()
    rel, images = NAMED_SETS.get(str(spec), ("", ""))
    return shared_datasets() / rel if rel and images else Path(spec)


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


def folder_pair_set(
    root: Path, align: str = "none", max_same: int = MAX_SAME_PAIRS, seed: int = 0, n_folds: int = 10
) -> PairSet:
    """Balanced, seeded pairs of a labelled image folder (one sub-folder per identity, or flat names)."""
    from data_tools.readers.image_folder import ImageFolder

    folder = ImageFolder(root)
    labels = np.array([item.label for item in folder.items], dtype=np.int64)
    used, pairs, issame, folds = generated_pairs(labels, max_same, seed, n_folds)
    if not issame.any():
        raise DataError(root, "no identity has two images: cannot make same-identity pairs")
    return PairSet(
        name=root.name,
        images=FileImages([folder.root / folder.items[i].key for i in used.tolist()], align),
        pairs=pairs,
        issame=issame,
        folds=folds,
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
    """A pair set from a name (``lfw-v1``, ``lfw-v1-val``, ``lfw-v2``, ``att``, ``yaleb``, ``yale``), a ``.bin``, an
    LFW pair file or a labelled image folder. ``align="auto"``: the LFW deep-funneled crop for LFW pair files, else
    none.
    """
    name = None
    if str(spec) == VALIDATION_SET:
        name, spec = VALIDATION_SET, validation_pair_file()
        images = images or shared_datasets() / LFW_IMAGES
    elif str(spec) in NAMED_SETS:
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


def load_pair_sets(specs: Sequence[str | Path]) -> list[PairSet]:
    """:func:`load_pair_set` of each spec with its defaults (the validation sets of a training stage)."""
    return [load_pair_set(spec) for spec in specs]
