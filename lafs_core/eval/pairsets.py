"""Verification pair sets and the rules that make and cut them; reading them from files is :mod:`data_tools.pairsets`.

A :class:`PairSet` holds each distinct image once (an :class:`~lafs_core.eval.embed.ImageSource` of aligned 112x112
RGB faces), the pairs as index pairs into it, the same/different flags and the fold of every pair. The fold
structure comes from the source: LFW View 2 has its own 10 folds; View 1 and generated sets are stratified (each
fold takes an equal share of same and of different pairs); a ``.bin`` uses the official contiguous ``KFold``.

The evaluation rules live here: generated pairs of labelled images (protocols.md 2: :func:`generated_pairs`, for
labelled folders and for the pretraining probe's shard set), and the smoke-run cut to a few pairs per fold
(:meth:`PairSet.per_fold`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lafs_core.errors import DataError
from lafs_core.eval.embed import ImageSource
from lafs_core.eval.verification import pairs_problem, stratified_folds

log = logging.getLogger(__name__)

ALIGNED_SIZE = 112
MAX_SAME_PAIRS = 3000


class ArrayImages:
    """Aligned images already decoded into one uint8 array (a cached pair set for repeated probes)."""

    def __init__(self, images: np.ndarray, valid: np.ndarray) -> None:
        self.images = images
        self.valid = valid

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> np.ndarray | None:
        return self.images[index] if self.valid[index] else None


class ImageSubset:
    """The images ``index`` of another source, renumbered 0..len-1 (the images a cut pair set still uses)."""

    def __init__(self, images: ImageSource, index: np.ndarray) -> None:
        self.images, self.index = images, index

    def __len__(self) -> int:
        return len(self.index)

    def load(self, i: int) -> np.ndarray | None:
        return self.images.load(int(self.index[i]))


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

    def cached(self, share: tuple[int, int] = (0, 1)) -> PairSet:
        """The same set with its images decoded and aligned once, kept in memory (~37 KB per image); with
        ``share=(rank, world)`` only the images ``rank::world`` (what that rank embeds in a distributed verify)."""
        images = np.zeros((len(self.images), ALIGNED_SIZE, ALIGNED_SIZE, 3), dtype=np.uint8)
        valid = np.zeros(len(self.images), dtype=bool)
        rank, world = share
        for i in range(rank, len(self.images), world):
            image = self.images.load(i)
            if image is not None:
                images[i], valid[i] = image, True
        return replace(self, images=ArrayImages(images, valid))

    def per_fold(self, count: int) -> PairSet:
        """The first ``count // 2`` same and different pairs of every fold (smoke runs): 10-fold accuracy stays
        defined, and only the images those pairs use are kept."""
        keep = np.sort(
            np.concatenate(
                [
                    np.flatnonzero((self.folds == fold) & (self.issame == same))[: max(1, count // 2)]
                    for fold in np.unique(self.folds)
                    for same in (True, False)
                ]
            )
        )
        used, remapped = np.unique(self.pairs[keep], return_inverse=True)
        return replace(
            self,
            images=ImageSubset(self.images, used),
            pairs=remapped.reshape(-1, 2),
            issame=self.issame[keep],
            folds=self.folds[keep],
            fold_rule=f"{self.fold_rule}, first {count} pairs per fold",
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


def generated_pairs(
    labels: np.ndarray, max_same: int = MAX_SAME_PAIRS, seed: int = 0, n_folds: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The generated-pairs rule for labelled images (labels < 0 are left out): :func:`balanced_pairs`, stratified
    folds (fewer than ``n_folds`` when a class has fewer pairs). Returns ``(used, pairs, issame, folds)``: the sorted
    indices of the images the pairs use, and the pairs as indices into ``used``."""
    labels = np.asarray(labels)
    rows = np.flatnonzero(labels >= 0)
    pairs, issame = balanced_pairs(labels[rows], max_same, seed)
    used, inverse = np.unique(rows[pairs], return_inverse=True)
    n_folds = min(n_folds, int(issame.sum()), int((~issame).sum()))
    folds = stratified_folds(issame, n_folds) if n_folds >= 2 else np.zeros(issame.size, dtype=np.int64)
    return used, inverse.reshape(-1, 2).astype(np.int64), issame, folds


def shard_pair_set(shard_dir: str | Path, num_pairs: int, seed: int = 0) -> PairSet | None:
    """Generated pairs (``num_pairs // 2`` same at most, as many different) of a shard set's labelled samples, the
    images decoded from the shards once; None when no identity has two samples (the pretraining probe)."""
    import pyarrow.parquet as pq

    from lafs_core.data.loader import read_samples

    shard_dir = Path(shard_dir)
    table = pq.read_table(shard_dir / "manifest.parquet", columns=["shard", "key", "label"]).to_pydict()
    used, pairs, issame, folds = generated_pairs(np.asarray(table["label"], dtype=np.int64), num_pairs // 2, seed)
    if issame.sum() < 2:
        return None
    keys = [table["key"][i] for i in used.tolist()]
    samples = read_samples(shard_dir, {key: table["shard"][i] for key, i in zip(keys, used.tolist(), strict=True)})
    images = np.zeros((len(keys), ALIGNED_SIZE, ALIGNED_SIZE, 3), dtype=np.uint8)
    valid = np.array([key in samples for key in keys], dtype=bool)
    for row, key in enumerate(keys):
        if key in samples:
            images[row] = samples[key]["image"].permute(1, 2, 0).numpy()
    return PairSet(
        "probe", ArrayImages(images, valid), pairs, issame, folds, str(shard_dir), f"stratified, seed {seed}"
    )
