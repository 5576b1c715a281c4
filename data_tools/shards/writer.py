"""Atomic, byte-deterministic WebDataset tar shards.

A shard is written to ``<name>.tmp``, flushed and fsync'ed, then renamed, so a reader never sees a partial shard.
Members carry fixed metadata (mtime 0, uid/gid 0, mode 0444, GNU format) and a fixed order, so the same samples
always give the same bytes and the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

CHUNK = 1 << 20


@dataclass(frozen=True)
class ShardSample:
    """One sample: ``__key__`` (no dots), aligned RGB JPEG bytes, landmarks (R, 2) float32, label, metadata."""

    key: str
    jpg: bytes
    landmarks: np.ndarray
    label: int
    meta: dict[str, Any]


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 HxWx3 -> JPEG bytes with fixed encoder settings (no optimisation passes, 4:2:0)."""
    ok, buf = cv2.imencode(
        ".jpg",
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0],
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` bytes of an array (what webdataset's ``.npy`` decoder reads)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def sample_members(sample: ShardSample) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in the fixed order jpg, lmk.npy, cls, json."""
    if "." in sample.key or "/" in sample.key:
        raise ValueError(f"sample key {sample.key!r} may not contain '.' or '/'")
    landmarks = np.ascontiguousarray(sample.landmarks, dtype=np.float32)
    meta = json.dumps(sample.meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return [
        (f"{sample.key}.jpg", sample.jpg),
        (f"{sample.key}.lmk.npy", npy_bytes(landmarks)),
        (f"{sample.key}.cls", str(int(sample.label)).encode()),
        (f"{sample.key}.json", meta),
    ]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_shard(path: str | Path, samples: Iterable[ShardSample]) -> tuple[str, int]:
    """Write ``samples`` as a tar at ``path`` atomically; returns (sha256, sample count)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with open(tmp, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for sample in samples:
                    for name, data in sample_members(sample):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        info.mtime = 0
                        info.mode = 0o444
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tar.addfile(info, io.BytesIO(data))
                    count += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return file_sha256(path), count
