"""Learning curves of an lfw-v1 experiment: read from the run directories' JSONL files, averaged over seeds, drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.lfw_v1.curves import FINETUNE_ACC, PROBE_ACC, plot_curves, read_curves, running_mean


def _write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_running_mean_averages_the_last_window_values() -> None:
    np.testing.assert_allclose(running_mean(np.array([4.0, 2.0, 6.0, 0.0]), window=2), [4.0, 3.0, 4.0, 3.0])
    assert running_mean(np.array([])).size == 0


def test_curves_average_seeds_at_common_steps_and_keep_a_resumed_runs_last_value(tmp_path: Path) -> None:
    run = tmp_path / "finetune" / "scratch"
    _write(run / "seed0" / "validation.jsonl", [{"step": 10, FINETUNE_ACC: 0.6}, {"step": 20, FINETUNE_ACC: 0.7}])
    # seed 1 was interrupted after step 10 and resumed: its second record of step 10 is the one that counts
    _write(
        run / "seed1" / "validation.jsonl",
        [{"step": 10, FINETUNE_ACC: 0.5}, {"step": 10, FINETUNE_ACC: 0.64}, {"step": 20, FINETUNE_ACC: 0.74}],
    )
    _write(run / "seed0" / "history.jsonl", [{"step": s, "loss": 10.0 - s} for s in range(5)])
    _write(tmp_path / "pretrain" / "lafs" / "seed0" / "validation.jsonl", [{"step": 100, PROBE_ACC: 0.58}])
    curves = read_curves(tmp_path, "finetune", FINETUNE_ACC)
    assert sorted(curves.accuracy["scratch"]) == [0, 1]
    np.testing.assert_allclose(curves.loss["scratch"][0][1], running_mean(np.arange(10.0, 5.0, -1)))
    assert plot_curves(tmp_path) == tmp_path / "curves.png"
    summary = json.loads((tmp_path / "curves.json").read_text())
    assert summary["finetune"]["scratch"]["steps"] == [10, 20]
    assert summary["finetune"]["scratch"]["accuracy"] == pytest.approx([0.62, 0.72])
    assert summary["pretrain"]["lafs"] == {"steps": [100], "accuracy": [0.58], "seeds": 1}
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_runs_draw_nothing(tmp_path: Path) -> None:
    assert plot_curves(tmp_path) is None
    assert not (tmp_path / "curves.json").exists()
