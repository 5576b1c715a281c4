"""Content-addressed cache keys: a task's key is the hash of its inputs' contents and of its resolved config.

Prefect's ``INPUTS`` policy hashes argument values, and a path string does not change when the file behind it
does; these keys hash the shard set's ``_info.json`` (which lists every shard's sha256) and checkpoint bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lafs_core.config import config_hash


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_set_hash(shard_dir: str | Path) -> str:
    """Content hash of a finished shard set: its ``_info.json`` holds every shard's sha256 and the manifest's facts."""
    return file_sha256(Path(shard_dir) / "_info.json") + ":" + file_sha256(Path(shard_dir) / "manifest.parquet")


def input_hash(path: str | Path) -> str:
    """Content hash of a stage input: a shard set (folder) or a file (checkpoint, pair list)."""
    path = Path(path)
    return shard_set_hash(path) if path.is_dir() else file_sha256(path)


class CacheKey(BaseModel):
    """What a stage's result depends on: content hashes of its inputs and the hash of its resolved config."""

    stage: str
    inputs: dict[str, str]
    config_hash: str
    out_dir: str

    @classmethod
    def of(cls, stage: str, cfg: BaseModel, out_dir: str | Path, **inputs: str | Path | None) -> CacheKey:
        """Hash the given input paths (``None`` inputs are recorded as absent)."""
        hashes = {name: input_hash(p) if p is not None else "-" for name, p in inputs.items()}
        return cls(stage=stage, inputs=hashes, config_hash=config_hash(cfg), out_dir=str(Path(out_dir).resolve()))

    def digest(self) -> str:
        """One stable string for Prefect's cache."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


def cache_key_from_param(_context: Any, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn``: the task's ``key`` parameter (a :class:`CacheKey`) decides, nothing else."""
    key = parameters["key"]
    return (key if isinstance(key, CacheKey) else CacheKey.model_validate(key)).digest()
