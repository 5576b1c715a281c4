"""lfw-v1 experiment logic: budgets resolve to valid stage configs; the table aggregates folds, seeds and pairs."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.lfw_v1.budgets import BUDGETS
from experiments.lfw_v1.table import Record, comparisons, markdown, paired_difference, summarise
from lafs_core.config import load_config
from lafs_core.config.finetune import FinetuneConfig, PartFViTConfig
from lafs_core.config.pretrain import PretrainConfig


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_budget_overrides_resolve_to_stage_configs(name: str) -> None:
    budget = BUDGETS[name]
    pre = load_config(PretrainConfig, overrides=budget.pretrain_overrides(), preset=budget.preset)
    assert pre.iters_per_epoch * pre.epochs >= budget.pretrain_steps == pre.max_steps
    assert pre.probe_every * budget.curve_points <= budget.pretrain_steps < pre.probe_every * (budget.curve_points + 1)
    fine = load_config(FinetuneConfig, overrides=budget.finetune_overrides(1812), preset=budget.preset)
    assert fine.epochs == budget.finetune_epochs
    steps = fine.epochs * (1812 // fine.global_batch_size)
    assert fine.val_every * budget.curve_points <= steps < fine.val_every * (budget.curve_points + 1)
    assert fine.landmark_reg_boundaries == sorted(fine.landmark_reg_boundaries)
    assert fine.landmark_reg_boundaries[-1] <= fine.epochs
    part = load_config(PartFViTConfig, overrides=budget.supervised_overrides(budget.partfvit_epochs), preset="tiny")
    assert part.epochs == budget.partfvit_epochs and not part.log_model


def test_scaled_budget_multiplies_steps_and_epochs() -> None:
    cpu = BUDGETS["cpu-full"]
    half = cpu.scaled(0.5)
    assert half.pretrain_steps == round(cpu.pretrain_steps / 2)
    assert half.finetune_epochs == max(1, round(cpu.finetune_epochs / 2))
    assert half.preset == cpu.preset and half.pretrain_batch == cpu.pretrain_batch


def _records() -> list[Record]:
    rng = np.random.default_rng(0)
    out = []
    for seed in (0, 1):
        base = rng.uniform(0.6, 0.7, size=10)
        for row, shift in (("scratch", 0.0), ("lafs", 0.05)):
            out.append(Record(row, seed, "lfw-v1", tuple(base + shift + 0.01 * seed), 0.2 + shift, 0.7))
        out.append(Record("scratch", seed, "att", tuple(base), 0.5, 0.8))
    return out


def test_summary_pools_folds_of_all_seeds() -> None:
    records = _records()
    table = summarise(records)
    lafs = [a for r in records if r.row == "lafs" and r.set == "lfw-v1" for a in r.fold_accuracies]
    cell = table["lafs"]["lfw-v1"]
    assert cell["folds"] == 20 and cell["seeds"] == [0, 1]
    assert cell["acc_mean"] == pytest.approx(np.mean(lafs))
    assert cell["acc_std"] == pytest.approx(np.std(lafs, ddof=1))
    seed_means = [np.mean(r.fold_accuracies) for r in records if r.row == "lafs" and r.set == "lfw-v1"]
    assert cell["seed_std"] == pytest.approx(np.std(seed_means, ddof=1))
    assert cell["tar_mean"] == pytest.approx(0.25) and cell["tar_std"] == 0.0


def test_paired_difference_matches_fold_by_fold() -> None:
    diff = paired_difference(_records(), "lafs", "scratch")
    assert diff is not None and diff["n"] == 20
    assert diff["diff"] == pytest.approx(0.05) and diff["stderr"] == pytest.approx(0.0, abs=1e-12)
    assert paired_difference(_records(), "lafs", "dino-grid") is None
    text = markdown(summarise(_records()), comparisons(_records()))
    assert "| lafs | " in text and "lafs − scratch: +5.00" in text
