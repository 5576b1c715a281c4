"""``make gpu-check``: one prepared run that proves the CUDA path inside a short GPU window, and stops itself.

Every phase runs the project's own command lines as subprocesses under a deadline; a phase that overruns is stopped
(SIGTERM, then SIGKILL, to its process group) and whatever it wrote is kept. Everything goes under ``--out``.

1. preflight (this process, no torch): the interpreter's packages, the ``lafs`` script, the datasets, the output
   folder; anything missing is listed and the run ends with exit status 2;
2. env: python/torch/CUDA versions, the device, the measured dense matmul peak (bf16 on CUDA); it also writes the
   randomly initialised landmark CNN that the precompute benchmark runs (its cost does not depend on the weights);
3. bench: the ``bench.run_all`` modules at this profile's sizes (JSON lines in ``bench/bench.jsonl``, targets from
   ``python -m bench.run_all --summarise``);
4. lfw-v1: ``python -m experiments.lfw_v1.run`` at the profile's budget, four rows, seed 0, with a ``--scale`` chosen
   from the step times measured in phase 3 so that the run fits its share of the time (:func:`plan_scale`);
5. summary: ``OUT/summary.json`` (one JSON line, also the last line printed) and ``OUT/summary.md``, with the
   projection of the paper's SSL schedule (:func:`project_paper`).

    python -m bench.gpu_check                  # CUDA: about 7.5 minutes, stops itself by 8 min 45 s
    python -m bench.gpu_check --device cpu     # the rehearsal: the same phases at tiny sizes, under a minute
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_MODULES = (
    "torch", "torchvision", "timm", "numpy", "PIL", "cv2", "webdataset", "pyarrow", "pydantic", "yaml", "typer",
    "rich", "mlflow", "matplotlib",
)  # fmt: skip
DATASETS = (
    "lfw_deepfunneled/lfw-deepfunneled",
    "lfw_deepfunneled/pairsDevTest.txt",
    "att_faces/att_faces",
    "extended_yale_b_cropped/CroppedYale",
)
RUN_VARIABLES = ("MLFLOW_RUN_ID", "LAFS_MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_NAME")  # not inherited

# The paper's SSL schedule: 41 epochs (method.md §7.6) over 1 M faces, base preset, 2 global + 8 local views.
PAPER_EPOCHS = 41
PAPER_FACES = 1_000_000

# lfw-v1 sizes of the protocol and costs the benchmarks do not measure (assumed; compare with the stage seconds
# that each run records and correct them after the first GPU run).
K_SHOT_IMAGES = 1812  # 453 identities x 4
POOL_IMAGES = 10_492  # LFW minus the pairsDevTest people
EVAL_IMAGES = 2000 + 400 + 2414  # per row: lfw-v1 (1,000 pairs), AT&T, Extended Yale B
EVAL_DECODE_S = 25.0  # decoding the three pair sets once (23 s on 2 CPU cores, smoke budget)
MLFLOW_STORE_S = 10.0  # the first stage creates the sqlite store (schema migrations)
SHARD_WORKERS = 2  # `lafs data shards` default; the lfw-v1 runner passes none
SUPERVISED_IMAGES_PER_S_PER_WORKER = 150.0  # fine-tuning augmentation in the loader workers (no benchmark yet)
TRAINER_OVERHEAD = 1.25  # trainer step (logging, schedules, loader hand-off) over the benchmark's bare step
SCALE_GRID = tuple(k / 1000 for k in range(1000, 9, -1))  # --scale candidates, largest first


@dataclass(frozen=True)
class BenchRun:
    """One benchmark module at one size; ``{cores}`` and ``{cnn}`` in the arguments are filled in at run time."""

    key: str
    module: str
    args: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True)
class Profile:
    """Sizes and deadlines of one device."""

    device: str
    budget: str  # lfw-v1 budget
    total_s: float  # the whole run stops by then
    env_s: float
    bench_s: float
    lfw_target_s: float  # what the lfw-v1 plan aims at; the phase may run on until total_s - reserve_s
    reserve_s: float  # kept for stopping a phase, rebuilding the table and writing the summary
    grace_s: float  # SIGTERM -> SIGKILL
    peak_size: int
    cnn_preset: str
    stage_extra_s: float  # a stage's start-up beyond importing torch: device init, MLflow run, model, loaders
    benches: tuple[BenchRun, ...]


PROFILES = {
    "cuda": Profile(
        "cuda", "gpu", 525, 60, 150, 300, 35, 20, 8192, "base", 10.0,
        (
            BenchRun(
                "mfu", "bench.bench_mfu", ("--gpu", "--presets", "small,base", "--batch", "128", "--iters", "10"), 90
            ),
            BenchRun(
                "data", "bench.bench_data",
                ("--images", "4000", "--preset", "base", "--workers", "{cores}", "--batch-size", "128",
                 "--loader-batches", "30", "--landmarks", "cnn:{cnn}"),
                60,
            ),
            BenchRun("ssl", "bench.bench_ssl", ("--preset", "base", "--batch", "64", "--min-seconds", "2"), 60),
            BenchRun(
                "eval", "bench.bench_eval",
                ("--images", "8192", "--batch-size", "512", "--presets", "small,base", "--device", "cuda"), 40,
            ),
            BenchRun(
                "models", "bench.bench_models", ("--tiny-batch", "256", "--base-batch", "128", "--iters", "10"), 40
            ),
        ),
    ),
    "cpu": Profile(
        "cpu", "smoke", 55, 15, 38, 5, 9, 2, 512, "tiny", 3.0,
        (
            BenchRun("mfu", "bench.bench_mfu", ("--presets", "tiny", "--batch", "4", "--iters", "1"), 22),
            BenchRun(
                "data", "bench.bench_data",
                ("--images", "32", "--preset", "tiny", "--workers", "{cores}", "--batch-size", "8",
                 "--loader-batches", "1", "--landmarks", "cnn:{cnn}"),
                16,
            ),
        ),
    ),
}  # fmt: skip


# --- running commands under deadlines ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one command ended: ``ok``, ``failed`` (exit status), ``stopped`` (deadline) or ``skipped`` (no time)."""

    status: str
    seconds: float = 0.0
    log: str | None = None


def run_logged(command: Sequence[str], log: Path, timeout_s: float, env: dict[str, str], grace_s: float) -> Outcome:
    """Run ``command`` in its own process group, output to ``log``; stop the whole group after ``timeout_s``."""
    if timeout_s < 1:
        return Outcome("skipped", log=str(log))
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(proc, grace_s)
            return Outcome("stopped", time.monotonic() - start, str(log))
        except BaseException:
            stop_group(proc, grace_s)
            raise
    return Outcome("ok" if code == 0 else "failed", time.monotonic() - start, str(log))


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the process group that ``proc`` leads (the stages checkpoint on it), SIGKILL after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects printed one per line in a log."""
    records = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def child_environment(out: Path) -> dict[str, str]:
    """This environment with MLflow, Prefect and torch homes under ``out`` and no inherited run ids."""
    from lafs_core.env import ARTIFACT_ROOT_VARIABLE, artifact_root, offline_environment

    env = {k: v for k, v in os.environ.items() if k not in RUN_VARIABLES}
    env.update(offline_environment(out))
    env[ARTIFACT_ROOT_VARIABLE] = artifact_root(out).as_uri()
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- preflight and environment ---------------------------------------------------------------------------------------


def preflight(out: Path) -> list[str]:
    """What this run needs and lacks: packages, the ``lafs`` script, datasets, a writable output folder."""
    from lafs_core.env import shared_datasets

    venv = ROOT / ".venv" / "bin" / "python"
    hint = "" if venv.exists() else f" (no project venv at {venv.parent.parent}: `make install` creates it)"
    missing = [name for name in REQUIRED_MODULES if not find_module(name)]
    problems = [f"{sys.executable} cannot import {', '.join(missing)}{hint}"] if missing else []
    if not Path(sys.executable).with_name("lafs").exists() and not shutil.which("lafs"):
        problems.append(f"the `lafs` console script is not installed beside {sys.executable} (pip install -e .)")
    root = shared_datasets()
    problems += [f"dataset missing: {root / rel} (set LAFS_SHARED)" for rel in DATASETS if not (root / rel).exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(out).free / 2**30
        if free < 2:
            problems.append(f"only {free:.1f} GiB free under {out} (needs 2)")
    except OSError as exc:
        problems.append(f"output folder {out} is not writable: {exc}")
    return problems


def find_module(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def env_report(cnn: Path, device: str, peak_size: int, cnn_preset: str) -> int:
    """Phase 2, run as a subprocess: versions, device, matmul peak, and the benchmark's landmark CNN."""
    import torch

    from bench.common import git_commit, matmul_peak_flops
    from lafs_core.config import StageConfig, load_config
    from lafs_core.models.build import build_face_model
    from lafs_core.models.checkpoint import save_model_checkpoint

    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name() if cuda else cpu_model(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "packages": {p: package_version(p) for p in ("torchvision", "timm", "numpy", "webdataset", "mlflow")},
        "commit": git_commit(),
    }
    if device == "cuda" and not cuda:
        report["error"] = "CUDA is not available to torch"
        print(json.dumps(report))
        return 3
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    report["peak_flops"] = matmul_peak_flops(size=peak_size, dtype=dtype, iters=50 if device == "cuda" else 5)
    report.update(peak_dtype=str(dtype).removeprefix("torch."), peak_size=peak_size)
    torch.manual_seed(0)
    model = build_face_model(load_config(StageConfig, preset=cnn_preset).model)
    cnn.parent.mkdir(parents=True, exist_ok=True)
    report["landmark_cnn"] = str(save_model_checkpoint(cnn, model, cnn_preset, "partfvit"))
    print(json.dumps(report))
    return 0


def cpu_model() -> str:
    """The CPU's model name."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or "cpu"


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- sizing the lfw-v1 run and projecting the paper's schedule -------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """What the lfw-v1 plan reads from the benchmark records (None: not measured, an assumption is used)."""

    ssl_s_per_image: float | None  # one SSL step (views + model + update) at the budget's preset, per image
    finetune_s_per_image: float | None  # one fine-tuning step at the budget's preset, per image
    online_factor: float | None  # lafs-online step time over the precomputed-landmark step
    loader_per_worker: float | None  # SSL loader images/s (decode + landmark views) per worker
    precompute_per_worker: float | None  # shard precompute images/s with the landmark CNN, per decode worker
    eval_images_per_s: float | None  # verification embedding with flip at the budget's preset


ASSUMED = Figures(None, None, 2.0, math.inf, 300.0, 500.0)  # used where a figure is missing


def figures_from(records: Sequence[dict[str, Any]], preset: str) -> Figures:
    """The plan's figures out of the benchmark JSON lines."""

    def first(bench: str, **match: Any) -> dict[str, Any]:
        found = (r for r in records if r.get("bench") == bench and all(r.get(k) == v for k, v in match.items()))
        return next(found, {})

    def per(record: dict[str, Any], value: str, count: str) -> float | None:
        return record[value] / record[count] if record.get(value) and record.get(count) else None

    ssl, fine = first("mfu", step="ssl_full", preset=preset), first("mfu", step="finetune", preset=preset)
    ratio = first("ssl_step").get("precomputed_over_online")
    return Figures(
        per(ssl, "step_s", "batch"),
        per(fine, "step_s", "batch"),
        ratio,
        per(first("shard_loader"), "samples_per_s_without_photometric", "workers"),
        per(first("precompute_vs_decode"), "precompute_images_per_s", "workers"),
        first("eval_embedding").get(f"{preset}_landmarks"),
    )


def scaled_budget(budget: dict[str, Any], scale: float) -> dict[str, Any]:
    """``Budget.scaled`` of experiments/lfw_v1/budgets.py: SSL steps and supervised epochs times ``scale``."""
    if scale == 1:
        return dict(budget)
    keys = ("pretrain_steps", "partfvit_epochs", "finetune_epochs")
    return {**budget, **{k: max(1, round(budget[k] * scale)) for k in keys}}


def lfw_seconds(
    budget: dict[str, Any], rows: Sequence[str], figures: Figures, stage_start_s: float
) -> dict[str, float]:
    """Predicted seconds of one lfw-v1 run of ``budget`` (already scaled), by term.

    fixed: a start-up per stage, the MLflow store, both shard precomputes, decoding and embedding the test sets;
    ssl: steps x batch x max(step, loader) per image x trainer overhead, lafs-online times its online factor;
    supervised: the Part fViT and every row's fine-tuning, steps x batch x max(step, augmenting loader) per image.
    """
    f = {k: v if v is not None else getattr(ASSUMED, k) for k, v in asdict(figures).items()}
    workers = budget["num_workers"]
    pretrained = [r for r in rows if r != "scratch"]
    ssl_images = K_SHOT_IMAGES if budget.get("ssl_images") == "kshot" else POOL_IMAGES
    stages = 1 + 2 + len(pretrained) + len(rows)  # k-shot shards, Part fViT, SSL shards, pretrain, fine-tune
    fixed = (
        stages * stage_start_s
        + MLFLOW_STORE_S
        + (K_SHOT_IMAGES + ssl_images) / (f["precompute_per_worker"] * SHARD_WORKERS)
        + EVAL_DECODE_S
        + len(rows) * EVAL_IMAGES / f["eval_images_per_s"]
    )
    ssl_image_s = max(f["ssl_s_per_image"] or math.inf, 1 / (f["loader_per_worker"] * workers))
    ssl_rows = sum(f["online_factor"] if r == "lafs-online" else 1.0 for r in pretrained)
    ssl = budget["pretrain_steps"] * budget["pretrain_batch"] * ssl_image_s * TRAINER_OVERHEAD * ssl_rows

    def steps(epochs: int, cap: int | None) -> int:
        count = epochs * max(1, K_SHOT_IMAGES // budget["finetune_batch"])
        return min(count, cap) if cap else count

    cap = budget.get("supervised_max_steps")
    sup_steps = steps(budget["partfvit_epochs"], budget.get("partfvit_max_steps") or cap)
    sup_steps += len(rows) * steps(budget["finetune_epochs"], cap)
    sup_image_s = max(f["finetune_s_per_image"] or math.inf, 1 / (SUPERVISED_IMAGES_PER_S_PER_WORKER * workers))
    supervised = sup_steps * budget["finetune_batch"] * sup_image_s * TRAINER_OVERHEAD
    return {"fixed": fixed, "ssl": ssl, "supervised": supervised, "total": fixed + ssl + supervised}


def plan_scale(
    budget: dict[str, Any], rows: Sequence[str], figures: Figures, target_s: float, stage_start_s: float
) -> dict[str, Any]:
    """The largest ``--scale`` (0.01-1) whose predicted run fits ``target_s``; the smallest if none does."""
    for scale in SCALE_GRID:
        terms = lfw_seconds(scaled_budget(budget, scale), rows, figures, stage_start_s)
        if terms["total"] <= target_s:
            break
    scaled = scaled_budget(budget, scale)
    assumed = [k for k, v in asdict(figures).items() if v is None]
    return {
        "scale": scale,
        "fits": terms["total"] <= target_s,
        "target_s": target_s,
        "predicted_s": {k: round(v, 1) if math.isfinite(v) else None for k, v in terms.items()},
        "pretrain_steps": scaled["pretrain_steps"],
        "partfvit_epochs": scaled["partfvit_epochs"],
        "finetune_epochs": scaled["finetune_epochs"],
        "stage_start_s": round(stage_start_s, 1),
        "figures": asdict(figures),
        "assumed": assumed,
    }


def project_paper(
    ssl_images_per_s: float, loader_images_per_s: float | None, precompute_images_per_s: float | None
) -> dict[str, Any]:
    """The paper's SSL schedule on this device: 41 x 1 M images at min(step rate, loader rate); precompute once."""
    images = PAPER_EPOCHS * PAPER_FACES
    rate = min(ssl_images_per_s, loader_images_per_s or math.inf)
    return {
        "images": images,
        "ssl_images_per_s": ssl_images_per_s,
        "loader_images_per_s": loader_images_per_s,
        "loader_keeps_up": None if loader_images_per_s is None else loader_images_per_s >= ssl_images_per_s,
        "hours": images / rate / 3600,
        "hours_if_loader_kept_up": images / ssl_images_per_s / 3600,
        "precompute_hours": PAPER_FACES / precompute_images_per_s / 3600 if precompute_images_per_s else None,
    }


# --- the phases ------------------------------------------------------------------------------------------------------


class Check:
    """One gpu-check run: the phases in order against one clock, results collected for the summary."""

    def __init__(self, profile: Profile, out: Path) -> None:
        self.profile = profile
        self.out = out
        self.start = time.monotonic()
        self.env = child_environment(out)
        self.phases: dict[str, Outcome] = {}
        self.summary: dict[str, Any] = {"check": "gpu-check", "device": profile.device, "out": str(out)}

    def left(self) -> float:
        """Seconds until the run's deadline."""
        return self.profile.total_s - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        """A progress line with the elapsed time."""
        print(f"[{time.monotonic() - self.start:6.1f} s] {text}", flush=True)

    def run(self, name: str, command: Sequence[str], timeout_s: float, keep_s: float | None = None) -> Outcome:
        """One command under ``min(timeout_s, time left - keep_s)`` (default: the reserve), logged to ``logs/``."""
        budget = min(timeout_s, self.left() - (self.profile.reserve_s if keep_s is None else keep_s))
        self.say(f"{name}: {' '.join(command)} (limit {max(budget, 0):.0f} s)")
        outcome = run_logged(command, self.out / "logs" / f"{name}.log", budget, self.env, self.profile.grace_s)
        self.say(f"{name}: {outcome.status} in {outcome.seconds:.1f} s")
        return outcome

    def environment(self) -> bool:
        """Phase 2; False when the device is unusable."""
        cnn = self.out / "bench" / "landmark_cnn.pt"
        p = self.profile
        command = [sys.executable, "-m", "bench.gpu_check", "env", "--device", p.device, "--cnn", str(cnn)]
        command += ["--peak-size", str(p.peak_size), "--cnn-preset", p.cnn_preset]
        outcome = self.phases["env"] = self.run("env", command, p.env_s)
        report = next(iter(json_lines(self.out / "logs" / "env.log")), {})
        self.summary["env"] = report
        (self.out / "env.json").write_text(json.dumps(report, indent=2) + "\n")
        return outcome.status == "ok"

    def bench(self) -> list[dict[str, Any]]:
        """Phase 3: each benchmark under its own limit within the phase's; the records of all of them."""
        start = time.monotonic()
        deadline = start + self.profile.bench_s
        fill = {"cores": str(os.cpu_count() or 1), "cnn": str(self.out / "bench" / "landmark_cnn.pt")}
        records: list[dict[str, Any]] = []
        statuses = {}
        for spec in self.profile.benches:
            args = [a.format(**fill) for a in spec.args]
            limit = min(spec.timeout_s, deadline - time.monotonic())
            outcome = self.run(f"bench-{spec.key}", [sys.executable, "-m", spec.module, *args], limit)
            statuses[spec.key] = outcome.status
            records += [r for r in json_lines(Path(outcome.log or "")) if "bench" in r]
        jsonl = self.out / "bench" / "bench.jsonl"
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
        targets = self.run("bench-targets", [sys.executable, "-m", "bench.run_all", "--summarise", str(jsonl)], 30)
        table = Path(targets.log or "").read_text().split("\n", 1)[-1].strip() if targets.status == "ok" else ""
        failed = [k for k, s in statuses.items() if s == "failed"]
        status = "failed" if failed else "stopped" if any(s != "ok" for s in statuses.values()) else "ok"
        self.phases["bench"] = Outcome(status, time.monotonic() - start)
        self.summary["bench"] = {"statuses": statuses, "records": len(records), "targets": table}
        return records

    def lfw(self, records: list[dict[str, Any]]) -> None:
        """Phase 4: read the budget, size it from the measured step times, run it, keep what it wrote."""
        p = self.profile
        lfw_out = self.out / "lfw-v1"
        base = [sys.executable, "-m", "experiments.lfw_v1.run", "--budget", p.budget, "--seeds", "0"]
        with tempfile.TemporaryDirectory() as probe_dir:
            probe = self.run("lfw-budget", [*base, "--out", probe_dir, "--table-only"], 60)
            probed = Path(probe_dir) / "results.json"
            described = json.loads(probed.read_text()) if probed.exists() else None
        if described is None:
            status = "failed" if probe.status == "ok" else probe.status
            self.phases["lfw-v1"] = Outcome(status, probe.seconds, probe.log)
            return
        budget, rows = described["budget"], described["rows"]
        target = min(p.lfw_target_s, self.left() - p.reserve_s)
        plan = plan_scale(
            budget, rows, figures_from(records, budget["preset"]), target, probe.seconds + p.stage_extra_s
        )
        self.say(f"lfw-v1 plan: scale {plan['scale']}, predicted {plan['predicted_s']['total']} s")
        args = [*base, "--scale", str(plan["scale"]), "--out", str(lfw_out)]
        outcome = self.run("lfw-v1", args, self.left() - p.reserve_s)
        if outcome.status != "ok":
            self.run("lfw-v1-table", [*args, "--table-only"], 60, keep_s=2)
        results = lfw_out / "results.json"
        done = json.loads(results.read_text()) if results.exists() else {}
        self.phases["lfw-v1"] = outcome
        self.summary["lfw_v1"] = {
            "command": " ".join(args),
            "plan": plan,
            "budget": done.get("budget"),
            "stage_seconds": {k: round(v, 1) for k, v in done.get("stage_seconds", {}).items()},
            "table_md": (lfw_out / "results.md").read_text() if (lfw_out / "results.md").exists() else "",
        }

    def finish(self, records: list[dict[str, Any]], problems: Sequence[str] = ()) -> int:
        """Phase 5: the summary as one JSON line (written, printed last) and as Markdown; the exit status."""
        statuses = {name: o.status for name, o in self.phases.items()}
        failed = problems or any(s == "failed" for s in statuses.values())
        status = "failed" if failed else "ok" if all(s == "ok" for s in statuses.values()) else "partial"
        self.summary.update(
            status=status,
            problems=list(problems),
            phases={name: {"status": o.status, "seconds": round(o.seconds, 1)} for name, o in self.phases.items()},
            wall_s=round(time.monotonic() - self.start, 1),
            limit_s=self.profile.total_s,
            figures=key_figures(records),
            projection=projection(records),
        )
        line = json.dumps(self.summary)
        (self.out / "summary.json").write_text(line + "\n")
        (self.out / "summary.json").with_suffix(".md").write_text(markdown(self.summary))
        print(line, flush=True)
        return 2 if problems else 1 if failed else 0


def key_figures(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The absolute figures the issue asks for, from the benchmark records."""
    steps = [
        {k: r.get(k) for k in ("step", "preset", "batch", "dtype", "images_per_s", "step_s", "mfu", "peak_flops")}
        for r in records
        if r.get("bench") == "mfu"
    ]
    by_bench = {r["bench"]: r for r in records if r.get("bench") != "mfu"}
    loader, pre = by_bench.get("shard_loader", {}), by_bench.get("precompute_vs_decode", {})
    return {
        "steps": steps,
        "loader": {k: loader.get(k) for k in ("workers", "views", "batch_size", "samples_per_s_without_photometric")},
        "precompute": {
            k: pre.get(k) for k in ("workers", "landmarks", "precompute_images_per_s", "decode_images_per_s")
        },
        "ssl_ratios": {k: v for k, v in by_bench.get("ssl_step", {}).items() if k.endswith(("_online", "_reference"))},
        "eval_embedding": {k: v for k, v in by_bench.get("eval_embedding", {}).items() if k.endswith("_landmarks")},
    }


def projection(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The paper's schedule from the largest preset measured (base on the GPU) and this machine's data path."""
    ssl = {r["preset"]: r for r in records if r.get("bench") == "mfu" and r.get("step") == "ssl_full"}
    preset = next((p for p in ("base", "small", "tiny") if p in ssl), None)
    if preset is None:
        return None
    loader = next((r for r in records if r.get("bench") == "shard_loader"), {})
    pre = next((r for r in records if r.get("bench") == "precompute_vs_decode"), {})
    result = project_paper(
        ssl[preset]["images_per_s"], loader.get("samples_per_s_without_photometric"), pre.get("precompute_images_per_s")
    )
    return {"preset": preset, "batch": ssl[preset].get("batch"), **result}


def markdown(summary: dict[str, Any]) -> str:
    """The Markdown summary: phases, environment, throughput, the lfw-v1 table and the projection."""
    env = summary.get("env", {})
    lines = [
        f"# gpu-check ({summary['device']}): {summary['status']}",
        "",
        f"Wall {summary['wall_s']} s of {summary['limit_s']} s; commit {env.get('commit', '?')}; "
        f"out `{summary['out']}`.",
        *[f"- problem: {p}" for p in summary["problems"]],
        "",
        "| phase | status | seconds |",
        "|---|---|---|",
        *[f"| {n} | {p['status']} | {p['seconds']} |" for n, p in summary["phases"].items()],
        "",
        "## Environment",
        "",
        f"python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}), "
        f"device {env.get('device')}, {env.get('cpu_count')} CPU cores; measured {env.get('peak_dtype')} matmul peak "
        f"{(env.get('peak_flops') or 0) / 1e12:.3f} TFLOP/s ({env.get('peak_size')}^3).",
        "",
        "## Throughput",
        "",
        "| step | preset | batch | dtype | images/s | step ms | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    figures = summary["figures"]
    for s in figures["steps"]:
        lines.append(
            f"| {s['step']} | {s['preset']} | {s['batch']} | {s['dtype']} | {s['images_per_s']:.1f} | "
            f"{1e3 * s['step_s']:.1f} | {100 * s['mfu']:.1f} % |"
        )
    loader, pre = figures["loader"], figures["precompute"]
    lines += [
        "",
        f"- SSL loader ({loader['views']} views, {loader['workers']} workers): "
        f"{loader['samples_per_s_without_photometric']} images/s",
        f"- precompute ({pre['landmarks']}, {pre['workers']} workers): {pre['precompute_images_per_s']} images/s "
        f"(decode only {pre['decode_images_per_s']})",
        f"- SSL step ratios: {figures['ssl_ratios'] or '-'}",
        f"- eval embedding images/s (with flip): {figures['eval_embedding'] or '-'}",
        "",
        "```",
        summary.get("bench", {}).get("targets") or "(no target table)",
        "```",
        "",
    ]
    lfw = summary.get("lfw_v1")
    if lfw:
        plan = lfw["plan"]
        lines += [
            "## lfw-v1",
            "",
            f"`{lfw['command']}`: scale {plan['scale']} (SSL {plan['pretrain_steps']} steps, fine-tuning "
            f"{plan['finetune_epochs']} epochs), predicted {plan['predicted_s']} s for a {plan['target_s']:.0f} s "
            f"target; assumed figures: {plan['assumed'] or 'none'}; stage seconds: {lfw['stage_seconds']}",
            "",
            lfw["table_md"] or "(no table)",
            "",
        ]
    proj = summary.get("projection")
    if proj:
        lines += [
            "## Projection: the paper's SSL schedule",
            "",
            f"{PAPER_EPOCHS} epochs x {PAPER_FACES:,} faces = {proj['images']:,} images at min(step "
            f"{proj['ssl_images_per_s']:.1f}, loader {proj['loader_images_per_s']}) images/s (preset {proj['preset']}, "
            f"batch {proj['batch']}, 2 + 8 views): {proj['hours']:.1f} h; loader keeps up: {proj['loader_keeps_up']}; "
            f"precomputing the landmarks of 1 M faces: {proj['precompute_hours'] or 0:.2f} h."
            + ("" if proj["preset"] == "base" else " Not the base preset: the structure of the figure only."),
            "",
        ]
    return "\n".join(lines)


def run_check(profile: Profile, out: Path) -> int:
    """All phases; exit status 0 (done, or stopped at a deadline), 1 (a phase failed), 2 (missing or interrupted)."""
    out.mkdir(parents=True, exist_ok=True)
    check = Check(profile, out)
    problems = preflight(out)
    for problem in problems:
        check.say(f"preflight: {problem}")
    if problems:
        return check.finish([], problems)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SystemExit stops the running phase's group
    records: list[dict[str, Any]] = []
    try:
        if not check.environment():
            error = check.summary["env"].get("error") or f"env phase {check.phases['env'].status}"
            return check.finish([], [error])
        records = check.bench()
        check.lfw(records)
    except (KeyboardInterrupt, SystemExit):
        return check.finish(records, ["interrupted"])
    return check.finish(records)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The check's options (``env`` as the first argument: the internal environment phase)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if argv[:1] == ["env"]:
        parser.add_argument("phase")
        parser.add_argument("--device", choices=sorted(PROFILES), required=True)
        parser.add_argument("--cnn", type=Path, required=True, help="landmark CNN checkpoint to write")
        parser.add_argument("--peak-size", type=int, required=True)
        parser.add_argument("--cnn-preset", required=True)
        return parser.parse_args(argv)
    parser.add_argument("--device", choices=sorted(PROFILES), default="cuda", help="cuda, or cpu for the rehearsal")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="everything is written here")
    parser.add_argument("--total-s", type=float, default=None, help="stop everything by then (profile default)")
    parser.add_argument("--lfw-target-s", type=float, default=None, help="what the lfw-v1 run is sized to")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "phase", None) == "env":
        return env_report(args.cnn, args.device, args.peak_size, args.cnn_preset)
    profile = PROFILES[args.device]
    if args.total_s is not None:
        profile = replace(profile, total_s=args.total_s)
    if args.lfw_target_s is not None:
        profile = replace(profile, lfw_target_s=args.lfw_target_s)
    return run_check(profile, args.out.resolve())


if __name__ == "__main__":
    sys.exit(main())
