"""ROC / TAR@FAR / AUC against a brute-force ROC built by counting at every threshold."""

from __future__ import annotations

import numpy as np
import pytest

from lafs_core.eval.roc import auc, far_label, roc_curve, tar_at_far


def brute_force_roc(scores, labels):
    """One point per threshold (+inf and every distinct score), by counting accepted pairs."""
    pos, neg = scores[labels], scores[~labels]
    points = [(0.0, 0.0)]
    for t in sorted(set(scores.tolist()), reverse=True):
        points.append((float(np.sum(neg >= t) / neg.size), float(np.sum(pos >= t) / pos.size)))
    return points


def brute_force_tar_interp(points, far):
    """Linear interpolation between the best point with FPR <= far and the next point with FPR > far."""
    below = [p for p in points if p[0] <= far]
    above = [p for p in points if p[0] > far]
    x0, y0 = max(below, key=lambda p: (p[0], p[1]))
    if not above:
        return y0
    x1, y1 = min(above, key=lambda p: (p[0], p[1]))
    return y0 + (far - x0) / (x1 - x0) * (y1 - y0)


def brute_force_tar_nearest(points, far):
    """The official rule: first point (in threshold order) with the smallest |FPR - far|."""
    gaps = [abs(p[0] - far) for p in points]
    return points[gaps.index(min(gaps))][1]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rounding", [None, 1])
def test_roc_and_tar_match_brute_force(seed, rounding):
    rng = np.random.default_rng(seed)
    labels = rng.random(600) < 0.3
    scores = rng.normal(size=600) + 1.2 * labels
    if rounding is not None:  # heavy ties: vertical and diagonal ROC steps
        scores = np.round(scores, rounding)
    roc = roc_curve(scores, labels)
    points = brute_force_roc(scores, labels)
    np.testing.assert_allclose(roc.fpr, [p[0] for p in points])
    np.testing.assert_allclose(roc.tpr, [p[1] for p in points])
    fars = [1e-3, 3e-3, 1e-2, 0.05, 1e-1, 0.37, 1.0]
    np.testing.assert_allclose(tar_at_far(roc, fars, "interp"), [brute_force_tar_interp(points, f) for f in fars])
    np.testing.assert_allclose(tar_at_far(roc, fars, "nearest"), [brute_force_tar_nearest(points, f) for f in fars])
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ref_auc = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    assert auc(roc) == pytest.approx(ref_auc)
    # AUC equals the probability that a positive outscores a negative (ties count half).
    pos, neg = scores[labels], scores[~labels]
    mann_whitney = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (
        pos.size * neg.size
    )
    assert auc(roc) == pytest.approx(mann_whitney)


def test_nearest_rule_matches_sklearn_roc_curve():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    labels = rng.random(5000) < 0.1
    scores = np.round(rng.normal(size=5000) + 2.0 * labels, 2)
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels, scores)  # drop_intermediate=True, as the official code
    fars = [1e-4, 1e-3, 1e-2, 1e-1]
    official = [tpr[np.argmin(np.abs(fpr - f))] for f in fars]
    np.testing.assert_allclose(tar_at_far(roc_curve(scores, labels), fars, "nearest"), official)


def test_perfect_scores_and_errors():
    labels = np.array([True] * 5 + [False] * 5)
    roc = roc_curve(np.r_[np.ones(5), np.zeros(5)], labels)
    assert auc(roc) == 1.0
    assert tar_at_far(roc, [1e-6, 0.5]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_curve(np.ones(3), np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        roc_curve(np.array([0.1, np.nan]), np.array([True, False]))


def test_far_label_has_no_at_sign_and_reads_as_power_of_ten():
    assert far_label(1e-4) == "1e-4"
    assert far_label(1e-1) == "1e-1"
    assert far_label(0.05) == "0.05"
