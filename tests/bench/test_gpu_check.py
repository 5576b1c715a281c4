"""make gpu-check: the CPU rehearsal of every phase end to end, the preflight, the lfw-v1 sizing and the projection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.gpu_check import (
    PAPER_EPOCHS,
    PAPER_FACES,
    SCALE_GRID,
    figures_from,
    key_figures,
    lfw_seconds,
    markdown,
    plan_scale,
    project_paper,
    projection,
    scaled_budget,
)

ROOT = Path(__file__).resolve().parents[2]

# The `gpu` budget as `python -m experiments.lfw_v1.run --budget gpu --table-only` describes it in results.json.
GPU_BUDGET = {
    "name": "gpu", "preset": "small", "pretrain_steps": 2500, "pretrain_epochs": 30, "pretrain_batch": 128,
    "local_views": 8, "partfvit_epochs": 34, "finetune_epochs": 34, "finetune_batch": 128, "micro_batch": 128,
    "lr": 0.002, "eval_batch": 512, "num_workers": 6, "supervised_max_steps": None, "partfvit_max_steps": None,
    "ssl_images": "pool",
}  # fmt: skip
ROWS = ["scratch", "lafs", "dino-grid", "lafs-online"]


def records(ssl_step_s: float) -> list[dict]:
    """Benchmark JSON lines as the bench modules print them (only the fields the check reads)."""
    mfu = {"bench": "mfu", "batch": 128, "dtype": "bf16", "peak_flops": 7.9e14}
    small_ssl = {"step_s": ssl_step_s, "images_per_s": 128 / ssl_step_s, "mfu": 0.3}
    return [
        {"bench": "matmul_peak", "peak_flops": 7.9e14},
        {**mfu, "step": "finetune", "preset": "small", "step_s": 0.02, "images_per_s": 6400.0, "mfu": 0.09},
        {**mfu, "step": "ssl_full", "preset": "small", **small_ssl},
        {**mfu, "step": "ssl_full", "preset": "base", "step_s": 0.16, "images_per_s": 800.0, "mfu": 0.33},
        {"bench": "ssl_step", "precomputed_over_online": 2.5, "precomputed_over_reference": 6.0},
        {"bench": "shard_loader", "workers": 16, "views": 10, "samples_per_s_without_photometric": 24000.0},
        {"bench": "precompute_vs_decode", "workers": 16, "landmarks": "cnn:x.pt", "precompute_images_per_s": 8000.0},
        {"bench": "eval_embedding", "small_landmarks": 5000.0, "base_landmarks": 1500.0},
    ]  # fmt: skip


def test_rehearsal_runs_every_phase_on_cpu_within_a_minute(tmp_path: Path, shared_datasets: Path) -> None:
    out = tmp_path / "gpu-check"
    command = ["make", "-s", "gpu-check", "DEVICE=cpu", f"OUT={out}", f"SHARED={shared_datasets.parent}"]
    start = time.monotonic()
    proc = subprocess.run(
        [*command, f"GPU_PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert wall < 60, f"rehearsal took {wall:.1f} s"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["status"] in ("ok", "partial") and summary["problems"] == []
    assert summary["wall_s"] <= summary["limit_s"] + 1
    phases = summary["phases"]
    assert list(phases) == ["env", "bench", "lfw-v1"] and phases["env"]["status"] == "ok"
    assert all(p["status"] in ("ok", "stopped") for p in phases.values()), phases

    env = summary["env"]
    assert env["torch"] == torch.__version__ and env["cpu_count"] == os.cpu_count() and env["peak_flops"] > 0
    assert env["peak_dtype"] == "float32" and Path(env["landmark_cnn"]).is_file()

    bench = summary["bench"]
    assert set(bench["statuses"]) == {"mfu", "data"} and "precompute vs decode-only" in bench["targets"]
    saved = [json.loads(x) for x in (out / "bench" / "bench.jsonl").read_text().splitlines()]
    assert len(saved) == bench["records"]
    if bench["statuses"]["mfu"] == "ok":
        steps = {(s["step"], s["preset"]): s for s in summary["figures"]["steps"]}
        assert set(steps) == {("finetune", "tiny"), ("ssl_model", "tiny"), ("ssl_full", "tiny")}
        assert all(s["images_per_s"] > 0 and 0 < s["mfu"] < 1.5 for s in steps.values())
        assert summary["projection"]["preset"] == "tiny" and summary["projection"]["hours"] > 0
    if bench["statuses"]["data"] == "ok":
        assert summary["figures"]["precompute"]["landmarks"] == f"cnn:{env['landmark_cnn']}"
        assert summary["figures"]["loader"]["samples_per_s_without_photometric"] > 0

    lfw = summary["lfw_v1"]
    assert "--budget smoke --seeds 0 --scale" in lfw["command"] and 0 < lfw["plan"]["scale"] <= 1
    assert lfw["table_md"].startswith("# lfw-v1 results (smoke budget, preset tiny)")
    assert (out / "lfw-v1" / "results.md").read_text() == lfw["table_md"]
    assert (out / "lfw-v1" / "logs").is_dir() and (out / "logs" / "lfw-v1.log").is_file()
    text = (out / "summary.json").with_suffix(".md").read_text()
    assert text.startswith(f"# gpu-check (cpu): {summary['status']}") and "## lfw-v1" in text


def test_preflight_names_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "check"
    env = {**os.environ, "LAFS_SHARED": str(tmp_path / "nowhere")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["phases"] == {}
    assert any("lfw_deepfunneled/pairsDevTest.txt" in p for p in summary["problems"])
    assert "- problem: dataset missing" in (out / "summary.json").with_suffix(".md").read_text()


def test_lfw_plan_takes_the_largest_scale_that_fits() -> None:
    fast = figures_from(records(ssl_step_s=0.03), "small")
    assert fast.ssl_s_per_image == pytest.approx(0.03 / 128) and fast.online_factor == 2.5
    assert fast.loader_per_worker == 1500 and fast.precompute_per_worker == 500 and fast.eval_images_per_s == 5000
    plan = plan_scale(GPU_BUDGET, ROWS, fast, 300, stage_start_s=13)
    assert plan["fits"] and plan["predicted_s"]["total"] <= 300 and plan["assumed"] == []
    bigger = SCALE_GRID[SCALE_GRID.index(plan["scale"]) - 1]
    assert lfw_seconds(scaled_budget(GPU_BUDGET, bigger), ROWS, fast, 13)["total"] > 300
    assert plan["pretrain_steps"] == round(2500 * plan["scale"])

    slow = plan_scale(GPU_BUDGET, ROWS, figures_from(records(ssl_step_s=0.3), "small"), 300, stage_start_s=13)
    assert slow["scale"] < plan["scale"] and slow["pretrain_steps"] < plan["pretrain_steps"]
    assert plan_scale(GPU_BUDGET, ROWS, fast, 1e6, 13)["scale"] == 1.0

    unmeasured = plan_scale(GPU_BUDGET, ROWS, figures_from([], "small"), 300, stage_start_s=13)
    assert unmeasured["scale"] == SCALE_GRID[-1] and not unmeasured["fits"]
    assert unmeasured["predicted_s"]["total"] is None and "ssl_s_per_image" in unmeasured["assumed"]


def test_projection_of_the_paper_schedule_and_the_summary() -> None:
    images = PAPER_EPOCHS * PAPER_FACES
    kept_up = project_paper(800.0, 24000.0, 8000.0)
    assert kept_up["loader_keeps_up"] and kept_up["hours"] == pytest.approx(images / 800 / 3600)
    assert kept_up["precompute_hours"] == pytest.approx(PAPER_FACES / 8000 / 3600)
    starved = project_paper(800.0, 500.0, None)
    assert not starved["loader_keeps_up"] and starved["hours"] == pytest.approx(images / 500 / 3600)
    assert starved["hours_if_loader_kept_up"] == kept_up["hours"] and starved["precompute_hours"] is None

    lines = records(ssl_step_s=0.03)
    proj = projection(lines)
    assert proj is not None and proj["preset"] == "base" and proj["ssl_images_per_s"] == 800.0
    summary = {
        "device": "cuda", "status": "ok", "out": "runs/gpu-check", "wall_s": 450.0, "limit_s": 525, "problems": [],
        "phases": {"env": {"status": "ok", "seconds": 9.0}}, "env": {"peak_flops": 7.9e14, "peak_dtype": "bfloat16"},
        "figures": key_figures(lines), "projection": proj,
    }  # fmt: skip
    text = markdown(summary)
    assert "| ssl_full | base | 128 | bf16 | 800.0 | 160.0 | 33.0 % |" in text
    assert "790.000 TFLOP/s" in text and f"{images / 800 / 3600:.1f} h; loader keeps up: True" in text
