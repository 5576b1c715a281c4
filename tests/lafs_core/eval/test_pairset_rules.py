"""The rules of pair sets: balanced generated pairs (protocols.md 2), the probe's pairs of a shard set, and the cut to
a few pairs per fold."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from data_tools.pairsets import load_pair_set
from lafs_core.eval.pairsets import balanced_pairs, generated_pairs, shard_pair_set

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from _pretrain_shards import write_lfw_shards


def test_balanced_pairs_follow_protocol():
    labels = np.repeat(np.arange(40), 10)  # AT&T: 40 ids x 10
    pairs, issame = balanced_pairs(labels, seed=1)
    assert issame.sum() == 40 * 45 and (~issame).sum() == 40 * 45
    assert np.all(labels[pairs[issame, 0]] == labels[pairs[issame, 1]])
    assert np.all(labels[pairs[~issame, 0]] != labels[pairs[~issame, 1]])
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == len(pairs)
    again, _ = balanced_pairs(labels, seed=1)
    other, _ = balanced_pairs(labels, seed=2)
    assert np.array_equal(pairs, again) and not np.array_equal(pairs, other)
    big = np.repeat(np.arange(38), 64)  # Extended Yale B scale: same pairs capped at 3000
    _, big_same = balanced_pairs(big, seed=0)
    assert big_same.sum() == 3000 and (~big_same).sum() == 3000


def test_generated_pairs_leave_out_unlabelled_images_and_use_fewer_folds_when_small():
    labels = np.array([-1, 0, 0, -1, 1, 1, 2, 2, 2])
    used, pairs, issame, folds = generated_pairs(labels, max_same=4, seed=0)
    assert set(used.tolist()) <= {1, 2, 4, 5, 6, 7, 8}
    original = used[pairs]
    assert np.all((labels[original[:, 0]] == labels[original[:, 1]]) == issame)
    assert issame.sum() == 4 and (~issame).sum() == 4
    assert sorted(np.unique(folds).tolist()) == [0, 1, 2, 3]
    assert all(issame[folds == f].sum() == 1 for f in range(4))


def test_probe_pairs_of_a_shard_set_hold_its_decoded_faces(lfw_root: Path, tmp_path: Path):
    write_lfw_shards(lfw_root, tmp_path, 49, max_images=40, shard_size=16)
    probe = shard_pair_set(tmp_path, 20, seed=3)
    assert probe is not None and probe.issame.sum() == 10 and len(probe) == 20
    assert probe.images.load(0).shape == (112, 112, 3) and bool(probe.images.valid.all())
    assert sorted(np.unique(probe.folds).tolist()) == list(range(10))


def test_first_pairs_per_fold_stay_balanced_and_keep_their_images(shared_datasets: Path) -> None:
    full = load_pair_set("lfw-v1")
    small = full.per_fold(6)
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
