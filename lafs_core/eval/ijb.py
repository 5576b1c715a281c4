"""IJB-B / IJB-C 1:1 template verification (method.md 10.2), streaming so that IJB-C fits in memory.

The set (insightface release: ``<root>/loose_crop/<image>`` and
``<root>/meta/<name>_{name_5pts_score,face_tid_mid,template_pair_label}.txt``) is read and its images aligned by
:func:`data_tools.readers.ijb.open_ijb`; this module scores a model on what it gives.

Per image: 5-point similarity alignment to 112x112, features ``f(x) + f(flip(x))``; optionally L2-normalised
(``use_norm_score=False``; the official default keeps the norm as a quality weight) and multiplied by the
detector score. Per template: mean over the images of each media, sum over media, L2-normalise. Score: cosine.
Image features are never all held: each batch is added straight into its template's sum, weighted by
``1 / (images of its media)``, which is the same mean-then-sum. Media sizes count the image files present; a
present file that fails to decode is skipped and counted (its media mean then includes a zero).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lafs_core.eval.embed import iter_flip_features
from lafs_core.eval.roc import IJB_FARS, TarMethod, auc, roc_curve, tar_at_far

log = logging.getLogger(__name__)


class IjbMeta(Protocol):
    """Per image: template, media and detector score; the template pairs and their labels."""

    root: Path
    templates: np.ndarray
    medias: np.ndarray
    scores: np.ndarray
    pair_t1: np.ndarray
    pair_t2: np.ndarray
    pair_label: np.ndarray


class IjbFaces(Protocol):
    """The set's aligned faces (an image source) and which image files are present."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray | None: ...

    def present(self) -> np.ndarray: ...


class TemplatePooler:
    """Streaming media-mean / template-sum pooling: ``add`` image feature batches, then ``finish``.

    Media are (template, media id) groups; an image's weight is 1 / (readable images of its group), so after all
    images are added each template row holds ``sum over media of mean over that media's images``.
    """

    def __init__(self, templates: np.ndarray, medias: np.ndarray, readable: np.ndarray | None = None) -> None:
        templates, medias = np.asarray(templates), np.asarray(medias)
        readable = np.ones(templates.size, dtype=bool) if readable is None else np.asarray(readable, dtype=bool)
        self.template_ids, self.image_template = np.unique(templates, return_inverse=True)
        _, group = np.unique(np.stack([templates, medias], axis=1), axis=0, return_inverse=True)
        group = group.ravel()
        counts = np.bincount(group, weights=readable.astype(np.float64))
        self.weights = np.where(readable, 1.0 / np.maximum(counts[group], 1.0), 0.0).astype(np.float32)
        self.sums: np.ndarray | None = None

    def add(self, indices: np.ndarray, features: np.ndarray) -> None:
        """Add per-image features (rows of ``indices``) into their templates."""
        if self.sums is None:
            self.sums = np.zeros((self.template_ids.size, features.shape[1]), dtype=np.float64)
        np.add.at(self.sums, self.image_template[indices], features * self.weights[indices, None])

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """``(template ids, L2-normalised template features)``; a template with no readable image is zero."""
        if self.sums is None:
            raise ValueError("no features were added")
        norms = np.linalg.norm(self.sums, axis=1, keepdims=True)
        return self.template_ids, (self.sums / np.maximum(norms, 1e-12)).astype(np.float32)


def pool_templates(features: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Template features from all image features at once (same result as streaming :class:`TemplatePooler`)."""
    pooler = TemplatePooler(templates, medias)
    pooler.add(np.arange(len(features)), np.asarray(features))
    return pooler.finish()


def weight_features(
    features: np.ndarray, faceness: np.ndarray, use_norm_score: bool, use_detector_score: bool
) -> np.ndarray:
    """Per-image weighting before pooling: keep the norm (quality) or L2-normalise; times detector score."""
    if not use_norm_score:
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if use_detector_score:
        features = features * faceness[:, None]
    return features


def score_pairs(
    template_ids: np.ndarray, template_feats: np.ndarray, pairs: np.ndarray, chunk: int = 32768
) -> np.ndarray:
    """Cosine score of each template pair, in chunks so 15.7 M IJB-C pairs never gather 2 x 15.7 M features."""
    rows = np.searchsorted(template_ids, pairs)
    scores = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), chunk):
        r = rows[start : start + chunk]
        scores[start : start + chunk] = np.einsum("ij,ij->i", template_feats[r[:, 0]], template_feats[r[:, 1]])
    return scores


@dataclass(frozen=True)
class IjbResult:
    """TAR at each FAR, AUC, counts and the ROC (for the plot)."""

    name: str
    tar: dict[float, float]
    auc: float
    pairs: int
    templates: int
    images: int
    images_skipped: int
    fpr: np.ndarray
    tpr: np.ndarray


def template_features(
    model: torch.nn.Module,
    meta: IjbMeta,
    faces: IjbFaces,
    batch_size: int = 128,
    num_workers: int = 0,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(template ids, L2-normalised template features, images skipped)``, streaming over the images."""
    pooler = TemplatePooler(meta.templates, meta.medias, faces.present())
    skipped = 0
    for indices, feats, ok in iter_flip_features(
        model, faces, batch_size, num_workers, autocast_dtype=autocast_dtype, progress=progress, desc="ijb"
    ):
        skipped += int((~ok).sum())
        weighted = weight_features(feats[ok], meta.scores[indices[ok]], use_norm_score, use_detector_score)
        pooler.add(indices[ok], weighted)
    if skipped:
        log.warning("%s: %d of %d images could not be read and were skipped", meta.root, skipped, len(faces))
    template_ids, feats = pooler.finish()
    return template_ids, feats, skipped


def evaluate_ijb(
    model: torch.nn.Module,
    name: str,
    meta: IjbMeta,
    faces: IjbFaces,
    batch_size: int = 128,
    num_workers: int = 0,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
    fars: tuple[float, ...] = IJB_FARS,
    tar_method: TarMethod = "interp",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> IjbResult:
    """The IJB 1:1 protocol for one model on a set read by :func:`data_tools.readers.ijb.open_ijb`."""
    template_ids, feats, skipped = template_features(
        model, meta, faces, batch_size, num_workers, use_norm_score, use_detector_score, autocast_dtype, progress
    )
    pairs = np.stack([meta.pair_t1, meta.pair_t2], axis=1)
    roc = roc_curve(score_pairs(template_ids, feats, pairs), meta.pair_label.astype(bool))
    return IjbResult(
        name=name,
        tar=dict(zip(fars, tar_at_far(roc, fars, tar_method), strict=True)),
        auc=auc(roc),
        pairs=len(pairs),
        templates=int(template_ids.size),
        images=len(faces),
        images_skipped=skipped,
        fpr=roc.fpr,
        tpr=roc.tpr,
    )
