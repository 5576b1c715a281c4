"""Learning curves of an lfw-v1 experiment: validation-pair accuracy and training loss against steps, per row.

Every fine-tuning run checks the validation pairs (``lfw-v1-val``, protocols.md 1.5) ``curve_points`` times and every
SSL run probes its teacher on them as often (``validation.jsonl`` in each run directory); ``history.jsonl`` holds the
per-step losses. This module reads those files under ``<out>/finetune/<row>/seed<N>`` and
``<out>/pretrain/<row>/seed<N>`` and draws them: seeds as thin lines, their mean as a thick one. The test pairs are
never read here, so the curves are what the recipe was tuned on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.shards.writer import atomic_write_bytes

FINETUNE_ACC = "lfw-v1-val/acc"
PROBE_ACC = "probe/verification_acc"  # the SSL teacher's 10-fold accuracy (``probe/auc`` beside it since 2026-11-30)
LOSS_WINDOW = 25  # steps in the running mean of a training-loss curve


@dataclass
class Curves:
    """The curves of one stage kind (``finetune`` or ``pretrain``): ``{row: {seed: (steps, values)}}`` per metric."""

    accuracy: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    loss: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records: Iterable[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key``, last value per step (a resumed run rewrites the steps it repeats)."""
    by_step = {int(r["step"]): float(r[key]) for r in records if key in r}
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def running_mean(values: np.ndarray, window: int = LOSS_WINDOW) -> np.ndarray:
    """The mean of the last ``window`` values at each point (shorter at the start): a readable loss curve."""
    if values.size == 0:
        return values
    sums = np.cumsum(np.r_[0.0, values])
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def read_curves(out: Path, kind: str, accuracy_key: str) -> Curves:
    """The validation-accuracy and training-loss curves of every ``<out>/<kind>/<row>/seed<N>`` run directory."""
    curves = Curves()
    for run_dir in sorted((out / kind).glob("*/seed*")):
        row, seed = run_dir.parent.name, int(run_dir.name.removeprefix("seed"))
        steps, acc = _series(_read_jsonl(run_dir / "validation.jsonl"), accuracy_key)
        if steps.size:
            curves.accuracy.setdefault(row, {})[seed] = (steps, acc)
        steps, loss = _series(_read_jsonl(run_dir / "history.jsonl"), "loss")
        if steps.size:
            curves.loss.setdefault(row, {})[seed] = (steps, running_mean(loss))
    return curves


def mean_curve(per_seed: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The mean over seeds at the steps every seed has."""
    common = set.intersection(*(set(steps.tolist()) for steps, _ in per_seed.values()))
    steps = np.array(sorted(common), dtype=np.int64)
    values = [np.interp(steps, s, v) for s, v in per_seed.values()]
    return steps, np.mean(values, axis=0)


def summary(curves: Curves) -> dict[str, dict[str, list[float]]]:
    """``{row: {"steps": [...], "accuracy": [...]}}``: the seed-mean validation curve of each row (for the docs)."""
    table = {}
    for row, per_seed in sorted(curves.accuracy.items()):
        steps, values = mean_curve(per_seed)
        table[row] = {"steps": steps.tolist(), "accuracy": [round(float(v), 4) for v in values], "seeds": len(per_seed)}
    return table


def _panel(ax: Any, per_row: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], ylabel: str, title: str) -> None:
    colours = {}
    for row, per_seed in sorted(per_row.items()):
        for steps, values in per_seed.values():
            (line,) = ax.plot(steps, values, linewidth=0.6, alpha=0.35, color=colours.get(row))
            colours.setdefault(row, line.get_color())
        steps, values = mean_curve(per_seed)
        ax.plot(steps, values, linewidth=2.0, color=colours[row], label=f"{row} ({len(per_seed)} seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if per_row:
        ax.legend(fontsize=8)


def plot_curves(out: Path, path: Path | None = None) -> Path | None:
    """Draw fine-tuning and SSL curves (validation accuracy, training loss) into ``<out>/curves.png``; also write
    ``<out>/curves.json`` (seed-mean validation curves). None when no run has a curve yet."""
    from matplotlib.figure import Figure

    finetune = read_curves(out, "finetune", FINETUNE_ACC)
    pretrain = read_curves(out, "pretrain", PROBE_ACC)
    if not (finetune.accuracy or finetune.loss or pretrain.accuracy or pretrain.loss):
        return None
    path = path or out / "curves.png"
    fig = Figure(figsize=(12, 9), dpi=100)
    axes = fig.subplots(2, 2)
    _panel(axes[0, 0], finetune.accuracy, "validation-pair accuracy", "fine-tuning: lfw-v1-val accuracy")
    _panel(axes[0, 1], finetune.loss, f"CosFace loss (mean of {LOSS_WINDOW} steps)", "fine-tuning: training loss")
    _panel(axes[1, 0], pretrain.accuracy, "validation-pair accuracy", "SSL: teacher probe on lfw-v1-val")
    _panel(axes[1, 1], pretrain.loss, f"DINO loss (mean of {LOSS_WINDOW} steps)", "SSL: training loss")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    curves = {"finetune": summary(finetune), "pretrain": summary(pretrain)}
    atomic_write_bytes(out / "curves.json", (json.dumps(curves, indent=2) + "\n").encode())
    return path
