"""Loaders over precomputed landmark shards: resampled training pipelines and an exact-once evaluation loader.

Training: every rank and DataLoader worker draws shards with replacement from its own seeded stream
(``ResampledShards``; seed = (seed, rank, worker, epoch)), shuffles samples in a buffer seeded by (seed, rank, worker)
(so a run with the same seed sees the same batches), and the loader stops after
exactly ``batches_per_epoch(info, batch_size, world_size)`` batches on every rank (``with_epoch``), so collectives
never wait on a rank that ran out of data. Evaluation: shards are split by rank then by worker, every sample is
seen exactly once, the last batch may be short.

A batch is a dict: ``images`` (B, 3, H, W) uint8 RGB, ``landmarks`` (B, R, 2) float32 pixel-centre coordinates of
the stored image, ``labels`` (B,) int64 (-1 unlabelled), ``keys`` list[str]. With ``images_map``, ``images`` is that
function of the stored batch, computed in the loader workers (the supervised augmentation runs there, off the
training step's critical path); the SSL views are made by the step (``lafs_core.data.ssl_views``).

Only verified data is used: each shard is read whole into memory and its size and sha256 are checked against
``_info.json`` before any of its samples is decoded (hashing bytes already read costs a few percent of decoding them;
shards over ``MAX_SHARD_IN_MEMORY`` are hashed from disk first). A shard that fails is skipped, with a warning naming
it and the reason, and never tried again by that worker; a sample that still does not decode (or whose landmarks
have the wrong shape) is skipped and counted the same way. Neither ends the run; a set whose every shard fails does,
with a :class:`DataError`. Missing shards are refused when the loader is built.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from lafs_core.data.shard_format import INFO, read_info
from lafs_core.distributed import rank_world
from lafs_core.errors import DataError

log = logging.getLogger(__name__)

MAX_SHARD_IN_MEMORY = 256 << 20
READ_CHUNK = 1 << 20


@dataclass
class ShardCheck:
    """What a shard must be (from ``_info.json``), and what this process skipped so far (shards, samples)."""

    expected: dict[str, dict[str, Any]]
    bad_shards: dict[str, str] = field(default_factory=dict)
    bad_samples: int = 0

    def skip_shard(self, url: str, problem: str) -> None:
        """Remember a failed shard and warn once; DataError when no shard of the set is left."""
        self.bad_shards[url] = problem
        log.warning(
            "skipping shard %s: %s (%d of %d shards skipped in this loader process)",
            url,
            problem,
            len(self.bad_shards),
            len(self.expected),
        )
        if len(self.bad_shards) == len(self.expected):
            raise DataError(url, f"every shard of the set fails its check against {INFO} (last: {problem})")

    def skip_sample(self, url: str, key: str, problem: str) -> None:
        """Count a sample that cannot be used, with a warning."""
        self.bad_samples += 1
        log.warning(
            "skipping sample %s of %s: %s (%d samples skipped in this loader process)",
            key,
            url,
            problem,
            self.bad_samples,
        )


def _hash_file(fh: BinaryIO) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := fh.read(READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def read_verified(url: str, expected: dict[str, Any]) -> tuple[BinaryIO | None, str]:
    """An open stream of the shard at ``url`` once its size and sha256 match ``expected``, else (None, problem)."""
    try:
        with open(url, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if "size" in expected and size != expected["size"]:
                return None, f"{size} bytes, {INFO} says {expected['size']}"
            if size <= MAX_SHARD_IN_MEMORY:
                data = fh.read()
                digest = hashlib.sha256(data).hexdigest()
                stream: BinaryIO = io.BytesIO(data)
            else:
                digest = _hash_file(fh)[0]
                stream = open(url, "rb")  # noqa: SIM115 - closed by the sample reader
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    if digest != expected["sha256"]:
        stream.close()
        return None, f"sha256 differs from {INFO} (changed or damaged since it was written)"
    return stream, ""


def verified_samples(urls: Iterable[dict[str, Any]], check: ShardCheck) -> Iterator[dict[str, Any]]:
    """Pipeline stage: shard urls -> raw samples (``__key__``, ``__url__`` and one entry per member) of verified
    shards; shards that fail their check are skipped (see the module docstring)."""
    for item in urls:
        url = item["url"]
        if url in check.bad_shards:
            continue
        stream, problem = read_verified(url, check.expected[url])
        if stream is None:
            check.skip_shard(url, problem)
            continue
        with stream:
            yield from _tar_samples(url, stream, check)


def _tar_samples(url: str, stream: BinaryIO, check: ShardCheck) -> Iterator[dict[str, Any]]:
    sample: dict[str, Any] | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, _, ext = member.name.partition(".")
                if sample is None or key != sample["__key__"]:
                    if sample is not None:
                        yield sample
                    sample = {"__key__": key, "__url__": url}
                data = tar.extractfile(member)
                sample[ext] = data.read() if data is not None else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        check.skip_shard(url, f"unreadable tar ({exc})")
        return
    if sample is not None:
        yield sample


class SafeDecode:
    """Pipeline stage: raw samples -> decoded samples; one that does not decode, or whose image or landmarks have
    the wrong shape, is skipped and counted."""

    def __init__(self, check: ShardCheck, image_size: int, num_landmarks: int) -> None:
        self.check = check
        self.image_shape = (3, image_size, image_size)
        self.landmark_shape = (num_landmarks, 2)

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Decode each sample, skipping the broken ones."""
        for sample in samples:
            url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
            try:
                decoded = decode_sample(sample)
            except (DataError, KeyError, ValueError, OSError, cv2.error) as exc:
                self.check.skip_sample(url, key, exc.problem if isinstance(exc, DataError) else repr(exc))
                continue
            if tuple(decoded["image"].shape) != self.image_shape:
                self.check.skip_sample(url, key, f"image of shape {tuple(decoded['image'].shape)}")
            elif tuple(decoded["landmarks"].shape) != self.landmark_shape:
                self.check.skip_sample(url, key, f"landmarks of shape {tuple(decoded['landmarks'].shape)}")
            else:
                yield decoded


def shard_check(shard_dir: str | Path, info: dict[str, Any]) -> ShardCheck:
    """The per-shard expectations of a set; DataError naming the first listed shard that is not there."""
    expected = {}
    for shard, url in zip(info["shards"], shard_urls(shard_dir, info), strict=True):
        if not Path(url).is_file():
            raise DataError(url, f"shard listed in {INFO} is missing")
        expected[url] = shard
    return ShardCheck(expected)


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
    return rank_world()


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw tar members -> image (3, H, W) uint8 RGB, landmarks (R, 2) float32, label, key."""
    bgr = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR) if sample["jpg"] else None
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
    rank: int | None = None,
    world_size: int | None = None,
    epoch_batches: int | None = None,
    images_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> wds.WebLoader:
    """Endless resampled pipeline cut into epochs of the same number of full batches on every rank.

    ``images_map`` (uint8 (B, 3, H, W) -> the same) runs per batch in the workers; it may use torch's and Python's
    global random streams, which the DataLoader seeds per worker from the main process.
    """
    info = read_info(shard_dir)
    check = shard_check(shard_dir, info)
    rank, world_size = dist_info(rank, world_size)
    stages: list[Any] = [
        wds.ResampledShards(
            shard_urls(shard_dir, info), seed=seed, worker_seed=partial(_worker_seed, rank), deterministic=True
        ),
        partial(verified_samples, check=check),
        partial(_seeded_shuffle, shuffle_buffer, seed, rank),
        SafeDecode(check, info["image_size"], info["num_landmarks"]),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    ]
    if images_map is not None:
        stages.append(wds.map_dict(images=images_map))
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
    check = shard_check(shard_dir, info)
    rank, world_size = dist_info(rank, world_size)
    urls = _node_shards(shard_urls(shard_dir, info), rank, world_size)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        partial(verified_samples, check=check),
        SafeDecode(check, info["image_size"], info["num_landmarks"]),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )
    workers = min(num_workers, len(urls))
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers)


def read_samples(shard_dir: str | Path, wanted: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Decoded samples ``{key: {"image", "landmarks", "label", "key"}}`` of ``wanted`` (key -> shard file name),
    read from their shards after the same checks as training; a key that is missing or broken is left out."""
    info = read_info(shard_dir)
    check = shard_check(shard_dir, info)
    urls = [{"url": str(Path(shard_dir) / name)} for name in sorted(set(wanted.values()))]
    keys = set(wanted)
    raw = (sample for sample in verified_samples(urls, check) if sample["__key__"] in keys)
    decode = SafeDecode(check, info["image_size"], info["num_landmarks"])
    return {sample["key"]: sample for sample in decode(raw)}
