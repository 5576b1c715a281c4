"""The one verification path: a model and a pair set in, a 10-fold verification report out.

``lafs eval verify``, the evaluation flow, the lfw-v1 experiment, the supervised stages' validation and the
pretraining probe all call :func:`verify`: every distinct image is embedded once (flip-sum, L2, the one input
transform, the one precision rule), pairs with an unreadable image are left out (a lost fold is an error naming the
set), then 10-fold accuracy, TAR@FAR and AUC. With ``distributed=True`` every rank of a running job embeds its share
of the images and every rank gets the same result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lafs_core.distributed import all_reduce_sum, rank_world
from lafs_core.eval.embed import Embeddings, embed_source
from lafs_core.eval.pairsets import PairSet
from lafs_core.eval.report import mlflow_metrics, verification_report, write_report
from lafs_core.eval.roc import DEFAULT_FARS
from lafs_core.eval.verification import Metric, ThresholdMode, VerificationResult, evaluate_embeddings
from lafs_core.precision import autocast_dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    """The verification result of one pair set, plus what was skipped (pairs with an unreadable image)."""

    pair_set: PairSet
    result: VerificationResult
    images_skipped: int
    pairs_skipped: int

    def report(self, name: str | None = None, **context: Any) -> dict[str, Any]:
        """JSON-ready report: the figures, the set's source and fold rule, the skip counts and ``context``."""
        return verification_report(
            self.result,
            name or self.pair_set.name,
            source=self.pair_set.source,
            fold_rule=self.pair_set.fold_rule,
            **context,
            images=len(self.pair_set.images),
            images_skipped=self.images_skipped,
            pairs_skipped=self.pairs_skipped,
        )

    def metrics(self, name: str | None = None) -> dict[str, float]:
        """The headline figures as MLflow metrics ``<set>/acc``, ``<set>/tar_at_far_1e-2``, ..."""
        return mlflow_metrics(self.report(name))

    def write(
        self, json_path: str | Path, name: str | None = None, **context: Any
    ) -> tuple[dict[str, Any], Path, Path]:
        """Write the JSON report and its ROC PNG beside it; (report, JSON path, PNG path)."""
        report = self.report(name, **context)
        json_out, png_out = write_report(report, json_path, self.result.fpr, self.result.tpr)
        return report, json_out, png_out


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _embed(model: torch.nn.Module, pair_set: PairSet, distributed: bool, **options: Any) -> Embeddings:
    """Every image's embedding; with ``distributed`` each rank embeds rows ``rank::world`` and the rows are summed."""
    rank, world = rank_world() if distributed else (0, 1)
    rows = np.arange(rank, len(pair_set.images), world) if world > 1 else None
    emb = embed_source(model, pair_set.images, indices=rows, **options)
    if world == 1:
        return emb
    device = _model_device(model)
    features = all_reduce_sum(torch.as_tensor(emb.features, dtype=torch.float64, device=device))
    valid = all_reduce_sum(torch.as_tensor(emb.valid, dtype=torch.float64, device=device))
    return Embeddings(features.cpu().numpy().astype(np.float32), valid.cpu().numpy() > 0.5)


def verify(
    model: torch.nn.Module,
    pair_set: PairSet,
    batch_size: int = 128,
    num_workers: int = 0,
    metric: Metric = "sq_l2",
    mode: ThresholdMode = "exact",
    fars: tuple[float, ...] = DEFAULT_FARS,
    amp: str = "auto",
    progress: bool = False,
    distributed: bool = False,
) -> Verification:
    """Verify ``model`` (a face model on its device) on ``pair_set``; see the module docstring."""
    device = _model_device(model)
    image_size = int(getattr(getattr(model, "cfg", None), "image_size", 112))
    emb = _embed(
        model,
        pair_set,
        distributed,
        batch_size=batch_size,
        num_workers=num_workers,
        image_size=image_size,
        autocast_dtype=autocast_dtype(amp, device),
        progress=progress,
    )
    keep = pair_set.check_readable(emb.valid)
    pairs = pair_set.pairs[keep]
    result = evaluate_embeddings(
        emb.features[pairs[:, 0]],
        emb.features[pairs[:, 1]],
        pair_set.issame[keep],
        pair_set.folds[keep],
        metric=metric,
        mode=mode,
        fars=fars,
    )
    return Verification(pair_set, result, int((~emb.valid).sum()), int((~keep).sum()))
