"""A cheap live verification probe for SSL pretraining, so representation collapse shows up early.

The probe set is a few hundred labelled pairs drawn (seeded) from the shard manifest: same-identity pairs from
identities with at least two images, different-identity pairs otherwise. The teacher embeds the images on the
stored landmarks (or the regular grid for the dino-grid baseline) without augmentation; the score is the 10-fold
verification accuracy of ``lafs_core.eval.verification`` on cosine distances.
"""

from __future__ import annotations

import io
import tarfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lafs_core.data.normalize import normalize
from lafs_core.errors import DataError
from lafs_core.eval.verification import contiguous_folds, evaluate_embeddings
from lafs_core.models.vit import PartFViT


@dataclass(frozen=True)
class ProbeSet:
    """Unique probe images (uint8 (N,3,H,W)), their stored landmarks (N,R,2) and the pairs (P,2) + same flags."""

    images: torch.Tensor
    landmarks: torch.Tensor
    pairs: np.ndarray
    issame: np.ndarray


def choose_pairs(labels: np.ndarray, num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``num_pairs // 2`` same-label pairs (one per label) and as many different-label pairs (row indices)."""
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = defaultdict(list)
    for row, label in enumerate(labels.tolist()):
        if label >= 0:
            by_label[label].append(row)
    multi = [rows for rows in by_label.values() if len(rows) >= 2]
    rng.shuffle(multi)
    positives = [tuple(rng.choice(rows, 2, replace=False)) for rows in multi[: num_pairs // 2]]
    labelled = np.flatnonzero(labels >= 0)
    negatives: list[tuple[int, int]] = []
    while len(negatives) < len(positives) and labelled.size > 1:
        a, b = rng.choice(labelled, 2, replace=False)
        if labels[a] != labels[b]:
            negatives.append((int(a), int(b)))
    pairs = np.array(positives + negatives, dtype=np.int64).reshape(-1, 2)
    issame = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    order = rng.permutation(len(issame))
    return pairs[order], issame[order]


def read_samples(data_dir: Path, wanted: dict[str, str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode ``{key: shard}`` samples straight from their tar shards: key -> (RGB uint8 HWC, landmarks (R,2))."""
    by_shard: dict[str, set[str]] = defaultdict(set)
    for key, shard in wanted.items():
        by_shard[shard].add(key)
    found: dict[str, dict[str, bytes]] = defaultdict(dict)
    for shard, keys in by_shard.items():
        path = data_dir / shard
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    if key in keys and ext in ("jpg", "lmk.npy"):
                        found[key][ext] = tar.extractfile(member).read()
        except (OSError, tarfile.TarError) as exc:
            raise DataError(path, f"unreadable shard ({exc})") from None
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, parts in found.items():
        if "jpg" in parts and "lmk.npy" in parts:
            image = np.asarray(Image.open(io.BytesIO(parts["jpg"])).convert("RGB"))
            out[key] = (image, np.load(io.BytesIO(parts["lmk.npy"]), allow_pickle=False).astype(np.float32))
    return out


def build_probe_set(data_dir: str | Path, num_pairs: int, seed: int = 0) -> ProbeSet | None:
    """The probe set of a shard folder, or None when the manifest has no same-identity pairs."""
    import pyarrow.parquet as pq

    data_dir = Path(data_dir)
    table = pq.read_table(data_dir / "manifest.parquet", columns=["shard", "key", "label"]).to_pydict()
    labels = np.asarray(table["label"], dtype=np.int64)
    pairs, issame = choose_pairs(labels, num_pairs, seed)
    if not issame.any():
        return None
    rows = np.unique(pairs)
    wanted = {table["key"][r]: table["shard"][r] for r in rows.tolist()}
    samples = read_samples(data_dir, wanted)
    keep = np.array([table["key"][a] in samples and table["key"][b] in samples for a, b in pairs])
    pairs, issame = pairs[keep], issame[keep]
    rows = np.unique(pairs)
    index = {int(r): i for i, r in enumerate(rows.tolist())}
    images = torch.from_numpy(np.stack([samples[table["key"][r]][0] for r in rows])).permute(0, 3, 1, 2)
    landmarks = torch.from_numpy(np.stack([samples[table["key"][r]][1] for r in rows]))
    remapped = np.vectorize(index.__getitem__)(pairs) if pairs.size else pairs
    return ProbeSet(images.contiguous(), landmarks, remapped.reshape(-1, 2), issame)


@torch.no_grad()
def probe_accuracy(
    backbone: PartFViT,
    probe: ProbeSet,
    patch_tokens: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 128,
) -> float:
    """10-fold cosine verification accuracy of ``backbone`` (in eval mode) on the probe pairs.

    ``patch_tokens(images_normalised, landmarks) -> tokens`` turns the probe images into the model's tokens.
    """
    was_training = backbone.training
    backbone.eval()
    feats = []
    for start in range(0, probe.images.shape[0], batch_size):
        images = normalize(probe.images[start : start + batch_size].to(device))
        landmarks = probe.landmarks[start : start + batch_size].to(device)
        feats.append(backbone.forward_tokens(patch_tokens(images, landmarks)).float().cpu())
    backbone.train(was_training)
    emb = torch.cat(feats).numpy()
    folds = contiguous_folds(len(probe.issame), min(10, len(probe.issame)))
    result = evaluate_embeddings(emb[probe.pairs[:, 0]], emb[probe.pairs[:, 1]], probe.issame, folds, "cosine")
    return result.accuracy_mean
