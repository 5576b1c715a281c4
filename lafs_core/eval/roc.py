"""ROC curve, TAR at fixed FAR and AUC from similarity scores, by sorting (no threshold loops).

Scores are similarities: higher means "same identity". A pair is accepted at threshold ``t`` when
``score >= t``. The ROC has one operating point per distinct score plus the origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

TarMethod = Literal["interp", "nearest"]
DEFAULT_FARS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
IJB_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class Roc:
    """ROC operating points in decreasing-threshold order (fpr and tpr are non-decreasing)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    positives: int
    negatives: int


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    if labels.all() or not labels.any():
        raise ValueError("an ROC needs both positive and negative pairs")
    return scores, labels


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> Roc:
    """All ROC operating points: one per distinct score, plus (0, 0) at threshold +inf."""
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last_of_run]
    fp = (last_of_run + 1) - tp
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    return Roc(
        fpr=np.r_[0.0, fp / negatives],
        tpr=np.r_[0.0, tp / positives],
        thresholds=np.r_[np.inf, s[last_of_run]],
        positives=positives,
        negatives=negatives,
    )


def tar_at_far(roc: Roc, fars: tuple[float, ...] | list[float], method: TarMethod = "interp") -> list[float]:
    """TAR at each FAR.

    ``interp``: the piecewise-linear ROC through its operating points, read at the FAR (on a vertical step the
    top of the step, i.e. the best TAR reachable at exactly that FAR).
    ``nearest``: the official IJB rule (method.md 10.2): the TPR of the first operating point whose FPR is
    nearest the FAR, no interpolation.
    """
    fars_arr = np.asarray(fars, dtype=np.float64)
    if method == "nearest":
        return [float(v) for v in roc.tpr[_nearest_first(roc.fpr, fars_arr)]]
    if method != "interp":
        raise ValueError(f"unknown TAR@FAR method {method!r}")
    # Top of each vertical run: the last point of every group of equal FPR.
    top = np.r_[np.flatnonzero(np.diff(roc.fpr)), roc.fpr.size - 1]
    fpr, tpr = roc.fpr[top], roc.tpr[top]
    right = np.searchsorted(fpr, fars_arr, side="right")
    left = np.clip(right - 1, 0, fpr.size - 1)
    right = np.clip(right, 0, fpr.size - 1)
    span = fpr[right] - fpr[left]
    frac = np.divide(fars_arr - fpr[left], span, out=np.zeros_like(fars_arr), where=span > 0)
    values = tpr[left] + frac * (roc.tpr[_first_of_runs(roc.fpr)[right]] - tpr[left])
    return [float(v) for v in values]


def _nearest_first(fpr: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``np.argmin(|fpr - t|)`` for each target (first index on ties) on the sorted FPR, without an O(n) temporary
    per target: the nearest value is the run just below or just above ``t``; below wins ties (it comes first)."""
    above = np.searchsorted(fpr, targets, side="left")
    below_value = fpr[np.clip(above - 1, 0, fpr.size - 1)]
    below = np.searchsorted(fpr, below_value, side="left")
    has_above, has_below = above < fpr.size, above > 0
    gap_above = np.where(has_above, fpr[np.clip(above, 0, fpr.size - 1)] - targets, np.inf)
    gap_below = np.where(has_below, targets - below_value, np.inf)
    return np.where(gap_below <= gap_above, below, np.clip(above, 0, fpr.size - 1))


def _first_of_runs(fpr: np.ndarray) -> np.ndarray:
    """Index of the first point of each run of equal FPR (the bottom of each vertical step)."""
    return np.r_[0, np.flatnonzero(np.diff(fpr)) + 1]


def auc(roc: Roc) -> float:
    """Area under the ROC (trapezoids through the operating points)."""
    return float(np.trapezoid(roc.tpr, roc.fpr))


def far_label(far: float) -> str:
    """``1e-4`` style label for metric names (MLflow forbids ``@``; ``1e-04`` would be ambiguous to read)."""
    exponent = round(float(np.log10(far)))
    if np.isclose(far, 10.0**exponent):
        return f"1e{exponent}"
    return f"{far:g}"
