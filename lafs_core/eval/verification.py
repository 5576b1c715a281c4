"""10-fold 1:1 verification accuracy (method.md 10.1, protocols.md 1) on pair distances, by sorting.

Per fold: choose the threshold that maximises accuracy on the other folds, report accuracy on the held-out fold;
the result is mean +- std (population std, as the official code) over folds. A pair is predicted "same" when its
distance is ``< threshold``. Thresholds are either the official grid (``0:0.01:4`` on squared L2) or ``exact``:
every cut between consecutive distinct training distances (the best any threshold can do on the training folds).

Pairs with an unreadable image are left out by the callers; what is left must still hold every fold and both
classes, else :class:`DataError` says which fold is empty (a 10-fold result silently computed over 9 folds, or an ROC
over one class, would be wrong, not just noisy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lafs_core.errors import DataError
from lafs_core.eval.roc import DEFAULT_FARS, TarMethod, auc, roc_curve, tar_at_far

Metric = Literal["sq_l2", "cosine"]
ThresholdMode = Literal["exact", "grid"]
OFFICIAL_GRID = np.arange(0.0, 4.0, 0.01)


@dataclass(frozen=True)
class VerificationResult:
    """10-fold accuracy plus threshold-free figures (ROC, TAR@FAR, AUC) over all pairs."""

    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray
    pairs: int
    metric: str
    tar: dict[float, float]
    auc: float
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)

    @property
    def accuracy_mean(self) -> float:
        return float(self.fold_accuracies.mean())

    @property
    def accuracy_std(self) -> float:
        return float(self.fold_accuracies.std())

    @property
    def threshold(self) -> float:
        """Mean best threshold over folds (a distance in the result's metric)."""
        return float(self.fold_thresholds.mean())

    @property
    def folds(self) -> int:
        return int(self.fold_accuracies.size)


def pair_distances(emb1: np.ndarray, emb2: np.ndarray, metric: Metric = "sq_l2") -> np.ndarray:
    """Distance between matching rows of two embedding arrays (rows are L2-normalised here).

    ``sq_l2``: ``||a - b||^2`` in [0, 4]; ``cosine``: ``1 - cos`` in [0, 2]. Same ranking, different units.
    """
    a = _l2n(np.asarray(emb1, dtype=np.float32))
    b = _l2n(np.asarray(emb2, dtype=np.float32))
    cos = np.einsum("ij,ij->i", a, b).astype(np.float64)
    if metric == "sq_l2":
        return np.clip(2.0 - 2.0 * cos, 0.0, 4.0)
    if metric == "cosine":
        return 1.0 - cos
    raise ValueError(f"unknown distance metric {metric!r}")


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def contiguous_folds(n: int, n_folds: int = 10) -> np.ndarray:
    """Fold id per pair for ``KFold(n_folds, shuffle=False)``: contiguous blocks, the first ``n % k`` one longer."""
    if n < n_folds:
        raise ValueError(f"{n} pairs cannot make {n_folds} folds")
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def stratified_folds(issame: np.ndarray, n_folds: int = 10) -> np.ndarray:
    """Fold id per pair so that each fold takes an equal, order-preserving share of same and of different pairs.

    Needed for lists such as LFW View-1 ``pairsDevTest.txt`` (500 same then 500 different): contiguous folds
    would put only one class in each fold.
    """
    issame = np.asarray(issame, dtype=bool)
    folds = np.empty(issame.size, dtype=np.int64)
    for cls in (True, False):
        idx = np.flatnonzero(issame == cls)
        if idx.size < n_folds:
            raise ValueError(f"{idx.size} {'same' if cls else 'different'} pairs cannot make {n_folds} folds")
        folds[idx] = contiguous_folds(idx.size, n_folds)
    return folds


def accuracy_curve(distances: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of ``distance < t`` for every threshold ``t``, in O((n + T) log n)."""
    same = np.sort(distances[issame])
    diff = np.sort(distances[~issame])
    true_accepts = np.searchsorted(same, thresholds, side="left")
    true_rejects = diff.size - np.searchsorted(diff, thresholds, side="left")
    return (true_accepts + true_rejects) / distances.size


def exact_thresholds(distances: np.ndarray) -> np.ndarray:
    """Candidate thresholds that realise every distinct decision: below all, between neighbours, above all."""
    values = np.unique(distances)
    mids = (values[:-1] + values[1:]) / 2.0
    return np.r_[values[0] - 1.0, mids, values[-1] + 1.0]


def best_threshold(
    distances: np.ndarray, issame: np.ndarray, mode: ThresholdMode = "exact", grid: np.ndarray = OFFICIAL_GRID
) -> float:
    """The accuracy-maximising threshold (the smallest one on ties, as ``np.argmax`` in the official code)."""
    thresholds = exact_thresholds(distances) if mode == "exact" else grid
    return float(thresholds[int(np.argmax(accuracy_curve(distances, issame, thresholds)))])


def pairs_problem(issame: np.ndarray, folds: np.ndarray, n_folds: int | None = None) -> str | None:
    """Why these pairs cannot give a k-fold result and an ROC, or ``None``: a fold (of ``n_folds``, else of the
    folds 0..max seen) has no pairs, or only one class is left."""
    issame, folds = np.asarray(issame, dtype=bool), np.asarray(folds)
    if issame.size == 0:
        return "no pairs left to evaluate (every pair has an unreadable image)"
    expected = n_folds if n_folds is not None else int(folds.max()) + 1
    empty = sorted(set(range(expected)) - set(np.unique(folds).tolist()))
    if empty:
        return f"fold {', '.join(map(str, empty))} of {expected} has no pairs left (their images are unreadable)"
    if issame.all() or not issame.any():
        kind = "same" if issame.all() else "different"
        return f"only {kind}-identity pairs are left: accuracy and ROC need both"
    return None


def ten_fold_accuracy(
    distances: np.ndarray,
    issame: np.ndarray,
    folds: np.ndarray,
    mode: ThresholdMode = "exact",
    grid: np.ndarray = OFFICIAL_GRID,
    n_folds: int | None = None,
    source: str = "pair set",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold held-out accuracy and the threshold chosen on the other folds; DataError naming ``source`` when a
    fold is empty (see :func:`pairs_problem`)."""
    distances = np.asarray(distances, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    folds = np.asarray(folds)
    if not distances.shape == issame.shape == folds.shape:
        raise ValueError("distances, issame and folds must have the same length")
    if problem := pairs_problem(issame, folds, n_folds):
        raise DataError(source, problem)
    fold_ids = np.unique(folds)
    accs = np.empty(fold_ids.size)
    thresholds = np.empty(fold_ids.size)
    for i, fold in enumerate(fold_ids):
        test = folds == fold
        thresholds[i] = best_threshold(distances[~test], issame[~test], mode, grid)
        accs[i] = np.mean((distances[test] < thresholds[i]) == issame[test])
    return accs, thresholds


def evaluate_distances(
    distances: np.ndarray,
    issame: np.ndarray,
    folds: np.ndarray,
    metric: str = "sq_l2",
    mode: ThresholdMode = "exact",
    fars: tuple[float, ...] = DEFAULT_FARS,
    tar_method: TarMethod = "interp",
    n_folds: int | None = None,
    source: str = "pair set",
) -> VerificationResult:
    """The full verification result for pair distances: 10-fold accuracy, ROC, TAR@FAR and AUC."""
    accs, thresholds = ten_fold_accuracy(distances, issame, folds, mode, n_folds=n_folds, source=source)
    roc = roc_curve(-np.asarray(distances, dtype=np.float64), issame)
    return VerificationResult(
        fold_accuracies=accs,
        fold_thresholds=thresholds,
        pairs=int(np.asarray(distances).size),
        metric=metric,
        tar=dict(zip(fars, tar_at_far(roc, fars, tar_method), strict=True)),
        auc=auc(roc),
        fpr=roc.fpr,
        tpr=roc.tpr,
    )


def evaluate_embeddings(
    emb1: np.ndarray,
    emb2: np.ndarray,
    issame: np.ndarray,
    folds: np.ndarray,
    metric: Metric = "sq_l2",
    mode: ThresholdMode = "exact",
    fars: tuple[float, ...] = DEFAULT_FARS,
    n_folds: int | None = None,
    source: str = "pair set",
) -> VerificationResult:
    """Verification result for paired embeddings (row i of ``emb1`` vs row i of ``emb2``); ``n_folds`` (the folds
    the set was made with) lets a lost last fold be reported too, ``source`` names the set in errors."""
    if mode == "grid" and metric != "sq_l2":
        raise ValueError("the official threshold grid is defined on squared L2 distances")
    distances = pair_distances(emb1, emb2, metric)
    return evaluate_distances(distances, issame, folds, metric, mode, fars, n_folds=n_folds, source=source)
