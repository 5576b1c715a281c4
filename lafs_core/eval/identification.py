"""1:N identification on a labelled source: seeded gallery/probe split, rank-k (CMC) and TPIR at FPIR.

Protocol (open-set, as NIST FRVT and IJB-C 1:N): a seeded ``unenrolled_fraction`` of the identities is left out of
the gallery; their images are *non-mated* probes. Every other identity enrols ``gallery_per_identity`` images
(seeded; its template is the L2-normalised mean of their embeddings) and its remaining images are *mated* probes.
Scores are cosine similarities between a probe and every template.

- rank-k: share of mated probes whose own template is among the k best (closed-set CMC; rank-1 is the headline).
- TPIR at FPIR f: the threshold t is the lowest score such that at most ``floor(f * non-mated)`` non-mated probes
  score above it (their best template); TPIR is the share of mated probes whose best template is their own *and*
  scores above t. The FPIR actually reached is reported beside it (it is below f when f is finer than 1/non-mated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lafs_core.eval.embed import ImageSource, embed_source
from lafs_core.eval.roc import far_label

DEFAULT_FPIRS = (0.01, 0.1)
DEFAULT_RANKS = (1, 5)


@dataclass(frozen=True)
class GalleryProbeSplit:
    """Image indices of the gallery, the mated probes and the non-mated probes (disjoint)."""

    gallery: np.ndarray
    mated: np.ndarray
    non_mated: np.ndarray


def split_gallery_probe(
    labels: np.ndarray, gallery_per_identity: int = 1, unenrolled_fraction: float = 0.2, seed: int = 0
) -> GalleryProbeSplit:
    """Seeded split of labelled images (labels < 0 are ignored) into gallery, mated and non-mated probes.

    ``round(unenrolled_fraction * identities)`` identities (at most all but one) are not enrolled. An enrolled
    identity with no more than ``gallery_per_identity`` images is all gallery (a distractor with no probe).
    """
    if gallery_per_identity < 1:
        raise ValueError("gallery_per_identity must be at least 1")
    if not 0.0 <= unenrolled_fraction < 1.0:
        raise ValueError("unenrolled_fraction must be in [0, 1)")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    identities = np.unique(labels[labels >= 0])
    unenrolled = min(round(unenrolled_fraction * identities.size), max(identities.size - 1, 0))
    left_out = set(rng.permutation(identities)[:unenrolled].tolist())
    gallery, mated, non_mated = [], [], []
    for identity in identities.tolist():
        images = rng.permutation(np.flatnonzero(labels == identity))
        if identity in left_out:
            non_mated.append(images)
        else:
            gallery.append(images[:gallery_per_identity])
            mated.append(images[gallery_per_identity:])

    def joined(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    return GalleryProbeSplit(joined(gallery), joined(mated), joined(non_mated))


@dataclass(frozen=True)
class IdentificationResult:
    """CMC at the requested ranks, TPIR (and the FPIR reached, the threshold) at each FPIR, and the counts."""

    cmc: dict[int, float]
    tpir: dict[float, float]
    fpir_reached: dict[float, float]
    thresholds: dict[float, float]
    gallery_identities: int
    gallery_images: int
    mated_probes: int
    non_mated_probes: int

    @property
    def rank1(self) -> float:
        return self.cmc[1]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def identify(
    features: np.ndarray,
    labels: np.ndarray,
    split: GalleryProbeSplit,
    ranks: tuple[int, ...] = DEFAULT_RANKS,
    fpirs: tuple[float, ...] = DEFAULT_FPIRS,
) -> IdentificationResult:
    """Identification figures of embeddings ``(N, dim)`` with ``labels`` under ``split`` (see the module doc)."""
    if split.mated.size == 0:
        raise ValueError("no mated probe: every enrolled identity needs more images than its gallery share")
    labels = np.asarray(labels)
    feats = _unit(np.asarray(features, np.float64))
    enrolled = np.unique(labels[split.gallery])
    if not np.isin(labels[split.mated], enrolled).all():
        raise ValueError("a mated probe's identity has no gallery image")
    templates = _unit(np.stack([feats[split.gallery[labels[split.gallery] == c]].mean(0) for c in enrolled]))
    mated_scores = feats[split.mated] @ templates.T
    own = np.searchsorted(enrolled, labels[split.mated])
    own_score = mated_scores[np.arange(own.size), own]
    rank = 1 + (mated_scores > own_score[:, None]).sum(axis=1)
    cmc = {k: float((rank <= k).mean()) for k in ranks}
    tpir: dict[float, float] = {}
    reached: dict[float, float] = {}
    thresholds: dict[float, float] = {}
    if split.non_mated.size:
        best_non_mated = np.sort((feats[split.non_mated] @ templates.T).max(axis=1))[::-1]
        for fpir in fpirs:
            if not 0.0 < fpir < 1.0:
                raise ValueError(f"FPIR must be in (0, 1), not {fpir}")
            t = float(best_non_mated[int(np.floor(fpir * best_non_mated.size + 1e-9))])
            thresholds[fpir] = t
            reached[fpir] = float((best_non_mated > t).mean())
            tpir[fpir] = float(((rank == 1) & (own_score > t)).mean())
    return IdentificationResult(
        cmc, tpir, reached, thresholds, enrolled.size, split.gallery.size, split.mated.size, split.non_mated.size
    )


@dataclass(frozen=True)
class SourceIdentification:
    """An identification result plus the images of the source that were skipped (unreadable, no face)."""

    result: IdentificationResult
    images: int
    images_skipped: int


def identify_source(
    model: torch.nn.Module,
    faces: ImageSource,
    labels: np.ndarray,
    gallery_per_identity: int = 1,
    unenrolled_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    fpirs: tuple[float, ...] = DEFAULT_FPIRS,
    ranks: tuple[int, ...] = DEFAULT_RANKS,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> SourceIdentification:
    """Embed a labelled source (flip-sum, L2), split the readable images and evaluate 1:N identification."""
    emb = embed_source(model, faces, batch_size, num_workers, autocast_dtype=autocast_dtype, progress=progress)
    labels = np.where(emb.valid, np.asarray(labels), -1)
    split = split_gallery_probe(labels, gallery_per_identity, unenrolled_fraction, seed)
    return SourceIdentification(identify(emb.features, labels, split, ranks, fpirs), len(faces), emb.skipped)


def identification_report(found: SourceIdentification, name: str, **context: Any) -> dict[str, Any]:
    """JSON-ready report: rank-k, TPIR at FPIR (with FPIR reached and threshold) and the counts."""
    res = found.result
    return {
        "set": name,
        **context,
        "images": found.images,
        "images_skipped": found.images_skipped,
        "gallery_identities": res.gallery_identities,
        "gallery_images": res.gallery_images,
        "mated_probes": res.mated_probes,
        "non_mated_probes": res.non_mated_probes,
        "rank_1": res.rank1,
        "cmc": {str(k): v for k, v in res.cmc.items()},
        "tpir_at_fpir": {far_label(f): v for f, v in res.tpir.items()},
        "fpir_reached": {far_label(f): v for f, v in res.fpir_reached.items()},
        "thresholds": {far_label(f): v for f, v in res.thresholds.items()},
    }


def identification_metrics(report: dict[str, Any], prefix: str) -> dict[str, float]:
    """MLflow metrics ``<prefix>/rank_<k>`` and ``<prefix>/tpir_at_fpir_<f>``."""
    metrics = {f"{prefix}/rank_{k}": float(v) for k, v in report["cmc"].items()}
    metrics.update({f"{prefix}/tpir_at_fpir_{f}": float(v) for f, v in report["tpir_at_fpir"].items()})
    return metrics
