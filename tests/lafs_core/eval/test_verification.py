"""10-fold verification accuracy against a brute-force reference, on hand-made and random distances."""

from __future__ import annotations

import numpy as np
import pytest

from lafs_core.errors import DataError
from lafs_core.eval.verification import (
    OFFICIAL_GRID,
    contiguous_folds,
    evaluate_distances,
    evaluate_embeddings,
    pair_distances,
    stratified_folds,
    ten_fold_accuracy,
)


def brute_force_ten_fold(distances, issame, folds, thresholds):
    """Python loops: for each fold, each threshold, each pair; first best threshold wins on ties."""
    accs, chosen = [], []
    for fold in sorted(set(folds.tolist())):
        train = [i for i in range(len(distances)) if folds[i] != fold]
        test = [i for i in range(len(distances)) if folds[i] == fold]
        best_t, best_acc = None, -1.0
        for t in thresholds:
            correct = sum((distances[i] < t) == issame[i] for i in train)
            if correct / len(train) > best_acc:
                best_t, best_acc = t, correct / len(train)
        chosen.append(best_t)
        accs.append(sum((distances[i] < best_t) == issame[i] for i in test) / len(test))
    return np.array(accs), np.array(chosen)


def hand_made_set():
    """40 pairs, 4 folds of 10 (5 same + 5 different), with overlapping same/different distances."""
    same = [0.3, 0.5, 0.8, 1.1, 1.6, 0.2, 0.9, 1.0, 1.2, 2.1, 0.4, 0.6, 0.7, 1.3, 1.45, 0.1, 0.95, 1.05, 1.9, 0.35]
    diff = [1.4, 1.7, 2.0, 0.85, 2.5, 1.5, 1.8, 2.2, 1.15, 3.0, 1.25, 1.75, 1.35, 2.4, 0.75, 1.65, 2.6, 2.05, 1.55, 3.5]
    distances, issame, folds = [], [], []
    for fold in range(4):
        distances += same[fold * 5 : fold * 5 + 5] + diff[fold * 5 : fold * 5 + 5]
        issame += [True] * 5 + [False] * 5
        folds += [fold] * 10
    return np.array(distances), np.array(issame), np.array(folds)


def test_grid_mode_matches_brute_force_on_hand_made_distances():
    distances, issame, folds = hand_made_set()
    accs, thresholds = ten_fold_accuracy(distances, issame, folds, mode="grid")
    ref_accs, ref_thresholds = brute_force_ten_fold(distances, issame, folds, OFFICIAL_GRID)
    np.testing.assert_allclose(accs, ref_accs)
    np.testing.assert_allclose(thresholds, ref_thresholds)
    assert accs.mean() < 1.0  # the set overlaps, so the test is not trivially perfect


def test_exact_mode_matches_brute_force_over_every_cut():
    rng = np.random.default_rng(3)
    issame = np.repeat([True, False], 60)
    distances = np.round(np.where(issame, rng.normal(1.0, 0.35, 120), rng.normal(1.5, 0.35, 120)), 2)
    folds = stratified_folds(issame, 10)
    values = np.unique(distances)
    cuts = np.r_[values[0] - 1.0, (values[:-1] + values[1:]) / 2.0, values[-1] + 1.0]
    accs, thresholds = ten_fold_accuracy(distances, issame, folds, mode="exact")
    ref_accs, _ = brute_force_ten_fold(distances, issame, folds, cuts)
    np.testing.assert_allclose(accs, ref_accs)
    # The exact optimum is never worse on the training folds than any grid threshold.
    for fold, t in zip(range(10), thresholds, strict=True):
        d, y = distances[folds != fold], issame[folds != fold]
        grid_best = max(np.mean((d < g) == y) for g in OFFICIAL_GRID)
        assert np.mean((d < t) == y) >= grid_best - 1e-12


def test_separable_pairs_give_perfect_accuracy():
    issame = np.repeat([True, False], 50)
    distances = np.where(issame, 0.5, 2.0) + np.linspace(0, 0.1, 100)
    accs, thresholds = ten_fold_accuracy(distances, issame, stratified_folds(issame))
    assert np.all(accs == 1.0)
    assert np.all((thresholds > 0.6) & (thresholds < 2.0))


def test_stratified_folds_split_view1_layout_evenly():
    issame = np.repeat([True, False], 500)  # pairsDevTest.txt: 500 same then 500 different
    folds = stratified_folds(issame, 10)
    for fold in range(10):
        assert np.sum(issame[folds == fold]) == 50
        assert np.sum(~issame[folds == fold]) == 50
    # Order preserved: the first 50 same pairs form fold 0.
    assert np.all(folds[:50] == 0) and np.all(folds[500:550] == 0)


def test_contiguous_folds_are_kfold_blocks():
    folds = contiguous_folds(23, 10)
    assert np.bincount(folds).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.all(np.diff(folds) >= 0)
    with pytest.raises(ValueError, match="cannot make"):
        contiguous_folds(5, 10)


def test_embedding_distances_and_metric_equivalence():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    d = pair_distances(a, b, "sq_l2")
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(d, np.sum((an - bn) ** 2, axis=1), atol=1e-5)
    issame = np.arange(200) < 100
    b[issame] = a[issame] + 0.8 * rng.normal(size=(100, 16))  # same pairs are close
    folds = stratified_folds(issame)
    sq = evaluate_embeddings(a, b, issame, folds, metric="sq_l2")
    cos = evaluate_embeddings(a, b, issame, folds, metric="cosine")
    # Same ranking, so the same accuracies, ROC and AUC; thresholds differ by the unit (sq_l2 = 2 * (1 - cos)).
    np.testing.assert_allclose(sq.fold_accuracies, cos.fold_accuracies)
    assert sq.auc == pytest.approx(cos.auc)
    np.testing.assert_allclose(sq.fold_thresholds, 2 * cos.fold_thresholds, atol=1e-5)
    assert 0.8 < sq.accuracy_mean <= 1.0
    assert sq.pairs == 200 and sq.folds == 10


def test_a_fold_or_a_class_left_without_pairs_is_reported_not_dropped():
    distances, issame, folds = hand_made_set()
    keep = folds != 2
    with pytest.raises(DataError, match=r"^lfw: fold 2 of 4 has no pairs left"):
        ten_fold_accuracy(distances[keep], issame[keep], folds[keep], source="lfw")
    keep = folds != 3
    evaluate_distances(distances[keep], issame[keep], folds[keep])  # the last fold: only n_folds can tell
    with pytest.raises(DataError, match=r"^pair set: fold 3 of 4 has no pairs left"):
        evaluate_distances(distances[keep], issame[keep], folds[keep], n_folds=4)
    with pytest.raises(DataError, match="only different-identity pairs are left"):
        evaluate_distances(distances[~issame], issame[~issame], folds[~issame])
    with pytest.raises(DataError, match="no pairs left to evaluate"):
        evaluate_embeddings(np.zeros((0, 4)), np.zeros((0, 4)), issame[:0], folds[:0])
