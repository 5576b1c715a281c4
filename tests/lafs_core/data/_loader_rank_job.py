"""One rank of the two-process loader test (kept light: spawned children import only torch and the loader)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from lafs_core.data.loader import eval_loader, train_loader


def rank_job(rank: int, world_size: int, shard_dir: str, store: str, out: str) -> None:
    """Record this rank's eval keys and train batch count (and the all-reduced batch total)."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    keys = [k for batch in eval_loader(shard_dir, batch_size=8) for k in batch["keys"]]
    train_batches = sum(1 for _ in train_loader(shard_dir, 8, num_workers=0, shuffle_buffer=20))
    count = torch.tensor([train_batches])
    dist.all_reduce(count)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"keys": keys, "train": train_batches, "sum": int(count)}))
    dist.destroy_process_group()
