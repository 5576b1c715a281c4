"""The pipeline's summary table shows result metrics, not bookkeeping."""

from __future__ import annotations

from flows.pipeline import headline_metrics


def test_headline_metrics_put_accuracy_and_losses_first_and_hide_bookkeeping() -> None:
    metrics = {
        "system/cpu_utilization_percentage": 90.0,
        "plan/accum": 4.0,
        "data/classes": 120.0,
        "lr": 1e-3,
        "train/epoch": 1.0,
        "grad_norm": 2.0,
        "dino_loss": 7.0,
        "lfw-v1/auc": 0.6,
        "lfw-v1/acc": 0.57,
        "loss": 6.0,
    }
    assert list(headline_metrics(metrics)) == ["lfw-v1/acc", "dino_loss", "loss", "grad_norm"]
    assert list(headline_metrics(metrics, limit=10)) == ["lfw-v1/acc", "dino_loss", "loss", "grad_norm", "lfw-v1/auc"]
