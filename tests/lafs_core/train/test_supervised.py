"""Shared supervised pieces: accumulation equals a big batch, world-size independent plan, soft-target CosFace."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _supervised_shards import lfw_k4_shards

from lafs_core.config import load_config
from lafs_core.config.finetune import FinetuneConfig
from lafs_core.data.supervised_augment import build_mixup
from lafs_core.errors import ConfigError
from lafs_core.models.build import build_face_model
from lafs_core.models.margin import CosFace
from lafs_core.train.classifier import Classifier, TrainNet, soft_target_loss
from lafs_core.train.finetune import run_finetune
from lafs_core.train.optim import build_adamw
from lafs_core.train.supervised import accumulation_step, batch_plan, cpu_threads, lr_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_classifier(num_classes: int) -> Classifier:
    """Tiny face model + CosFace in float64; BatchNorm in eval mode (batch statistics differ by batch size)."""
    cfg = load_config(FinetuneConfig, preset="tiny")
    torch.manual_seed(0)
    face = build_face_model(cfg.model).double()
    face.landmark_cnn.eval()
    return Classifier(TrainNet(face, CosFace(cfg.model.dim, num_classes).double()))


def adamw(clf: Classifier) -> torch.optim.Optimizer:
    return build_adamw(clf.parameters_module(), 1e-3, 0.1, {"net.face.landmark_cnn.": 0.05})


def sgd(clf: Classifier) -> torch.optim.Optimizer:
    """Scale-sensitive (AdamW is nearly invariant to a gradient scale, so it cannot catch a missing 1/accum)."""
    return torch.optim.SGD(clf.parameters_module().parameters(), lr=1e-3)


@pytest.mark.parametrize("make_optimizer", [adamw, sgd], ids=["adamw", "sgd"])
def test_three_micro_batches_equal_one_three_times_larger_step(make_optimizer) -> None:
    torch.manual_seed(1)
    images = torch.rand(12, 3, 112, 112, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 10, (12,))
    accumulated = tiny_classifier(10)
    single = copy.deepcopy(accumulated)
    start = copy.deepcopy(accumulated.bare.state_dict())

    def loss_fn_of(clf: Classifier):
        def loss_fn(batch):
            loss, _ = clf.loss(*batch)
            return loss, {}

        return loss_fn

    opt_a, opt_b = make_optimizer(accumulated), make_optimizer(single)
    micro = [(images[i : i + 4], labels[i : i + 4]) for i in range(0, 12, 4)]
    metrics_a = accumulation_step(accumulated.net, opt_a, micro, loss_fn_of(accumulated), lr=5e-4)
    metrics_b = accumulation_step(single.net, opt_b, [(images, labels)], loss_fn_of(single), lr=5e-4)

    assert metrics_a["loss"] == pytest.approx(metrics_b["loss"], rel=1e-9)
    assert all(group["lr"] == 5e-4 for group in opt_a.param_groups)
    moved = 0
    for (name, a), b in zip(accumulated.bare.state_dict().items(), single.bare.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)
        moved += int(not torch.equal(a, start[name]))
    assert moved > 10
    assert all(p.grad is None for p in accumulated.bare.parameters())


def test_cpu_threads_share_the_cores_and_respect_explicit_settings(monkeypatch) -> None:
    cores = len(os.sched_getaffinity(0))
    cfg = load_config(FinetuneConfig, preset="tiny", overrides=["num_workers=1"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert cpu_threads(cfg) == max(1, cores // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert cpu_threads(cfg) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(cfg) == 3
    assert cpu_threads(cfg.model_copy(update={"cpu_threads": 5})) == 5


def test_plan_and_schedule_do_not_depend_on_world_size() -> None:
    cfg = load_config(FinetuneConfig, preset="tiny", overrides=["global_batch_size=48", "micro_batch_size=8"])
    one, two, three = (batch_plan(cfg, 1000, world) for world in (1, 2, 3))
    assert (one.accum, two.accum, three.accum) == (6, 3, 2)
    assert one.steps_per_epoch == two.steps_per_epoch == three.steps_per_epoch == 1000 // 48
    np.testing.assert_array_equal(lr_schedule(cfg, one), lr_schedule(cfg, three))
    schedule = lr_schedule(cfg, one)
    assert schedule[0] == 0.0
    assert schedule.max() == pytest.approx(cfg.lr)
    assert len(schedule) == cfg.epochs * one.steps_per_epoch
    with pytest.raises(ConfigError, match="not a multiple"):
        batch_plan(cfg, 1000, 4)


def test_soft_target_cosface_under_mixup_matches_its_formula() -> None:
    torch.manual_seed(0)
    num_classes, s, m = 7, 64.0, 0.4
    head = CosFace(16, num_classes, s=s, m=m)
    embeddings = torch.randn(6, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 6])
    _, targets = build_mixup(load_config(FinetuneConfig, overrides=["augment.mixup_prob=1.0"]).augment, num_classes)(
        torch.zeros(6, 3, 2, 2), labels
    )
    assert targets.is_floating_point()
    assert 0 < float(targets.max(dim=1).values.min()) < 1

    loss = soft_target_loss(head(embeddings, targets), targets)

    cosine = F.normalize(embeddings) @ F.normalize(head.weight).T
    logits = s * (cosine - m * targets)
    expected = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)
    hard = soft_target_loss(head(embeddings, labels), labels)
    torch.testing.assert_close(hard, F.cross_entropy(s * (cosine - m * F.one_hot(labels, num_classes)), labels))


@pytest.fixture(scope="module")
def k4(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return lfw_k4_shards(lfw_root, tmp_path_factory.mktemp("k4"))


@pytest.mark.slow
def test_resume_on_another_world_size_continues_the_schedule(k4, mlflow_store, mlflow_uri, tmp_path) -> None:
    """2 gloo ranks (torchrun, Partial FC sharded over them, accumulation 2 with DDP no_sync) for 2 steps, then 1 rank
    resumes (accumulation 4) for 2 more: same run, same schedule, the class matrix re-sliced."""
    _, shards = k4
    run_dir = tmp_path / "run"
    overrides = [
        f"data_dir={shards}",
        f"output_dir={run_dir}",
        "val_pairs=[]",
        "global_batch_size=16",
        "micro_batch_size=4",
        "iters_per_epoch=3",
        "epochs=2",
        "warmup_epochs=1",
        "partial_fc=true",
        "augment.mixup_prob=0",
        "num_workers=0",
        "log_every=1",
        "checkpoint_every=1",
        "keep_checkpoints=10",
        "log_model=false",
        "backend=gloo",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--no-python"]
    lafs = str(Path(sys.executable).with_name("lafs"))
    done = subprocess.run(
        [*torchrun, lafs, "finetune", "--preset", "tiny", "--json", *overrides, "max_steps=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    started = json.loads(done.stdout)
    assert (started["steps"], started["world_size"], started["accum"]) == (2, 2, 2)
    first = torch.load(run_dir / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert (first["step"], first["world_size"]) == (2, 2)
    assert first["margin"]["weight"].shape == (12, 96)
    pfc_moments = [s["exp_avg"] for s in first["optimizer"]["state"].values() if s["exp_avg"].shape == (12, 96)]
    assert len(pfc_moments) == 1

    cfg = load_config(FinetuneConfig, preset="tiny", overrides=[*overrides, "max_steps=4", "resume=auto"])
    summary = run_finetune(cfg)

    assert (summary["steps"], summary["world_size"], summary["accum"]) == (4, 1, 4)
    schedule = lr_schedule(cfg, batch_plan(cfg, 48, 1))
    last = torch.load(run_dir / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert (last["step"], last["world_size"]) == (4, 1)
    assert {g["lr"] for g in last["optimizer"]["param_groups"]} == {schedule[3]}
    assert summary["run_id"] == first["mlflow_run_id"]
    logged = mlflow_store.get_metric_history(summary["run_id"], "train/lr")
    assert sorted((m.step, m.value) for m in logged) == [(i + 1, pytest.approx(schedule[i])) for i in range(4)]
    assert not torch.equal(last["margin"]["weight"], first["margin"]["weight"])
