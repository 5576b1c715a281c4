"""Face embeddings for evaluation: ``f(x) + f(flip(x))``, batched, optionally L2-normalised.

Every image goes through the one input transform :func:`lafs_core.data.normalize.normalize`. A model that needs
landmarks predicts them itself for each view (``FaceModel.forward(images, landmarks=None)``), so the flipped image
gets its own landmarks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lafs_core.data.normalize import normalize

log = logging.getLogger(__name__)


class ImageSource(Protocol):
    """Indexable aligned faces: ``load(i)`` gives RGB uint8 HWC, or ``None`` when the image is unreadable."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray | None: ...


@dataclass(frozen=True)
class Embeddings:
    """Per-image features (rows of unreadable images are zero) and which images were read."""

    features: np.ndarray
    valid: np.ndarray

    @property
    def skipped(self) -> int:
        return int((~self.valid).sum())


class _SourceDataset(Dataset):
    """Adapts an :class:`ImageSource` to a DataLoader: (index, CHW uint8 tensor, readable flag)."""

    def __init__(self, source: ImageSource, image_size: int) -> None:
        self.source = source
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, bool]:
        image = self.source.load(index)
        if image is None:
            return index, torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), False
        if image.shape != (self.image_size, self.image_size, 3) or image.dtype != np.uint8:
            raise ValueError(f"image {index} has shape {image.shape} {image.dtype}, expected aligned RGB uint8")
        return index, torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), True


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put a model in eval mode and restore its previous mode afterwards (for in-training probes)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def flip_sum(model: Callable[[torch.Tensor], torch.Tensor], images_uint8: torch.Tensor) -> torch.Tensor:
    """``f(x) + f(flip(x))`` for a batch of RGB uint8 ``(B, 3, H, W)`` images, as float32 ``(B, dim)``."""
    x = normalize(images_uint8)
    both = model(torch.cat([x, torch.flip(x, dims=[3])]))
    half = x.shape[0]
    return (both[:half] + both[half:]).float()


def iter_flip_features(
    model: torch.nn.Module,
    source: ImageSource,
    batch_size: int = 128,
    num_workers: int = 0,
    image_size: int = 112,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "embedding",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream ``(indices, unnormalised flip-sum features, readable)`` batches over a source, in order."""
    device = _model_device(model)
    loader = DataLoader(
        _SourceDataset(source, image_size),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    bar = tqdm(total=len(source), desc=desc, unit="img", disable=not progress, leave=False)
    with eval_mode(model), torch.inference_mode(), autocast:
        for indices, images, ok in loader:
            feats = flip_sum(model, images.to(device, non_blocking=True))
            bar.update(len(indices))
            yield indices.numpy(), feats.float().cpu().numpy(), ok.numpy().astype(bool)
    bar.close()


def embed_source(
    model: torch.nn.Module,
    source: ImageSource,
    batch_size: int = 128,
    num_workers: int = 0,
    l2_normalize: bool = True,
    image_size: int = 112,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Embeddings:
    """Embeddings of every image of a source: flip-sum, then L2-normalised unless ``l2_normalize=False``."""
    features: np.ndarray | None = None
    valid = np.zeros(len(source), dtype=bool)
    for indices, feats, ok in iter_flip_features(
        model, source, batch_size, num_workers, image_size, autocast_dtype, progress
    ):
        if features is None:
            features = np.zeros((len(source), feats.shape[1]), dtype=np.float32)
        feats[~ok] = 0.0
        features[indices] = feats
        valid[indices] = ok
    if features is None:
        raise ValueError("cannot embed an empty image source")
    if l2_normalize:
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if not valid.all():
        log.warning("%d of %d images could not be read and were skipped", int((~valid).sum()), valid.size)
    return Embeddings(features=features, valid=valid)
