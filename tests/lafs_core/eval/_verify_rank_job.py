"""One rank of the two-process verification test: every rank embeds its share, every rank gets the whole result."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from data_tools.pairsets import load_pair_set
from lafs_core.config import load_config
from lafs_core.config.loader import StageConfig
from lafs_core.eval.verify import verify
from lafs_core.models.build import build_face_model


def tiny_model() -> torch.nn.Module:
    """The same tiny grid-landmark face model in every process."""
    torch.manual_seed(0)
    return build_face_model(load_config(StageConfig, preset="tiny").model, with_landmark_cnn=False)


def rank_job(rank: int, world_size: int, folder: str, store: str, out: str) -> None:
    """Verify on this rank's share of the pair set's images and write the result this rank sees."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    share = load_pair_set(folder, max_same=60).cached(share=(rank, world_size))
    result = verify(tiny_model(), share, batch_size=32, metric="cosine", distributed=True).result
    record = {"folds": result.fold_accuracies.tolist(), "auc": result.auc, "pairs": result.pairs}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()
