"""The evaluation flow's pair subset keeps every fold balanced and its images consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flows.evaluate import stratified_subset
from lafs_core.eval.pairsets import load_pair_set


def test_subset_of_lfw_view1_is_balanced_per_fold(shared_datasets: Path) -> None:
    full = load_pair_set("lfw-v1")
    small = stratified_subset(full, 6)
    assert len(small) == 60
    for fold in range(10):
        in_fold = small.folds == fold
        assert in_fold.sum() == 6
        assert small.issame[in_fold].sum() == 3
    assert len(small.images) == len(np.unique(small.pairs)) <= 120
    first_same = np.flatnonzero((full.folds == 0) & full.issame)[0]
    a, b = full.pairs[first_same]
    kept = np.flatnonzero((small.folds == 0) & small.issame)[0]
    sa, sb = small.pairs[kept]
    assert np.array_equal(small.images.load(int(sa)), full.images.load(int(a)))
    assert np.array_equal(small.images.load(int(sb)), full.images.load(int(b)))
