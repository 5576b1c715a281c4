"""A model verified on a pair set: the one code path of ``lafs eval verify`` and of in-training probes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lafs_core.eval.embed import embed_source
from lafs_core.eval.pairsets import PairSet
from lafs_core.eval.report import mlflow_metrics, verification_report
from lafs_core.eval.roc import DEFAULT_FARS
from lafs_core.eval.verification import Metric, ThresholdMode, VerificationResult, evaluate_embeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairSetVerification:
    """The verification result plus what was skipped (pairs with an unreadable image are left out)."""

    result: VerificationResult
    images: int
    images_skipped: int
    pairs_skipped: int

    def report(self, name: str, **context: object) -> dict[str, object]:
        """JSON-ready report with the skip counts."""
        return verification_report(
            self.result,
            name,
            **context,
            images=self.images,
            images_skipped=self.images_skipped,
            pairs_skipped=self.pairs_skipped,
        )


def verify_pair_set(
    model: torch.nn.Module,
    pair_set: PairSet,
    batch_size: int = 128,
    num_workers: int = 0,
    metric: Metric = "sq_l2",
    mode: ThresholdMode = "exact",
    fars: tuple[float, ...] = DEFAULT_FARS,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> PairSetVerification:
    """Embed every distinct image once (flip-sum, L2), then 10-fold accuracy, TAR@FAR and AUC over the pairs."""
    emb = embed_source(
        model, pair_set.images, batch_size, num_workers, autocast_dtype=autocast_dtype, progress=progress
    )
    keep = emb.valid[pair_set.pairs].all(axis=1)
    if not keep.all():
        log.warning("%s: %d pairs left out (unreadable images)", pair_set.name, int((~keep).sum()))
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
    return PairSetVerification(result, len(pair_set.images), emb.skipped, int((~keep).sum()))


def probe_verification(model: torch.nn.Module, pair_set: PairSet, batch_size: int = 128) -> dict[str, float]:
    """In-training probe: ``{<set>/acc, <set>/acc_std, <set>/threshold, <set>/tar_at_far_1e-2, ..., <set>/auc}``.

    The model's train/eval mode is restored afterwards. Build the pair set once with ``load_pair_set(...).cached()``
    so repeated probes do not decode images again.
    """
    verified = verify_pair_set(model, pair_set, batch_size)
    return mlflow_metrics(verified.report(pair_set.name))
