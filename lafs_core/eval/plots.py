"""ROC curve plots as PNG (a bare matplotlib ``Figure`` renders with Agg: no display, no pyplot state)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

MAX_POINTS = 20_000


def _thin(fpr: np.ndarray, tpr: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points (IJB-C has millions), keeping the first and last, on a log-FPR scale."""
    if fpr.size <= max_points:
        return fpr, tpr
    positive = fpr[fpr > 0]
    lo = positive.min() if positive.size else 1e-12
    grid = np.r_[0.0, np.geomspace(lo, 1.0, max_points - 1)]
    idx = np.unique(np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, fpr.size - 1))
    return fpr[idx], tpr[idx]


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """Write ROC curves ``{label: (fpr, tpr)}`` on a log-FAR axis to ``path`` (written to a temp name, then renamed)."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 5), dpi=100)
    ax = fig.subplots()
    floor = 1.0
    for label, (fpr, tpr) in curves.items():
        fpr, tpr = _thin(np.asarray(fpr), np.asarray(tpr))
        shown = fpr > 0
        if shown.any():
            floor = min(floor, float(fpr[shown].min()))
        ax.plot(fpr[shown], tpr[shown], label=label, linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlim(max(floor, 1e-7), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("FAR (false accept rate)")
    ax.set_ylabel("TAR (true accept rate)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", bbox_inches="tight")
    tmp.replace(path)
    return path
