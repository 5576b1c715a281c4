"""The health monitor's judgement on loss and entropy sequences (the real-run checks live with the stage tests)."""

from __future__ import annotations

import math

import numpy as np

from lafs_core.train.health import HealthMonitor


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
