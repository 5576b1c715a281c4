"""Aggregate per-(row, seed, set) verification reports into the lfw-v1 results table (JSON + Markdown).

Accuracy is reported as mean +- std over all folds of all seeds (10 folds x S seeds values), beside the std of the
per-seed means (seed variance). Row-vs-row differences are paired: the same seed and fold give the same test pairs,
so the difference of fold accuracies is averaged and its standard error is std / sqrt(n).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ROWS = ("scratch", "dino-grid", "lafs", "lafs-online")
SETS = ("lfw-v1", "att", "yaleb")
TAR_KEY = "1e-2"


@dataclass(frozen=True)
class Record:
    """One verification report of one fine-tuned model (row, seed) on one pair set."""

    row: str
    seed: int
    set: str
    fold_accuracies: tuple[float, ...]
    tar: float
    auc: float

    @classmethod
    def from_report(cls, row: str, seed: int, report: dict[str, Any]) -> Record:
        """From a ``lafs eval`` JSON report (``fold_accuracies``, ``tar_at_far``, ``auc``)."""
        return cls(
            row,
            seed,
            report["set"],
            tuple(float(a) for a in report["fold_accuracies"]),
            float(report["tar_at_far"][TAR_KEY]),
            float(report["auc"]),
        )


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def summarise(records: Iterable[Record]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{row: {set: {acc_mean, acc_std, seed_std, tar_mean, tar_std, auc_mean, seeds, folds}}}``."""
    grouped: dict[tuple[str, str], list[Record]] = {}
    for record in records:
        grouped.setdefault((record.row, record.set), []).append(record)
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for (row, name), group in grouped.items():
        folds = [a for r in group for a in r.fold_accuracies]
        acc_mean, acc_std = _mean_std(folds)
        seed_means = [float(np.mean(r.fold_accuracies)) for r in group]
        tar_mean, tar_std = _mean_std([r.tar for r in group])
        table.setdefault(row, {})[name] = {
            "acc_mean": acc_mean,
            "acc_std": acc_std,
            "seed_std": _mean_std(seed_means)[1],
            "tar_mean": tar_mean,
            "tar_std": tar_std,
            "auc_mean": float(np.mean([r.auc for r in group])),
            "seeds": sorted(r.seed for r in group),
            "folds": len(folds),
        }
    return table


def paired_difference(
    records: Iterable[Record], row: str, baseline: str, name: str = "lfw-v1"
) -> dict[str, Any] | None:
    """Mean fold-accuracy difference ``row - baseline`` over matching (seed, fold), with its standard error."""
    by_key = {(r.row, r.seed): r for r in records if r.set == name}
    diffs: list[float] = []
    for (candidate, seed), record in by_key.items():
        other = by_key.get((baseline, seed))
        if candidate != row or other is None:
            continue
        diffs.extend(a - b for a, b in zip(record.fold_accuracies, other.fold_accuracies, strict=True))
    if not diffs:
        return None
    mean, std = _mean_std(diffs)
    stderr = std / math.sqrt(len(diffs))
    return {"row": row, "baseline": baseline, "set": name, "diff": mean, "stderr": stderr, "n": len(diffs)}


def comparisons(records: Sequence[Record]) -> list[dict[str, Any]]:
    """LAFS and LAFS-online against scratch and DINO-grid, and LAFS against LAFS-online, on lfw-v1."""
    pairs = [("lafs", "scratch"), ("lafs", "dino-grid"), ("lafs-online", "scratch"), ("lafs", "lafs-online")]
    found = (paired_difference(records, row, base) for row, base in pairs)
    return [c for c in found if c is not None]


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown(table: dict[str, dict[str, dict[str, Any]]], diffs: Sequence[dict[str, Any]]) -> str:
    """The results table and the paired differences as Markdown."""
    columns = [
        "row",
        "lfw-v1 acc % (folds×seeds)",
        "seed std",
        "TAR@FAR=1e-2 %",
        "AUC",
        "AT&T acc %",
        "Ext. Yale B acc %",
        "seeds",
    ]
    header = "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|\n"
    lines = []
    for row in [r for r in ROWS if r in table] + sorted(set(table) - set(ROWS)):
        sets = table[row]
        main = sets.get("lfw-v1")
        cells = [row]
        if main:
            cells += [
                _pct(main["acc_mean"], main["acc_std"]),
                f"{100 * main['seed_std']:.2f}",
                _pct(main["tar_mean"], main["tar_std"]),
                f"{main['auc_mean']:.4f}",
            ]
        else:
            cells += ["-"] * 4
        for name in ("att", "yaleb"):
            cells.append(_pct(sets[name]["acc_mean"], sets[name]["acc_std"]) if name in sets else "-")
        seeds = sorted({s for v in sets.values() for s in v["seeds"]})
        cells.append(",".join(map(str, seeds)))
        lines.append("| " + " | ".join(cells) + " |")
    text = header + "\n".join(lines) + "\n"
    if diffs:
        text += "\nPaired differences on lfw-v1 (same seed and fold; mean ± standard error, n = folds × seeds):\n\n"
        for d in diffs:
            text += (
                f"- {d['row']} − {d['baseline']}: {100 * d['diff']:+.2f} ± {100 * d['stderr']:.2f} points "
                f"(n = {d['n']})\n"
            )
    return text
