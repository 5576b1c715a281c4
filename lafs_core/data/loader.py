"""Loaders over precomputed landmark shards: resampled training pipelines and an exact-once evaluation loader.

Training: every rank and DataLoader worker draws shards with replacement from its own seeded stream
(``ResampledShards``; seed = (seed, rank, worker, epoch)), shuffles samples in a buffer seeded by (seed, rank, worker)
(so a run with the same seed sees the same batches), and the loader stops after
exactly ``batches_per_epoch(info, batch_size, world_size)`` batches on every rank (``with_epoch``), so collectives
never wait on a rank that ran out of data. Evaluation: shards are split by rank then by worker, every sample is
seen exactly once, the last batch may be short.

A batch is a dict: ``images`` (B, 3, H, W) uint8 RGB, ``landmarks`` (B, R, 2) float32 pixel-centre coordinates of
the stored image, ``labels`` (B,) int64 (-1 unlabelled), ``keys`` list[str]; with a ``ViewSpec``, also ``affine``
(B, V, 2, 3) view->source, ``view_landmarks`` (B, V, R, 2), ``flipped`` (B, V); with ``online=True`` also
``crops`` (B, V, 3, S, S) float 0..255, the clean warped views (for running a landmark model on every view). With
``images_map``, ``images`` is that function of the stored batch, computed in the loader workers (the supervised
augmentation runs there, off the training step's critical path).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from lafs_core.data.views import ViewSpec, render_views, sample_views
from lafs_core.errors import DataError

INFO = "_info.json"


def read_info(shard_dir: str | Path) -> dict[str, Any]:
    """The shard set's ``_info.json``; DataError if the set is missing or unfinished."""
    path = Path(shard_dir) / INFO
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "shard summary not found (run `lafs data shards` first)") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON ({exc})") from None


def shard_urls(shard_dir: str | Path, info: dict[str, Any]) -> list[str]:
    """Paths of the shard files listed in ``info``."""
    return [str(Path(shard_dir) / shard["name"]) for shard in info["shards"]]


def batches_per_epoch(info: dict[str, Any], batch_size: int, world_size: int = 1) -> int:
    """Full batches per rank in one pass over the data: num_samples // (batch_size * world_size), at least 1."""
    return max(1, int(info["num_samples"]) // (batch_size * world_size))


def dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size) from the arguments, else torch.distributed, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw tar members -> image (3, H, W) uint8 RGB, landmarks (R, 2) float32, label, key."""
    bgr = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(sample.get("__url__", "?"), f"sample {sample['__key__']}: JPEG does not decode")
    image = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).contiguous()
    landmarks = torch.from_numpy(np.load(io.BytesIO(sample["lmk.npy"]), allow_pickle=False).astype(np.float32))
    return {"image": image, "landmarks": landmarks, "label": int(sample["cls"]), "key": sample["__key__"]}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded samples into a batch dict."""
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "landmarks": torch.stack([s["landmarks"] for s in samples]),
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "keys": [s["key"] for s in samples],
    }


class AddViews:
    """Batch stage that draws geometric views (as affines) per sample; seeded per (seed, rank, worker)."""

    def __init__(self, spec: ViewSpec, flip_perm: list[int], image_size: int, seed: int, rank: int, online: bool):
        self.spec = spec
        self.flip_perm = torch.tensor(flip_perm, dtype=torch.int64)
        self.image_size = image_size
        self.seed = (seed, rank)
        self.online = online
        self.generator: torch.Generator | None = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Add ``affine``, ``view_landmarks``, ``flipped`` (and ``crops`` when online) to a batch."""
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(hash((*self.seed, _worker_id())) & 0x7FFF_FFFF)
        views = sample_views(batch["landmarks"], self.spec, self.flip_perm, self.image_size, self.generator)
        batch.update(affine=views.affine, view_landmarks=views.landmarks, flipped=views.flipped)
        if self.online:
            batch["crops"] = render_views(batch["images"], views, self.spec.size)
        return batch


def _seeded_shuffle(bufsize: int, seed: int, rank: int, samples: Iterable[Any]) -> Iterator[Any]:
    """webdataset's buffer shuffle with a stream seeded per (seed, rank, worker); unseeded, it draws from the clock."""
    stream_seed = hash((seed, rank, _worker_id())) & 0x7FFF_FFFF
    return wds.shuffle(bufsize, initial=min(bufsize, 100), seed=stream_seed)(samples)


def _worker_id() -> int:
    """This DataLoader worker's id (0 in the main process)."""
    worker = get_worker_info()
    return worker.id if worker is not None else 0


def _worker_seed(rank: int) -> int:
    return rank * 1000 + _worker_id()


def train_loader(
    shard_dir: str | Path,
    batch_size: int,
    *,
    num_workers: int = 2,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    views: ViewSpec | None = None,
    online: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    epoch_batches: int | None = None,
    images_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> wds.WebLoader:
    """Endless resampled pipeline cut into epochs of the same number of full batches on every rank.

    ``images_map`` (uint8 (B, 3, H, W) -> the same) runs per batch in the workers, before any views are drawn; it may
    use torch's and Python's global random streams, which the DataLoader seeds per worker from the main process.
    """
    info = read_info(shard_dir)
    rank, world_size = dist_info(rank, world_size)
    stages: list[Any] = [
        wds.ResampledShards(
            shard_urls(shard_dir, info), seed=seed, worker_seed=partial(_worker_seed, rank), deterministic=True
        ),
        wds.tarfile_to_samples(),
        partial(_seeded_shuffle, shuffle_buffer, seed, rank),
        wds.map(decode_sample),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    ]
    if images_map is not None:
        stages.append(wds.map_dict(images=images_map))
    if views is not None:
        stages.append(wds.map(AddViews(views, info["flip_permutation"], info["image_size"], seed, rank, online)))
    loader = wds.WebLoader(
        wds.DataPipeline(*stages), batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0
    )
    return loader.with_epoch(epoch_batches or batches_per_epoch(info, batch_size, world_size))


def _node_shards(urls: list[str], rank: int, world_size: int) -> list[str]:
    return urls[rank::world_size]


def eval_loader(
    shard_dir: str | Path,
    batch_size: int,
    *,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
) -> wds.WebLoader:
    """Every sample exactly once over all ranks: shards split by rank, then by worker; last batch may be short."""
    info = read_info(shard_dir)
    rank, world_size = dist_info(rank, world_size)
    urls = _node_shards(shard_urls(shard_dir, info), rank, world_size)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        wds.map(decode_sample),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )
    workers = min(num_workers, len(urls))
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers)
