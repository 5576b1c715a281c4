"""Behaviour pinned across refactors: short tiny-preset runs of the three stages give the per-step losses recorded
before the one stage loop existed (commit 2006d1c, with these configs), and validating during fine-tuning does not
change them.

The reference is ``data/reference_losses.json``. A deliberate change of a recipe (a preset, a loss, an
initialisation) changes the losses: re-record them with ``LAFS_RECORD_LOSSES=1 pytest <this file>`` and say so in the
change (re-recorded for the sin-cos position rows, the layout-initialised landmark CNN and the tiny preset's
supervised recipe). Supervised losses were logged as float32 before, hence the tolerance.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from lafs_core.config import load_config
from lafs_core.config.finetune import FinetuneConfig, PartFViTConfig
from lafs_core.config.pretrain import PretrainConfig
from lafs_core.train.finetune import run_finetune
from lafs_core.train.partfvit import run_partfvit
from lafs_core.train.pretrain import train

sys.path.insert(0, str(Path(__file__).parent))
from _pretrain_shards import write_lfw_shards
from _supervised_shards import lfw_k4_shards

REFERENCE = Path(__file__).parent / "data" / "reference_losses.json"
RECORD = os.environ.get("LAFS_RECORD_LOSSES") == "1"
KEYS = {"pretrain": ("loss", "dino_loss", "koleo"), "finetune": ("loss", "loss_cls", "landmark_reg")}
KEYS["partfvit"] = ("loss", "loss_cls")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The pretraining shards (96 LFW faces, 7x7 grid) and the labelled k=4 set (12 identities) with its faces."""
    root = tmp_path_factory.mktemp("same_losses")
    write_lfw_shards(lfw_root, root / "pre", 49, max_images=96, shard_size=32)
    faces, shards = lfw_k4_shards(lfw_root, root / "sup", people=12)
    return {"pretrain": root / "pre", "faces": faces, "supervised": shards}


def losses(run_dir: Path, stage: str) -> list[dict[str, float]]:
    """The per-step losses of ``history.jsonl``."""
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [{"step": h["step"], **{k: h[k] for k in KEYS[stage]}} for h in history]


def supervised_config(cls: type, shards: Path, out: Path, *extra: str) -> FinetuneConfig | PartFViTConfig:
    overrides = [
        f"data_dir={shards}", f"output_dir={out}", "global_batch_size=16", "micro_batch_size=8", "epochs=2",
        "max_steps=4", "num_workers=1", "cpu_threads=1", "val_pairs=[]", "log_every=1", "log_model=false",
        "checkpoint_every=100", "warmup_epochs=1", *extra,
    ]  # fmt: skip
    return load_config(cls, preset="tiny", overrides=overrides)


def compare(stage: str, got: list[dict[str, float]]) -> None:
    """Assert ``got`` equals the reference of ``stage`` (float32 tolerance), or record it."""
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
    if RECORD:
        reference[stage] = got
        REFERENCE.write_text(json.dumps(reference, indent=1) + "\n")
        return
    want = [{k: r[k] for k in ("step", *KEYS[stage])} for r in reference[stage]]
    assert [g["step"] for g in got] == [w["step"] for w in want]
    for g, w in zip(got, want, strict=True):
        for key in KEYS[stage]:
            assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-7), (stage, g["step"], key)


def test_pretraining_losses_are_pinned(data: dict[str, Path], tmp_path: Path, mlflow_store) -> None:
    cfg = load_config(
        PretrainConfig,
        preset="tiny",
        overrides=[
            f"data_dir={data['pretrain']}", f"output_dir={tmp_path}", "global_batch_size=8", "local_views=2",
            "num_workers=0", "epochs=2", "iters_per_epoch=5", "max_steps=4", "log_every=1", "probe_every=0",
            "checkpoint_every=100", "koleo_weight=0.1",
        ],
    )  # fmt: skip
    train(cfg)
    compare("pretrain", losses(tmp_path, "pretrain"))


def test_supervised_losses_are_pinned_and_validation_leaves_them(
    data: dict[str, Path], tmp_path: Path, mlflow_store
) -> None:
    from data_tools.pairsets import load_pair_set

    run_partfvit(supervised_config(PartFViTConfig, data["supervised"], tmp_path / "partfvit"))
    compare("partfvit", losses(tmp_path / "partfvit", "partfvit"))
    # The Part fViT's landmark CNN, trained on (so that the landmark regulariser is part of the pinned loss).
    cnn = (f"init_landmarks={tmp_path / 'partfvit' / 'landmark_cnn.pt'}", "freeze_landmark_cnn=false")
    run_finetune(supervised_config(FinetuneConfig, data["supervised"], tmp_path / "finetune", *cnn))
    compare("finetune", losses(tmp_path / "finetune", "finetune"))

    validated = supervised_config(FinetuneConfig, data["supervised"], tmp_path / "validated", *cnn, "val_every=2")
    summary = run_finetune(validated, [load_pair_set(data["faces"])])
    assert set(summary["metrics"]) >= {"faces/acc", "faces/auc"}
    assert losses(tmp_path / "validated", "finetune") == losses(tmp_path / "finetune", "finetune")
