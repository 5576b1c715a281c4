"""LAFS pretraining: the step's parts, an in-process run tracked in MLflow with resume, the NaN guard, and a
2-node torchrun job killed with SIGKILL and resumed on one rank."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from lafs_core.checkpoint_io import read_checkpoint as load_checkpoint
from lafs_core.config import load_config
from lafs_core.config.pretrain import PretrainConfig
from lafs_core.distributed import init_distributed
from lafs_core.errors import LafsError
from lafs_core.losses.dino import koleo_loss
from lafs_core.models.checkpoint import load_face_model
from lafs_core.models.sampler import grid_landmarks
from lafs_core.train import checkpointing as ckpt
from lafs_core.train.checkpointing import list_checkpoints
from lafs_core.train.loop import run_stage
from lafs_core.train.pretrain import (
    PretrainStage,
    build_networks,
    build_schedules,
    cancel_last_layer_gradients,
    clip_gradients,
    ema_update,
    train,
)

sys.path.insert(0, str(Path(__file__).parent))
from _pretrain_shards import write_lfw_shards

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def shards(datasets_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 real LFW faces (48 identities x 2) with a 7x7 landmark grid, in 3 shards."""
    out = tmp_path_factory.mktemp("lfw_shards")
    write_lfw_shards(datasets_root / "lfw_deepfunneled" / "lfw-deepfunneled", out, 49, max_images=96, shard_size=32)
    return out


def _cfg(shards: Path, out: Path, *overrides: str) -> PretrainConfig:
    base = [
        f"data_dir={shards}",
        f"output_dir={out}",
        "global_batch_size=8",
        "local_views=2",
        "num_workers=0",
        "epochs=2",
        "iters_per_epoch=5",
        "log_every=1",
        "probe_every=2",
        "probe_pairs=20",
        "checkpoint_every=2",
    ]
    return load_config(PretrainConfig, preset="tiny", overrides=[*base, *overrides])


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def run_probe(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]


def test_multicrop_groups_views_by_token_count() -> None:
    cfg = load_config(PretrainConfig, preset="tiny")
    student, _ = build_networks(cfg)
    student.eval()
    calls: list[int] = []
    student.backbone.norm.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    views = [torch.randn(3, 49, 192), torch.randn(3, 49, 192)] + [torch.randn(3, 16, 192) for _ in range(4)]
    out = student(views)
    assert calls == [6, 12]
    assert [o.shape for o in out] == [(3, cfg.model.dino_out_dim)] * 6
    with torch.no_grad():
        alone = [student.head(student.backbone.forward_tokens(v)) for v in views]
    for got, want in zip(out, alone, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_clip_gradients_is_per_tensor() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    grads = [torch.full_like(p, 10.0) if i < 2 else torch.full_like(p, 0.01) for i, p in enumerate(net.parameters())]
    for p, g in zip(net.parameters(), grads, strict=True):
        p.grad = g.clone()
    norms = clip_gradients(net, 3.0)
    assert norms == pytest.approx([float(g.norm()) for g in grads], rel=1e-6)
    params = list(net.parameters())
    assert float(params[0].grad.norm()) == pytest.approx(3.0, rel=1e-4)
    assert float(params[1].grad.norm()) == pytest.approx(3.0, rel=1e-4)
    torch.testing.assert_close(params[2].grad, grads[2])


def test_last_layer_gradients_cancelled_only_in_freeze_epochs() -> None:
    cfg = load_config(PretrainConfig, preset="tiny")
    student, _ = build_networks(cfg)
    out = student([torch.randn(2, 49, 192), torch.randn(2, 16, 192)])
    torch.cat(out).pow(2).mean().backward()
    cancel_last_layer_gradients(student, epoch=1, freeze_epochs=1)
    assert all(p.grad is not None for n, p in student.named_parameters() if p.requires_grad)
    cancel_last_layer_gradients(student, epoch=0, freeze_epochs=1)
    for name, param in student.named_parameters():
        if param.requires_grad:
            assert (param.grad is None) == ("last_layer" in name), name


def test_ema_update_formula() -> None:
    teacher, student = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s.detach())


def test_train_resume_and_tracking(shards: Path, tmp_path: Path, mlflow_store) -> None:
    out = tmp_path / "run"
    summary = train(_cfg(shards, out, "max_steps=4"))
    teacher_path = summary["artifacts"]["teacher"]
    assert summary["metrics"]["probe/verification_acc"] == run_probe(out)[-1]["probe/verification_acc"]
    assert [step for step, _ in list_checkpoints(out)] == [2, 4]
    history = _history(out)
    assert [r["step"] for r in history] == [0, 1, 2, 3]
    sched = build_schedules(_cfg(shards, out), 5)
    for record in history:
        assert record["lr"] == pytest.approx(sched.lr[record["step"]])
        assert record["teacher_temp"] == pytest.approx(sched.teacher_temp[record["step"]])
    assert all(np.isfinite(r["loss"]) for r in history)
    face = load_face_model(teacher_path)
    state = load_checkpoint(teacher_path)
    assert state["meta"]["stage"] == "pretrain"
    assert state["meta"]["method"] == "lafs"
    assert state["meta"]["sigma"] == 5.0
    state4 = load_checkpoint(out / "checkpoints" / "step_00000004.pt")
    teacher_state = state4["teacher"]
    teacher_backbone = {k.removeprefix("backbone."): v for k, v in teacher_state.items() if k.startswith("backbone.")}
    for key, value in face.backbone.state_dict().items():
        torch.testing.assert_close(value, teacher_backbone[key])
    run_id = state4["mlflow_run_id"]
    run = mlflow_store.get_run(run_id)
    assert run.data.params["sigma"] == "5.0"
    assert run.data.params["method"] == "lafs"
    for name in ("loss", "lr", "wd", "momentum", "teacher_temp", "center_norm", "teacher_entropy", "images_per_s"):
        assert name in run.data.metrics, name
    assert 0.0 <= run.data.metrics["probe/verification_acc"] <= 1.0 and 0.0 <= run.data.metrics["probe/auc"] <= 1.0
    artifacts = {a.path for a in mlflow_store.list_artifacts(run_id)}
    assert {"views.png", "teacher.pt", "config.yaml"} <= artifacts
    assert [r["step"] for r in run_probe(out)] == [2, 4]

    train(_cfg(shards, out, "max_steps=6", "resume=auto"))
    resumed = _history(out)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4, 5]
    assert resumed[4]["lr"] == pytest.approx(sched.lr[4])
    assert load_checkpoint(out / "checkpoints" / "step_00000006.pt")["mlflow_run_id"] == run_id
    steps = [m.step for m in mlflow_store.get_metric_history(run_id, "loss")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert len(mlflow_store.search_runs([run.info.experiment_id])) == 1


def test_sinkhorn_and_koleo_step(shards: Path, tmp_path: Path) -> None:
    cfg = _cfg(shards, tmp_path / "sk", "probe_every=0", "teacher_centering=sinkhorn", "koleo_weight=0.5")
    assert cfg.model_dump()["teacher_centering"] == "sinkhorn"
    trainer = PretrainStage(cfg, init_distributed())
    images = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = trainer.views(images, grid_landmarks(112, 16).expand(4, -1, -1))
    with torch.no_grad():
        _, embeddings = trainer.student(views.tokens, return_embeddings=True)
    expected_koleo = float(torch.stack([koleo_loss(e) for e in embeddings[:2]]).mean())
    metrics = trainer.step_on_views(views, 0)
    assert metrics["koleo"] == pytest.approx(expected_koleo, rel=1e-4)
    assert metrics["loss"] == pytest.approx(metrics["dino_loss"] + 0.5 * metrics["koleo"], rel=1e-5)
    assert 0 < metrics["teacher_entropy"] <= np.log(cfg.model.dino_out_dim) + 1e-4
    assert trainer.loss_fn.center.abs().sum() == 0
    assert float(trainer.student.backbone.patch_embed.weight.grad.abs().sum()) > 0


def test_nonfinite_loss_stops_with_checkpoint(shards: Path, tmp_path: Path, mlflow_store) -> None:
    out = tmp_path / "nan"

    class Poisoned(PretrainStage):
        """A stage whose student is NaN by the first step."""

        def batches(self, start: int):
            with torch.no_grad():
                self.student.backbone.patch_embed.weight.fill_(float("nan"))
            return super().batches(start)

    with pytest.raises(LafsError, match=r"pretrain stopped: non-finite loss .* at step 0"):
        run_stage(lambda dist: Poisoned(_cfg(shards, out, "probe_every=0"), dist), _cfg(shards, out))
    saved = out / "checkpoints" / "nonfinite_step_00000000.pt"
    assert saved.is_file()
    assert load_checkpoint(saved)["step"] == 0
    assert list_checkpoints(out) == []


def test_an_exploding_run_stops_with_a_finite_checkpoint(shards: Path, tmp_path: Path, mlflow_store) -> None:
    """base_lr=1e6: the first update blows the weights up; what is saved when the run stops is still finite."""
    out = tmp_path / "explode"
    cfg = _cfg(shards, out, "probe_every=0", "base_lr=1e6", "warmup_epochs=0", "max_nonfinite_steps=2")
    with pytest.raises(LafsError, match=r"pretrain stopped: .*non-finite"):
        run_stage(lambda dist: PretrainStage(cfg, dist), cfg)
    (saved,) = (out / "checkpoints").glob("nonfinite_step_*.pt")
    state = load_checkpoint(saved)
    tensors = [t for part in ("student", "teacher") for t in state[part].values() if t.is_floating_point()]
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a torchrun agent and its workers (they run in their own sessions, so killpg is not enough)."""
    try:
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list[str], trainer_args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, "-m", "lafs_core.train.pretrain", "--preset", "tiny"]
    cmd += trainer_args
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.mark.slow
def test_two_node_run_killed_then_resumed_on_one_rank(shards: Path, tmp_path: Path, mlflow_uri: str) -> None:
    out = tmp_path / "dist"
    overrides = [
        f"data_dir={shards}",
        f"output_dir={out}",
        "global_batch_size=8",
        "local_views=2",
        "num_workers=0",
        "epochs=2",
        "iters_per_epoch=40",  # long enough that the kill lands mid-run on a fast machine
        "probe_every=0",
        "checkpoint_every=2",
        "keep_checkpoints=10",
        "backend=gloo",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_EXPERIMENT_NAME": "test-pretrain-dist"}
    env.pop("MLFLOW_RUN_ID", None)
    port = _free_port()
    rdzv = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"]
    nodes = [_torchrun([*rdzv, "--rdzv-id=kill9"], overrides, env, tmp_path / f"node{i}.log") for i in range(2)]
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(out):
            assert all(n.poll() is None for n in nodes), (tmp_path / "node0.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.5)
    finally:
        for node in nodes:
            kill_tree(node)
    killed = _history(out)
    assert {r["world_size"] for r in killed} == {2}
    ckpt_step, ckpt_path = list_checkpoints(out)[-1]
    first = load_checkpoint(ckpt_path)
    assert first["world_size"] == 2

    assert ckpt_step < 80, "the killed run finished before it was killed"
    resume_args = [*overrides, f"max_steps={ckpt_step + 2}", "--resume", "auto"]
    resume = _torchrun(["--standalone", "--nproc-per-node=1"], resume_args, env, tmp_path / "resume.log")
    assert resume.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    records = _history(out)
    resumed = [r for r in records if r["world_size"] == 1]
    assert resumed[0]["step"] == ckpt_step
    assert [r["step"] for r in resumed] == [ckpt_step, ckpt_step + 1]
    sched = build_schedules(load_config(PretrainConfig, preset="tiny", overrides=overrides), 40)
    for r in resumed:
        values = sched.at(r["step"])
        assert r["lr"] == pytest.approx(values["lr"], rel=1e-12)
        assert r["wd"] == pytest.approx(values["wd"], rel=1e-12)
        assert r["momentum"] == pytest.approx(values["momentum"], rel=1e-12)
        assert r["teacher_temp"] == pytest.approx(values["teacher_temp"], rel=1e-12)
    before = {r["step"]: r for r in killed}
    overlap = [r for r in resumed if r["step"] in before]
    for r in overlap:
        assert r["lr"] == before[r["step"]]["lr"]
        assert r["teacher_temp"] == before[r["step"]]["teacher_temp"]
    final = load_checkpoint(ckpt.step_checkpoint_path(out, ckpt_step + 2))
    assert final["world_size"] == 1
    assert final["mlflow_run_id"] == first["mlflow_run_id"]
