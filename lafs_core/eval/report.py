"""Evaluation reports: a JSON file with the ROC PNG beside it, and the same figures as MLflow metrics.

Metric names are ``<set>/acc``, ``<set>/acc_std``, ``<set>/auc``, ``<set>/tar_at_far_1e-4`` ... (MLflow forbids ``@``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from lafs_core.eval.ijb import IjbResult
from lafs_core.eval.plots import plot_roc
from lafs_core.eval.roc import far_label
from lafs_core.eval.verification import VerificationResult


def set_name(text: str) -> str:
    """A metric-safe set name: lower case, runs of other characters become ``_``."""
    return re.sub(r"[^a-z0-9_.-]+", "_", text.lower()).strip("_") or "set"


def _tars(tar: dict[float, float]) -> dict[str, float]:
    return {far_label(far): float(value) for far, value in tar.items()}


def verification_report(result: VerificationResult, name: str, **context: Any) -> dict[str, Any]:
    """JSON-ready verification report: accuracy mean/std over folds, per-fold figures, TAR@FAR, AUC."""
    return {
        "set": name,
        **context,
        "pairs": result.pairs,
        "folds": result.folds,
        "accuracy_mean": result.accuracy_mean,
        "accuracy_std": result.accuracy_std,
        "fold_accuracies": [float(a) for a in result.fold_accuracies],
        "threshold": result.threshold,
        "fold_thresholds": [float(t) for t in result.fold_thresholds],
        "metric": result.metric,
        "tar_at_far": _tars(result.tar),
        "auc": result.auc,
    }


def ijb_report(result: IjbResult, **context: Any) -> dict[str, Any]:
    """JSON-ready IJB report: TAR at each FAR (headline 1e-4), AUC and counts."""
    return {
        "set": result.name,
        **context,
        "pairs": result.pairs,
        "templates": result.templates,
        "images": result.images,
        "images_skipped": result.images_skipped,
        "tar_at_far": _tars(result.tar),
        "auc": result.auc,
    }


def mlflow_metrics(report: dict[str, Any], prefix: str | None = None) -> dict[str, float]:
    """The report's headline figures as MLflow metrics named ``<set>/<figure>``."""
    prefix = set_name(prefix or report["set"])
    metrics: dict[str, float] = {}
    if "accuracy_mean" in report:
        metrics[f"{prefix}/acc"] = report["accuracy_mean"]
        metrics[f"{prefix}/acc_std"] = report["accuracy_std"]
        metrics[f"{prefix}/threshold"] = report["threshold"]
    for far, value in report["tar_at_far"].items():
        metrics[f"{prefix}/tar_at_far_{far}"] = value
    metrics[f"{prefix}/auc"] = report["auc"]
    return metrics


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(report: dict[str, Any], json_path: str | Path) -> Path:
    """Write a JSON report atomically (reports without a ROC, e.g. identification)."""
    json_path = Path(json_path)
    _write_text(json_path, json.dumps(report, indent=2) + "\n")
    return json_path


def write_report(
    report: dict[str, Any], json_path: str | Path, fpr: np.ndarray, tpr: np.ndarray, label: str | None = None
) -> tuple[Path, Path]:
    """Write the JSON report and its ROC PNG (same name, ``.png``) atomically; returns both paths."""
    json_path = Path(json_path)
    png_path = json_path.with_suffix(".png")
    plot_roc({label or report["set"]: (fpr, tpr)}, png_path, title=f"ROC: {report['set']}")
    report = {**report, "roc_png": png_path.name}
    _write_text(json_path, json.dumps(report, indent=2) + "\n")
    return json_path, png_path


def log_to_mlflow(metrics: dict[str, float], files: tuple[Path, ...], folder: str) -> None:
    """Log an evaluation's metrics and its files (under ``eval/<folder>``) to the active MLflow run (rank 0)."""
    from lafs_core import tracking

    tracking.log_metrics(metrics)
    for path in files:
        tracking.log_artifact(path, f"eval/{set_name(folder)}")
