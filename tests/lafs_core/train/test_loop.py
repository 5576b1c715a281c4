"""The one stage loop with a stage of its own (a real linear regression): checkpoint cadence, resume into the same
MLflow run, validation and best.pt, the stop flag and the non-finite guards (loss and gradient)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lafs_core.checkpoint_io import read_checkpoint
from lafs_core.config import StageConfig
from lafs_core.distributed import DistInfo
from lafs_core.errors import LafsError
from lafs_core.train.checkpointing import list_checkpoints
from lafs_core.train.loop import Stage, check_finite, gradients_finite, run_stage


class LoopConfig(StageConfig):
    """The fields the loop reads, plus the stage's own."""

    output_dir: Path
    resume: str | None = None
    log_every: int = 1
    checkpoint_every: int = 2
    keep_checkpoints: int = 10
    total_steps: int = 6
    validate_every: int = 0
    stop_at: int = -1
    poison_at: int = -1
    nan_grads_from: int = -1
    nan_grads_until: int = -1
    max_nonfinite_steps: int = 3


class Regression(Stage):
    """y = 3x fitted by SGD; validation is the negative error, so it improves as it learns."""

    name = "regression"

    def __init__(self, cfg: LoopConfig, dist: DistInfo) -> None:
        self.cfg, self.dist = cfg, dist
        self.total_steps = cfg.total_steps
        self.validate_every = cfg.validate_every
        self.best_metric = "fit/neg_error"
        self.final_checkpoint = "last.pt"
        torch.manual_seed(0)
        self.model = nn.Linear(1, 1)
        self.forward: nn.Module = self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.x = torch.linspace(-1, 1, 16)[:, None]

    def trainable(self) -> nn.Module:
        return self.model

    def use_wrapped(self, module: nn.Module) -> None:
        self.forward = module

    def batches(self, start: int) -> Iterator[torch.Tensor]:
        while True:
            yield self.x

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        if step == self.cfg.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        loss = ((self.forward(batch) - 3 * batch) ** 2).mean()
        check_finite(loss * (float("nan") if step == self.cfg.poison_at else 1.0), self.dist.device)
        self.optimizer.zero_grad()
        loss.backward()
        if self.cfg.nan_grads_from <= step < self.cfg.nan_grads_until:
            self.model.weight.grad.fill_(float("nan"))
        finite = gradients_finite(self.model.parameters(), self.dist.device)
        if finite:
            self.optimizer.step()
        return {"loss": float(loss.detach()), "nonfinite_grad": 0.0 if finite else 1.0}

    def state(self, resumable: bool = True) -> dict[str, Any]:
        return {"model": self.model.state_dict(), **({"optimizer": self.optimizer.state_dict()} if resumable else {})}

    def restore(self, state: dict[str, Any], path: Path) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    @property
    def validates(self) -> bool:
        return True

    def validate(self, step: int) -> dict[str, float]:
        with torch.no_grad():
            return {"fit/neg_error": -float(((self.model(self.x) - 3 * self.x) ** 2).mean())}


def run(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    cfg = LoopConfig(output_dir=tmp_path, **fields)
    return run_stage(lambda dist: Regression(cfg, dist), cfg)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_checkpoints_validation_and_resume_into_the_same_run(tmp_path: Path, mlflow_store) -> None:
    first = run(tmp_path, total_steps=4, validate_every=3)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 4]
    assert [r["step"] for r in lines(tmp_path / "validation.jsonl")] == [3, 4]
    best = max(lines(tmp_path / "validation.jsonl"), key=lambda r: r["fit/neg_error"])
    assert first["best"] == {"metric": "fit/neg_error", "value": best["fit/neg_error"], "step": best["step"]}
    assert read_checkpoint(tmp_path / "best.pt")["step"] == best["step"] and "optimizer" not in read_checkpoint(
        tmp_path / "best.pt"
    )
    assert read_checkpoint(tmp_path / "last.pt")["mlflow_run_id"] == first["run_id"]

    resumed = run(tmp_path, total_steps=6, validate_every=3, resume="auto")
    assert resumed["run_id"] == first["run_id"] and resumed["steps"] == 6
    assert [r["step"] for r in lines(tmp_path / "history.jsonl")] == list(range(6))
    assert [m.step for m in mlflow_store.get_metric_history(first["run_id"], "loss")] == list(range(1, 7))
    straight = run(tmp_path / "straight", total_steps=6, validate_every=3)
    assert straight["steps"] == 6  # a run never interrupted takes the same steps (momentum state came back)
    assert lines(tmp_path / "history.jsonl") == lines(tmp_path / "straight" / "history.jsonl")


def test_sigterm_saves_the_step_and_stops_with_one_line(tmp_path: Path, mlflow_store) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(LafsError, match="regression stopped by signal at step 3; resume with --resume auto"):
        run(tmp_path, stop_at=2, checkpoint_every=100)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3]
    assert signal.getsignal(signal.SIGTERM) is handler


def test_a_non_finite_loss_saves_the_state_before_the_step(tmp_path: Path, mlflow_store) -> None:
    with pytest.raises(LafsError, match=r"regression stopped: non-finite loss \(nan\) at step 2"):
        run(tmp_path, poison_at=2, checkpoint_every=100)
    saved = read_checkpoint(tmp_path / "checkpoints" / "nonfinite_step_00000002.pt")
    assert saved["step"] == 2 and list_checkpoints(tmp_path) == []


def test_a_non_finite_gradient_is_skipped_and_counted(tmp_path: Path, mlflow_store) -> None:
    summary = run(tmp_path, nan_grads_from=2, nan_grads_until=4, checkpoint_every=100)
    assert summary["steps"] == 6
    history = lines(tmp_path / "history.jsonl")
    assert [r["nonfinite_grad"] for r in history] == [0, 0, 1, 1, 0, 0]
    weights = read_checkpoint(tmp_path / "last.pt")["model"]
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_non_finite_gradients_in_a_row_stop_the_run_with_the_last_finite_state(tmp_path: Path, mlflow_store) -> None:
    with pytest.raises(LafsError, match=r"regression stopped: 3 steps in a row had a non-finite gradient"):
        run(tmp_path, nan_grads_from=2, nan_grads_until=100, checkpoint_every=100)
    saved = read_checkpoint(tmp_path / "checkpoints" / "nonfinite_step_00000004.pt")
    before = run(tmp_path / "two_steps", total_steps=2)
    assert before["steps"] == 2
    reference = read_checkpoint(tmp_path / "two_steps" / "last.pt")["model"]
    for key, value in saved["model"].items():
        assert bool(torch.isfinite(value).all())
        torch.testing.assert_close(value, reference[key])  # nothing of the three bad steps was applied
