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
from lafs_core.precision import autocast

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
    """Adapts an :class:`ImageSource` (or the rows ``indices`` of it) to a DataLoader: (index, CHW uint8, readable)."""

    def __init__(self, source: ImageSource, image_size: int, indices: np.ndarray | None = None) -> None:
        self.source = source
        self.image_size = image_size
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[int, torch.Tensor, bool]:
        index = int(self.indices[item])
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
    """Put a model in eval mode and give every submodule back its own previous mode (for in-training probes, whose
    model may hold a frozen part in eval mode beside trained parts in train mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


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
    indices: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream ``(indices, unnormalised flip-sum features, readable)`` batches over a source (or its rows
    ``indices``), in order. The loader draws from a generator of its own, never from the caller's random streams."""
    device = _model_device(model)
    dataset = _SourceDataset(source, image_size, indices)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    bar = tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, leave=False)
    with eval_mode(model), torch.inference_mode(), autocast(autocast_dtype, device):
        for batch_indices, images, ok in loader:
            feats = flip_sum(model, images.to(device, non_blocking=True))
            bar.update(len(batch_indices))
            yield batch_indices.numpy(), feats.float().cpu().numpy(), ok.numpy().astype(bool)
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
    indices: np.ndarray | None = None,
) -> Embeddings:
    """Embeddings of every image of a source: flip-sum, then L2-normalised unless ``l2_normalize=False``.

    With ``indices`` only those rows are embedded; the others stay zero and not valid.
    """
    features: np.ndarray | None = None
    valid = np.zeros(len(source), dtype=bool)
    for rows, feats, ok in iter_flip_features(
        model, source, batch_size, num_workers, image_size, autocast_dtype, progress, indices=indices
    ):
        if features is None:
            features = np.zeros((len(source), feats.shape[1]), dtype=np.float32)
        feats[~ok] = 0.0
        features[rows] = feats
        valid[rows] = ok
    if features is None:
        if indices is None or len(source) == 0:
            raise ValueError("cannot embed an empty image source")
        features = np.zeros((len(source), _embedding_dim(model)), dtype=np.float32)
    if l2_normalize:
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if indices is None and not valid.all():
        log.warning("%d of %d images could not be read and were skipped", int((~valid).sum()), valid.size)
    return Embeddings(features=features, valid=valid)


def _embedding_dim(model: torch.nn.Module) -> int:
    """The embedding width of a face model (for a rank whose share of a source is empty)."""
    return int(model.cfg.dim)
