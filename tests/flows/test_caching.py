"""Cache keys follow file contents and the resolved config, not path strings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flows.caching import CacheKey, cache_key_from_param, input_hash
from lafs_core.config import load_config
from lafs_core.config.pretrain import PretrainConfig


def _shard_set(path: Path, samples: int) -> Path:
    path.mkdir(parents=True)
    (path / "_info.json").write_text(f'{{"num_samples": {samples}, "shards": [{{"sha256": "{samples:064x}"}}]}}')
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(samples)]}), path / "manifest.parquet")
    return path


def test_key_follows_contents_of_inputs(tmp_path: Path) -> None:
    cfg = load_config(PretrainConfig, preset="tiny")
    shards = _shard_set(tmp_path / "shards", 10)
    first = CacheKey.of("pretrain", cfg, tmp_path / "out", shards=shards).digest()
    shutil.copytree(shards, tmp_path / "copy")
    (tmp_path / "shards" / "_info.json").touch()
    assert CacheKey.of("pretrain", cfg, tmp_path / "out", shards=shards).digest() == first
    assert input_hash(tmp_path / "copy") == input_hash(shards)

    shutil.rmtree(shards)
    _shard_set(shards, 11)
    assert CacheKey.of("pretrain", cfg, tmp_path / "out", shards=shards).digest() != first


def test_key_follows_config_and_checkpoint_bytes(tmp_path: Path) -> None:
    shards = _shard_set(tmp_path / "shards", 5)
    ckpt = tmp_path / "teacher.pt"
    ckpt.write_bytes(b"weights-1")
    base = load_config(PretrainConfig, preset="tiny")
    key = CacheKey.of("finetune", base, tmp_path / "out", shards=shards, init=ckpt)
    changed_cfg = load_config(PretrainConfig, overrides=["max_steps=7"], preset="tiny")
    assert CacheKey.of("finetune", changed_cfg, tmp_path / "out", shards=shards, init=ckpt).digest() != key.digest()
    ckpt.write_bytes(b"weights-2")
    assert CacheKey.of("finetune", base, tmp_path / "out", shards=shards, init=ckpt).digest() != key.digest()
    assert CacheKey.of("finetune", base, tmp_path / "out", shards=shards, init=None).inputs["init"] == "-"


def test_cache_key_fn_reads_the_key_parameter(tmp_path: Path) -> None:
    key = CacheKey.of("pretrain", load_config(PretrainConfig, preset="tiny"), tmp_path, shards=None)
    other_args = {"spec": str(tmp_path / "a"), "env": {"MLFLOW_RUN_ID": "x"}}
    assert cache_key_from_param(None, {"key": key, **other_args}) == key.digest()
    assert cache_key_from_param(None, {"key": key.model_dump(), "env": {}}) == key.digest()
