"""IJB-B / IJB-C 1:1 template verification (method.md 10.2), streaming so that IJB-C fits in memory.

Layout (insightface release, read by :mod:`data_tools.readers.ijb`): ``<root>/loose_crop/<image>`` and
``<root>/meta/<name>_{name_5pts_score,face_tid_mid,template_pair_label}.txt``.

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

import numpy as np
import torch

from data_tools.align import align_5pt
from data_tools.readers.base import decode_rgb
from data_tools.readers.ijb import IJBMeta, load_ijb_meta
from lafs_core.errors import DataError
from lafs_core.eval.embed import iter_flip_features
from lafs_core.eval.roc import IJB_FARS, TarMethod, auc, roc_curve, tar_at_far

log = logging.getLogger(__name__)


def detect_set_name(root: Path) -> str:
    """``ijbb`` / ``ijbc`` from ``meta/<name>_template_pair_label.txt``."""
    found = sorted((root / "meta").glob("*_template_pair_label.txt"))
    if len(found) != 1:
        raise DataError(root / "meta", f"expected one *_template_pair_label.txt, found {len(found)}")
    return found[0].name.removesuffix("_template_pair_label.txt")


class IjbImages:
    """Loose crops aligned by their 5 points to the 112x112 ArcFace template (RGB); ``None`` when unreadable."""

    def __init__(self, meta: IJBMeta) -> None:
        self.meta = meta

    def __len__(self) -> int:
        return len(self.meta.names)

    def load(self, index: int) -> np.ndarray | None:
        try:
            image = decode_rgb(self.meta.image_path(index).read_bytes())
        except OSError:
            return None
        if image is None:
            return None
        return align_5pt(image, self.meta.landmarks[index])[0]


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
    meta: IJBMeta,
    batch_size: int = 128,
    num_workers: int = 0,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(template ids, L2-normalised template features, images skipped)``, streaming over the images."""
    present = np.array([meta.image_path(i).is_file() for i in range(len(meta.names))], dtype=bool)
    pooler = TemplatePooler(meta.templates, meta.medias, present)
    skipped = 0
    for indices, feats, ok in iter_flip_features(
        model, IjbImages(meta), batch_size, num_workers, autocast_dtype=autocast_dtype, progress=progress, desc="ijb"
    ):
        skipped += int((~ok).sum())
        weighted = weight_features(feats[ok], meta.scores[indices[ok]], use_norm_score, use_detector_score)
        pooler.add(indices[ok], weighted)
    if skipped:
        log.warning("%s: %d of %d images could not be read and were skipped", meta.root, skipped, len(meta.names))
    template_ids, feats = pooler.finish()
    return template_ids, feats, skipped


def evaluate_ijb(
    model: torch.nn.Module,
    root: str | Path,
    name: str | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
    fars: tuple[float, ...] = IJB_FARS,
    tar_method: TarMethod = "interp",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> IjbResult:
    """The IJB 1:1 protocol end to end for one model."""
    root = Path(root)
    name = name or detect_set_name(root)
    meta = load_ijb_meta(root, name)
    template_ids, feats, skipped = template_features(
        model, meta, batch_size, num_workers, use_norm_score, use_detector_score, autocast_dtype, progress
    )
    pairs = np.stack([meta.pair_t1, meta.pair_t2], axis=1)
    roc = roc_curve(score_pairs(template_ids, feats, pairs), meta.pair_label.astype(bool))
    return IjbResult(
        name=name,
        tar=dict(zip(fars, tar_at_far(roc, fars, tar_method), strict=True)),
        auc=auc(roc),
        pairs=len(pairs),
        templates=int(template_ids.size),
        images=len(meta.names),
        images_skipped=skipped,
        fpr=roc.fpr,
        tpr=roc.tpr,
    )
