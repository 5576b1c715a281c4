"""The one verification path: in-training verification on two ranks equals the single-process result, and the
model's modes and the caller's random streams are left as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _verify_rank_job import rank_job, tiny_model

from data_tools.pairsets import load_pair_set
from lafs_core.eval.verify import verify


@pytest.fixture(scope="module")
def att(shared_datasets: Path) -> Path:
    return shared_datasets / "att_faces" / "att_faces"


def test_verify_leaves_modes_and_random_streams_alone(att: Path) -> None:
    model = tiny_model().train()
    model.backbone.eval()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    verified = verify(model, load_pair_set(att, max_same=60).cached(), batch_size=32)
    assert torch.equal(torch.rand(3), expected)
    assert model.training and not model.backbone.training
    report = verified.report(model="m.pt")
    assert report["set"] == "att_faces" and report["source"] == str(att) and report["model"] == "m.pt"
    assert set(verified.metrics()) >= {"att_faces/acc", "att_faces/auc", "att_faces/tar_at_far_1e-2"}


@pytest.mark.slow
def test_two_ranks_get_the_single_process_result(att: Path, tmp_path: Path) -> None:
    mp.spawn(rank_job, args=(2, str(att), str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    alone = verify(tiny_model(), load_pair_set(att, max_same=60), batch_size=32, metric="cosine").result
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["pairs"] == alone.pairs == 120
        np.testing.assert_allclose(seen["folds"], alone.fold_accuracies, atol=1e-12)
        assert seen["auc"] == pytest.approx(alone.auc, abs=1e-9)
