"""The one training loop of every stage: distributed set-up, resume, DDP, the stop flag, checkpoints, tracking and
the validation hook.

A stage (LAFS pretraining, Part fViT, fine-tuning) is a :class:`Stage`: its networks and optimiser, one optimiser
step on one batch, its data stream, what its checkpoints hold, an optional validation and its exports. The loop does
the rest, the same way for every stage:

- **Distributed**: joins the torchrun job (or runs alone), wraps the stage's trainable module in DDP when more than
  one rank runs, and destroys the process group at the end.
- **Resume**: ``resume=auto|PATH`` loads the newest intact checkpoint; besides the stage's state it holds the step,
  the world size it was taken on, the MLflow run id and the best validation value, so a run continues its schedule
  and its run on any number of ranks.
- **Stop**: SIGTERM/SIGINT on any rank sets a flag that is all-reduced after every step, so every rank saves the same
  checkpoint and leaves with a :class:`~lafs_core.errors.LafsError` naming the step.
- **Non-finite loss**: a stage calls :func:`check_finite` before its backward pass; every rank raises together, the
  loop saves the state before the step as ``checkpoints/nonfinite_step_N.pt`` and stops.
- **Non-finite gradient**: a stage checks :func:`gradients_finite` before its update and skips the update (metric
  ``nonfinite_grad`` = 1); the loop counts skipped steps and stops after ``max_nonfinite_steps`` in a row, saving
  the (finite) state as above.
- **Checkpoints** every ``checkpoint_every`` steps and at the end (``checkpoints/step_N.pt``, the newest
  ``keep_checkpoints`` kept) and ``best.pt`` whenever the stage's best metric improves. The state is built on every
  rank (a stage's state may be a collective, e.g. gathering Partial FC shards) and written atomically by rank 0.
- **Tracking**: one MLflow run per stage (rank 0), the resolved ``config.yaml``, the step metrics averaged over ranks
  every ``log_every`` steps, and every step's rank-0 metrics in ``history.jsonl`` (resume audits, tests).
- **Validation**: every ``validate_every`` steps and once at the end; metrics logged and appended to
  ``validation.jsonl``. Validation never draws from the training's random streams.
- **Health**: every step's loss (and an SSL teacher's entropy) goes to :class:`~lafs_core.train.health.HealthMonitor`;
  a stalled loss or a collapsed teacher is logged as a warning and tagged on the MLflow run (``lafs.health``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lafs_core import tracking
from lafs_core.checkpoint_io import atomic_torch_save, read_checkpoint
from lafs_core.config import dump_config
from lafs_core.distributed import DistInfo, all_reduce_mean, all_reduce_sum, barrier, cleanup, init_distributed
from lafs_core.errors import LafsError
from lafs_core.train.checkpointing import (
    StopRequest,
    checkpoint_dir,
    prune_checkpoints,
    resolve_resume,
    step_checkpoint_path,
)
from lafs_core.train.health import HealthMonitor

log = logging.getLogger(__name__)


class NonFiniteLossError(LafsError):
    """A loss became NaN or infinite on some rank; raised on every rank before the optimiser step."""


def check_finite(loss: torch.Tensor, device: torch.device) -> None:
    """Raise :class:`NonFiniteLossError` on every rank when ``loss`` is not finite on any rank (a collective)."""
    flag = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=device)
    if all_reduce_sum(flag).item() > 0:
        raise NonFiniteLossError(f"non-finite loss ({float(loss.detach())})")


def gradients_finite(parameters: Iterable[torch.Tensor], device: torch.device) -> bool:
    """True on every rank when every gradient on every rank is finite (a collective); checked before an update, so
    a non-finite gradient is never applied and a checkpoint after it holds the last finite state."""
    grads = [p.grad for p in parameters if p.grad is not None]
    local = bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())) if grads else True
    return not any_rank(not local, device)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective)."""
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0], device=device)).item() > 0)


class Stage(ABC):
    """What a stage supplies to the loop: its step, its state, its data, its validation and its exports.

    Subclasses set ``name``, ``cfg`` (a stage config with ``output_dir``, ``resume``, ``log_every``,
    ``checkpoint_every`` and ``keep_checkpoints``), ``dist`` and ``total_steps``; optionally ``metric_prefix`` (of
    the step metrics in MLflow), ``validate_every``, ``best_metric`` (a validation metric that picks ``best.pt``),
    ``images_per_step`` (for images/s), ``final_checkpoint`` (a file name: the state without the optimiser,
    written beside the run at the end) and ``teacher_out_dim`` (an SSL teacher's output width, whose
    ``teacher_entropy`` metric the health check then watches).
    """

    name: str
    cfg: Any
    dist: DistInfo
    total_steps: int
    metric_prefix: str = ""
    validate_every: int = 0
    best_metric: str | None = None
    images_per_step: int = 0
    final_checkpoint: str | None = None
    teacher_out_dim: int | None = None

    @abstractmethod
    def trainable(self) -> nn.Module:
        """The module DDP wraps (the one whose forward the step runs)."""

    @abstractmethod
    def use_wrapped(self, module: nn.Module) -> None:
        """Run the step's forward through ``module`` (the DDP wrapper of :meth:`trainable`) from now on."""

    @abstractmethod
    def batches(self, start: int) -> Iterator[Any]:
        """The stage's data from step ``start`` on, one item per optimiser step; (re)seeds its random streams."""

    @abstractmethod
    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        """One optimiser step (step index ``step``, 0-based) on one item of :meth:`batches`; its metrics."""

    @abstractmethod
    def state(self, resumable: bool = True) -> dict[str, Any]:
        """The stage's checkpoint content (without the optimiser when not ``resumable``); called on every rank."""

    @abstractmethod
    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Load a checkpoint written by :meth:`state` (taken on any world size)."""

    def validate(self, step: int) -> dict[str, float]:
        """Validation metrics at ``step`` (called on every rank; empty when the stage has none)."""
        return {}

    @property
    def validates(self) -> bool:
        """True when :meth:`validate` has something to measure (it then also runs once at the end)."""
        return False

    def export(self, run_dir: Path, step: int) -> dict[str, Path]:
        """The stage's products after ``step`` steps (called on every rank; rank 0 writes and logs them)."""
        return {}

    def tags(self) -> dict[str, str]:
        """MLflow tags of the stage's run."""
        return {}

    def start_metrics(self) -> dict[str, float]:
        """Facts logged once when the run starts (plan, data sizes)."""
        return {}

    def summary(self, result: LoopResult) -> dict[str, Any]:
        """What the run reports to its caller (every rank)."""
        return {
            "stage": result.stage,
            "steps": result.steps,
            "rank": result.rank,
            "world_size": result.world_size,
            "metrics": result.validation,
            "best": result.best,
            "run_id": result.run_id,
            "run_dir": str(result.run_dir),
            "artifacts": {k: str(v) for k, v in result.exports.items()},
        }


@dataclass
class Progress:
    """The loop's own state, saved beside the stage's in every checkpoint."""

    step: int = 0
    run_id: str | None = None
    best_value: float = -math.inf
    best_step: int = -1
    last_validation: dict[str, float] = field(default_factory=dict)

    def as_dict(self, world_size: int) -> dict[str, Any]:
        """The checkpoint fields of the loop."""
        return {
            "step": self.step,
            "world_size": world_size,
            "mlflow_run_id": self.run_id,
            "best": {"value": self.best_value, "step": self.best_step},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        """The loop fields of a checkpoint."""
        best = state.get("best", {})
        return cls(
            int(state["step"]),
            state.get("mlflow_run_id"),
            float(best.get("value", -math.inf)),
            int(best.get("step", -1)),
        )


@dataclass(frozen=True)
class LoopResult:
    """What a finished stage reports: steps, its MLflow run, the last validation, the best checkpoint, exports."""

    stage: str
    steps: int
    world_size: int
    rank: int
    run_id: str | None
    run_dir: Path
    validation: dict[str, float]
    best: dict[str, Any]
    exports: dict[str, Path]


class _Loop:
    """One run of a stage (see the module docstring)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.cfg = stage.cfg
        self.dist = stage.dist
        self.run_dir = Path(stage.cfg.output_dir)
        self.progress = Progress()
        self.health = HealthMonitor(stage.total_steps, out_dim=stage.teacher_out_dim)
        self.skipped = 0
        self.skipped_in_a_row = 0

    # --- checkpoints -------------------------------------------------------------------------------------------

    def save(self, path: Path, resumable: bool = True) -> None:
        """Build the checkpoint on every rank, write it on rank 0, then wait for the write."""
        payload = {**self.stage.state(resumable), **self.progress.as_dict(self.dist.world_size)}
        if self.dist.is_main:
            atomic_torch_save(payload, path)
        barrier()

    def save_periodic(self) -> None:
        """``checkpoints/step_N.pt``, keeping the newest ``keep_checkpoints``."""
        self.save(step_checkpoint_path(self.run_dir, self.progress.step))
        if self.dist.is_main:
            prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)

    def resume(self) -> None:
        """Continue from ``cfg.resume`` (``auto``: the newest intact checkpoint of the run folder), if any."""
        path = resolve_resume(self.cfg.resume, self.run_dir)
        if path is None:
            return
        state = read_checkpoint(path, map_location=self.dist.device)
        self.stage.restore(state, path)
        self.progress = Progress.from_state(state)
        log.info(
            "%s: resumed %s at step %d (saved on %d ranks, now %d)",
            self.stage.name,
            path,
            self.progress.step,
            int(state.get("world_size", 0)),
            self.dist.world_size,
        )

    # --- logging -----------------------------------------------------------------------------------------------

    def record(self, name: str, record: dict[str, Any]) -> None:
        """Rank 0 appends one JSON line to ``<run>/<name>``."""
        if self.dist.is_main:
            with (self.run_dir / name).open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def log_step(self, metrics: dict[str, float], first: int, started: float) -> None:
        """Step metrics averaged over ranks (a collective), with the step time and throughput since ``first``."""
        reduced = all_reduce_mean(torch.tensor(list(metrics.values()), dtype=torch.float64, device=self.dist.device))
        logged = dict(zip(metrics, reduced.tolist(), strict=True))
        done, elapsed = self.progress.step - first, time.perf_counter() - started
        logged["step_time"] = elapsed / max(done, 1)
        if self.stage.images_per_step:
            logged["images_per_s"] = done * self.stage.images_per_step / max(elapsed, 1e-9)
        tracking.log_metrics({f"{self.stage.metric_prefix}{k}": v for k, v in logged.items()}, step=self.progress.step)
        step, total = self.progress.step, self.stage.total_steps
        log.debug("%s step %d/%d loss %.4f", self.stage.name, step, total, logged["loss"])

    def check_health(self, metrics: dict[str, float]) -> None:
        """Rank 0 feeds the health monitor its step metrics; a finding is a warning and an MLflow tag, once."""
        if not self.dist.is_main:
            return
        findings = self.health.update(self.progress.step, metrics["loss"], metrics.get("teacher_entropy"))
        for message in findings.values():
            log.warning("%s: %s", self.stage.name, message)
        if findings:
            tracking.set_tags({"lafs.health": ",".join(findings), "lafs.health_message": " | ".join(findings.values())})

    def count_skipped(self, metrics: dict[str, float], step: int) -> None:
        """Count updates the stage skipped for a non-finite gradient; stop after ``max_nonfinite_steps`` in a row."""
        if not metrics.get("nonfinite_grad"):
            self.skipped_in_a_row = 0
            return
        self.skipped += 1
        self.skipped_in_a_row += 1
        log.warning(
            "%s: step %d skipped: non-finite gradient (%d in a row)", self.stage.name, step, self.skipped_in_a_row
        )
        limit = int(getattr(self.cfg, "max_nonfinite_steps", 1))
        if self.skipped_in_a_row >= limit:
            path = checkpoint_dir(self.run_dir) / f"nonfinite_step_{step:08d}.pt"
            self.save(path)
            raise LafsError(
                f"{self.stage.name} stopped: {limit} steps in a row had a non-finite gradient (last: step {step}; "
                f"{self.skipped} skipped in all); the last finite state is saved as {path}; try amp=none or a lower "
                "learning rate"
            )

    def validate(self) -> None:
        """Run the stage's validation, log it, and save ``best.pt`` when its best metric improved."""
        step = self.progress.step
        metrics = self.stage.validate(step)
        self.progress.last_validation = metrics
        tracking.log_metrics(metrics, step=step)
        self.record("validation.jsonl", {"step": step, **metrics})
        value = metrics.get(self.stage.best_metric or "")
        if value is not None and value > self.progress.best_value:
            self.progress.best_value, self.progress.best_step = value, step
            self.save(self.run_dir / "best.pt", resumable=False)

    # --- the run -----------------------------------------------------------------------------------------------

    def run(self) -> LoopResult:
        """Resume, wrap, train to ``total_steps`` (or a stop), validate, checkpoint, export."""
        self.resume()
        if self.dist.distributed:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.stage.use_wrapped(DistributedDataParallel(self.stage.trainable(), device_ids=ids))
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.cfg, self.run_dir / "config.yaml")
        stop = StopRequest()
        try:
            with tracking.stage_run(self.stage.name, self.cfg, self.progress.run_id, self.stage.tags()) as run:
                if run is not None:
                    self.progress.run_id = run.info.run_id
                if start := self.stage.start_metrics():
                    tracking.log_metrics(start, step=self.progress.step)
                self.train(stop)
                exports = self.finish()
        finally:
            stop.restore()
        return LoopResult(
            self.stage.name,
            self.progress.step,
            self.dist.world_size,
            self.dist.rank,
            self.progress.run_id,
            self.run_dir,
            self.progress.last_validation,
            {"metric": self.stage.best_metric, "value": self.progress.best_value, "step": self.progress.best_step},
            exports,
        )

    def train(self, stop: StopRequest) -> None:
        """The steps, with logging, periodic validation and checkpoints, and the stop flag; log lines (a health
        warning) print above the progress bar, not into it."""
        with logging_redirect_tqdm():
            self._train(stop)

    def _train(self, stop: StopRequest) -> None:
        stage, total = self.stage, self.stage.total_steps
        first, started = self.progress.step, time.perf_counter()
        bar = tqdm(total=total, initial=first, desc=stage.name, unit="step", disable=not self.dist.is_main)
        batches = stage.batches(first)
        while self.progress.step < total:
            step = self.progress.step
            try:
                metrics = stage.train_step(next(batches), step)
            except NonFiniteLossError as exc:
                self.save(checkpoint_dir(self.run_dir) / f"nonfinite_step_{step:08d}.pt")
                raise LafsError(
                    f"{stage.name} stopped: {exc} at step {step}; the state before the step is saved in "
                    f"{checkpoint_dir(self.run_dir)}; try amp=none or a lower learning rate"
                ) from None
            self.progress.step += 1
            self.record("history.jsonl", {"step": step, "world_size": self.dist.world_size, **metrics})
            self.count_skipped(metrics, step)
            self.check_health(metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            if self.progress.step % self.cfg.log_every == 0 or self.progress.step == total:
                self.log_step(metrics, first, started)
            if self.progress.step < total and stage.validate_every and self.progress.step % stage.validate_every == 0:
                self.validate()
            stopping = any_rank(stop.requested, self.dist.device)
            if stopping or (self.progress.step < total and self.progress.step % self.cfg.checkpoint_every == 0):
                self.save_periodic()
            if stopping:
                raise LafsError(
                    f"{stage.name} stopped by signal at step {self.progress.step}; resume with --resume auto"
                )
        bar.close()

    def finish(self) -> dict[str, Path]:
        """Validate once more, write the last periodic checkpoint and the stage's exports."""
        if self.stage.validates:
            self.validate()
        self.save_periodic()
        if self.stage.final_checkpoint:
            self.save(self.run_dir / self.stage.final_checkpoint, resumable=False)
        exports = self.stage.export(self.run_dir, self.progress.step)
        if self.dist.is_main:
            tracking.log_artifact(self.run_dir / "config.yaml")
        barrier()
        return exports


def run_stage(make_stage: Callable[[DistInfo], Stage], cfg: BaseModel) -> dict[str, Any]:
    """Join the distributed job of ``cfg.backend``, build the stage on it, run it to the end (see the module doc)
    and return the stage's summary of the run."""
    backend = getattr(cfg, "backend", "auto")
    dist = init_distributed(None if backend == "auto" else backend)
    try:
        stage = make_stage(dist)
        return stage.summary(_Loop(stage).run())
    finally:
        cleanup()
