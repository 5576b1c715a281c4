"""Per-iteration schedules: the closed-form formulas, and independence from the world size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lafs_core.config import load_config
from lafs_core.config.pretrain import PretrainConfig
from lafs_core.errors import ConfigError
from lafs_core.train.pretrain import build_schedules, iterations_per_epoch, per_rank_batch
from lafs_core.train.schedules import cosine_schedule, linear_then_constant, staged_weight


def test_cosine_schedule_formula() -> None:
    base, final, epochs, ipe, warm = 5e-4, 1e-6, 7, 13, 2
    values = cosine_schedule(base, final, epochs, ipe, warmup_epochs=warm, start_warmup_value=1e-5)
    assert len(values) == epochs * ipe
    w = warm * ipe
    np.testing.assert_allclose(values[:w], 1e-5 + (base - 1e-5) * np.arange(w) / w)
    span = epochs * ipe - w
    for i in (w, w + 1, w + span // 2, epochs * ipe - 1):
        t = i - w
        assert values[i] == pytest.approx(final + 0.5 * (base - final) * (1 + math.cos(math.pi * t / span)))
    assert values[w] == pytest.approx(base)
    assert np.all(np.diff(values[w:]) <= 0)


def test_wd_and_momentum_go_up() -> None:
    wd = cosine_schedule(0.04, 0.4, 5, 10)
    mom = cosine_schedule(0.996, 1.0, 5, 10)
    assert wd[0] == pytest.approx(0.04)
    assert mom[0] == pytest.approx(0.996)
    assert np.all(np.diff(wd) >= 0)
    assert np.all(np.diff(mom) >= 0)
    assert wd[-1] == pytest.approx(0.4, abs=1e-3)
    assert mom[-1] == pytest.approx(1.0, abs=1e-4)


def test_teacher_temperature_runs_down_then_constant() -> None:
    temps = linear_then_constant(0.07, 0.04, 30, 41)
    assert len(temps) == 41
    np.testing.assert_allclose(temps[:30], np.linspace(0.07, 0.04, 30))
    np.testing.assert_allclose(temps[30:], 0.04)


def test_staged_weight() -> None:
    bounds, values = [8, 14, 21, 28], [1000, 100, 1, 0.11, 0]
    got = [staged_weight(e, bounds, values) for e in (0, 7, 8, 13, 14, 20, 21, 27, 28, 40)]
    assert got == [1000, 1000, 100, 100, 1, 1, 0.11, 0.11, 0, 0]
    with pytest.raises(ValueError, match="one more value"):
        staged_weight(0, [1], [1])


def test_pretrain_schedules_follow_the_config() -> None:
    cfg = load_config(
        PretrainConfig,
        preset="tiny",
        overrides=["epochs=6", "warmup_epochs=2", "warmup_teacher_temp_epochs=3", "global_batch_size=32"],
    )
    sched = build_schedules(cfg, 10)
    assert sched.total == 60
    assert cfg.peak_lr() == pytest.approx(cfg.base_lr * 32 / 256)
    assert sched.lr[20] == pytest.approx(cfg.peak_lr())
    assert sched.lr[-1] > cfg.min_lr
    # official per-epoch teacher temperature: constant within an epoch, 0.07 -> 0.04 over 3 epochs
    np.testing.assert_allclose(sched.teacher_temp[:10], 0.07)
    np.testing.assert_allclose(sched.teacher_temp[10:20], 0.055)
    np.testing.assert_allclose(sched.teacher_temp[20:], 0.04)
    per_iter = build_schedules(cfg.model_copy(update={"teacher_temp_per_epoch": False}), 10)
    np.testing.assert_allclose(per_iter.teacher_temp[:30], np.linspace(0.07, 0.04, 30))
    assert sched.at(25) == {
        "lr": sched.lr[25],
        "wd": sched.wd[25],
        "momentum": sched.momentum[25],
        "teacher_temp": sched.teacher_temp[25],
    }


def test_epoch_length_and_batch_split_do_not_depend_on_world_size() -> None:
    cfg = load_config(PretrainConfig, preset="tiny", overrides=["global_batch_size=16"])
    info = {"num_samples": 1000}
    assert iterations_per_epoch(cfg, info) == 62
    assert [per_rank_batch(cfg, w) * w for w in (1, 2, 4, 8)] == [16] * 4
    with pytest.raises(ConfigError, match="not divisible"):
        per_rank_batch(cfg, 3)
    fixed = cfg.model_copy(update={"iters_per_epoch": 5})
    assert iterations_per_epoch(fixed, info) == 5
