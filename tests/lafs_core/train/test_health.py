"""The health monitor: its judgement on loss and entropy sequences, and real runs that stall, collapse or learn."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _pretrain_shards import write_lfw_shards
from _supervised_shards import lfw_k4_shards

from lafs_core.config import load_config
from lafs_core.config.finetune import FinetuneConfig
from lafs_core.config.pretrain import PretrainConfig
from lafs_core.train.finetune import run_finetune
from lafs_core.train.health import HealthMonitor
from lafs_core.train.pretrain import train


def feed(monitor: HealthMonitor, losses: np.ndarray, entropies: np.ndarray | None = None) -> dict[str, str]:
    """Feed a whole sequence; returns every finding reported along the way."""
    found: dict[str, str] = {}
    for step, loss in enumerate(losses, start=1):
        entropy = None if entropies is None else float(entropies[step - 1])
        found.update(monitor.update(step, float(loss), entropy))
    return found


def test_a_flat_loss_is_reported_once_at_a_quarter_of_the_schedule() -> None:
    rng = np.random.default_rng(0)
    monitor = HealthMonitor(total_steps=400)
    reported_at = []
    for step, loss in enumerate(31.7 + 0.3 * rng.standard_normal(400), start=1):
        if monitor.update(step, float(loss)):
            reported_at.append(step)
    assert reported_at == [100]
    assert set(monitor.findings) == {"stalled"}
    assert "after 100 of 400 steps" in monitor.findings["stalled"]


def test_a_falling_loss_is_healthy() -> None:
    steps = np.arange(400)
    assert feed(HealthMonitor(total_steps=400), 11.0 * np.exp(-steps / 150) + 2.0) == {}


def test_a_slight_drop_is_not_enough() -> None:
    losses = np.linspace(6.6, 6.3, 400)
    assert set(feed(HealthMonitor(total_steps=400, min_drop=0.1), losses)) == {"stalled"}


def test_non_finite_loss_counts_as_stalled() -> None:
    losses = np.r_[np.linspace(8.0, 5.0, 50), np.full(350, np.nan)]
    assert set(feed(HealthMonitor(total_steps=400), losses)) == {"stalled"}


def test_a_uniform_teacher_is_reported_as_collapsed() -> None:
    k = 1024
    losses = np.linspace(7.0, 2.0, 200)
    uniform = np.full(200, math.log(k) - 0.01)
    peaked = np.linspace(math.log(k), 4.0, 200)
    assert set(feed(HealthMonitor(total_steps=200, out_dim=k), losses, uniform)) == {"collapsed"}
    assert feed(HealthMonitor(total_steps=200, out_dim=k), losses, peaked) == {}


def test_short_runs_are_judged_too() -> None:
    monitor = HealthMonitor(total_steps=6)
    assert set(feed(monitor, np.full(6, 5.0))) == {"stalled"}
    assert monitor.checked


# --- real runs: the warning fires on a run that cannot learn and stays quiet on a healthy one ---------------------


@pytest.fixture(scope="module")
def k4(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lfw_k4_shards(lfw_root, tmp_path_factory.mktemp("health_k4"))[1]


def finetune_for(k4: Path, out: Path, lr: float) -> dict:
    overrides = [
        f"data_dir={k4}", f"output_dir={out}", f"lr={lr}", "global_batch_size=8", "micro_batch_size=8", "epochs=8",
        "warmup_epochs=0", "num_workers=0", "cpu_threads=1", "val_pairs=[]", "log_model=false", "checkpoint_every=100",
    ]  # fmt: skip
    return run_finetune(load_config(FinetuneConfig, preset="tiny", overrides=overrides))


@pytest.mark.slow
def test_a_run_that_cannot_learn_is_reported_and_a_healthy_one_is_not(k4: Path, tmp_path: Path, mlflow_store, caplog):
    caplog.set_level("WARNING", logger="lafs_core.train.loop")
    frozen = finetune_for(k4, tmp_path / "lr0", lr=0.0)
    tags = mlflow_store.get_run(frozen["run_id"]).data.tags
    assert tags["lafs.health"] == "stalled"
    assert "training loss has not fallen after 12 of 48 steps" in tags["lafs.health_message"]
    assert "finetune: training loss has not fallen" in caplog.text

    caplog.clear()
    healthy = finetune_for(k4, tmp_path / "lr1e-3", lr=1e-3)
    assert "lafs.health" not in mlflow_store.get_run(healthy["run_id"]).data.tags
    assert "has not fallen" not in caplog.text


@pytest.mark.slow
def test_a_pretraining_run_with_a_uniform_teacher_is_tagged_collapsed(
    lfw_root: Path, tmp_path: Path, mlflow_store
) -> None:
    """A teacher temperature of 100 makes the teacher's output the uniform distribution: the SSL collapse."""
    shards = tmp_path / "shards"
    write_lfw_shards(lfw_root, shards, 49, max_images=64, shard_size=32)
    overrides = [
        f"data_dir={shards}", f"output_dir={tmp_path / 'run'}", "global_batch_size=8", "local_views=2", "epochs=2",
        "iters_per_epoch=8", "num_workers=0", "probe_every=0", "warmup_teacher_temp=100", "teacher_temp=100",
    ]  # fmt: skip
    summary = train(load_config(PretrainConfig, preset="tiny", overrides=overrides))
    tags = mlflow_store.get_run(summary["run_id"]).data.tags
    assert tags["lafs.health"].split(",")[-1] == "collapsed"
    assert "collapsed to the uniform distribution" in tags["lafs.health_message"]


@pytest.mark.slow
def test_the_cli_prints_the_stall_warning_and_the_landmark_notice(k4: Path, tmp_path: Path, mlflow_uri: str) -> None:
    """What a user of ``lafs finetune`` sees on stderr: which landmarks are sampled, and that it is not learning."""
    overrides = [
        f"data_dir={k4}", f"output_dir={tmp_path / 'cli'}", "lr=0", "global_batch_size=8", "micro_batch_size=8",
        "epochs=4", "warmup_epochs=0", "num_workers=0", "val_pairs=[]", "log_model=false", "checkpoint_every=100",
    ]  # fmt: skip
    lafs = Path(sys.executable).with_name("lafs")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(lafs), "finetune", "--preset", "tiny", *overrides], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "INFO lafs_core.train.finetune: no landmark model given: fine-tuning samples the regular 7x7" in done.stderr
    assert "WARNING lafs_core.train.loop: finetune: training loss has not fallen" in done.stderr
