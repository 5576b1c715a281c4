"""The lfw-v1 comparison (protocols.md 1 and 2) in one command, resumable stage by stage.

    python -m experiments.lfw_v1.run --budget cpu-full --seeds 0,1,2 [--out DIR] [--scale 1.0]

The chain is the pipeline's (:class:`flows.chain.Chain` of the ``lfw-v1`` configuration, the one the pipeline flow
runs), with this experiment's budget as stage overrides and four rows instead of one. Every stage is a ``lafs``
command run as a subprocess (its log in ``DIR/logs``; a finished stage is skipped on rerun):

1. the k-shot list: k=4 images of every pool person (pool = LFW minus the people of pairsDevTest.txt);
2. ``lafs data shards`` of the k-shot set (grid landmarks; the supervised stages predict their own);
3. ``lafs partfvit`` on the k-shot set only: the landmark CNN of the LAFS rows (strict few-shot, no label leakage,
   method.md 9); also the landmark-CNN initialisation of every row's fine-tuning, so rows differ only in the ViT;
4. ``lafs data shards`` of the SSL images with that landmark CNN's precomputed landmarks: the unlabelled pool
   (10,492 images) or, in short budgets, the k-shot images only (their labels unused);
5. per seed: ``lafs pretrain`` for dino-grid, lafs (precomputed landmarks) and lafs-online (the landmark CNN on
   every view), then ``lafs finetune`` of all four rows (scratch: random ViT) with the same budget;
6. each fine-tuned ``last.pt`` is verified on the View-1 test pairs as soon as it exists, then all of them on AT&T
   and Extended Yale B (balanced generated pairs, seed 0), beside the classical floors (raw pixels, LBP) on the same
   pairs; the table is rewritten after every evaluation: ``DIR/results.json`` and ``DIR/results.md``.

No stage looks at the test pairs: the SSL probe and the fine-tuning learning curve use the validation pairs
(``lfw-v1-val``, protocols.md 1.5), and the last checkpoint is evaluated.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from experiments.lfw_v1.budgets import BUDGETS, Budget
from experiments.lfw_v1.curves import plot_curves
from experiments.lfw_v1.table import ROWS, SETS, Record, comparisons, markdown, summarise
from flows.chain import Chain, configuration, evaluate_checkpoint, load_eval_pairs
from flows.params import EvalSetParams, ShardsParams, StageParams
from lafs_core.env import configure_offline_env
from lafs_core.errors import LafsError

log = logging.getLogger("lfw_v1")

DATA_SEED = 0
KSHOT_IMAGES = 1812  # the lfw-v1 4-shot set (protocols.md 1.1): sets the fine-tuning validation interval
RUN_ORDER = ("scratch", "lafs", "dino-grid", "lafs-online")  # cheapest and headline rows first
PRETRAINED = {"dino-grid": ("method=dino-grid",), "lafs": ("method=lafs",), "lafs-online": ("method=lafs",)}


def lafs_executable() -> list[str]:
    """The ``lafs`` console script of this interpreter's environment."""
    beside = Path(sys.executable).with_name("lafs")
    found = str(beside) if beside.exists() else shutil.which("lafs")
    if not found:
        raise LafsError("the `lafs` console script is not installed (pip install -e .)")
    return [found]


def git_commit() -> str:
    """Commit of the checkout (with ``+dirty`` when tracked files changed)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """CPU model, cores and software versions for the results."""
    import torch

    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


class Stages:
    """Runs ``lafs`` commands once each, logging to files and recording command, time and outputs."""

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        self.out = out
        self.env = env
        self.done_dir = out / "stages"
        self.log_dir = out / "logs"
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.lafs = lafs_executable()

    def record(self, name: str) -> dict[str, Any] | None:
        """The record of a finished stage, if any."""
        path = self.done_dir / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def run(self, name: str, arguments: Sequence[str], outputs: Sequence[Path]) -> dict[str, Any]:
        """Run ``lafs <arguments>`` unless a previous run finished it and its ``outputs`` exist; the stage record."""
        command = [*self.lafs, *arguments]
        done = self.record(name)
        if done is not None and all(Path(p).exists() for p in outputs):
            log.info("%s: done earlier (%.0f s)", name, done["seconds"])
            return done
        log_path = self.log_dir / f"{name}.log"
        log.info("%s: %s", name, " ".join(command))
        start = time.time()
        with log_path.open("w") as handle:
            handle.write("$ " + " ".join(command) + "\n")
            handle.flush()
            proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=self.env, check=False)
        seconds = time.time() - start
        missing = [str(p) for p in outputs if not Path(p).exists()]
        if proc.returncode != 0 or missing:
            tail = "\n".join(log_path.read_text().splitlines()[-15:])
            raise LafsError(
                f"stage {name} failed (exit {proc.returncode}, missing {missing or 'nothing'}); log {log_path}:\n{tail}"
            )
        record = {"name": name, "command": list(command), "seconds": seconds, "finished": time.time()}
        tmp = self.done_dir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.done_dir / f"{name}.json")
        log.info("%s: finished in %.0f s", name, seconds)
        return record


def budget_chain(out: Path, budget: Budget) -> Chain:
    """The lfw-v1 configuration of the pipeline chain with this budget's stage overrides, writing under ``out``."""
    params = configuration(
        "lfw-v1",
        work_dir=str(out),
        preset=budget.preset,
        seed=DATA_SEED,
        pretrain_on="labelled" if budget.ssl_images == "kshot" else "unlabelled",
        partfvit_overrides=budget.partfvit_overrides(),
        pretrain_overrides=budget.pretrain_overrides(),
        finetune_overrides=budget.finetune_overrides(KSHOT_IMAGES),
        eval_sets=[{"data": name} for name in SETS],
    )
    return Chain.of(params)


class Experiment:
    """The lfw-v1 stages for one budget and seed list, writing into ``out``."""

    def __init__(self, out: Path, budget: Budget, seeds: Sequence[int], rows: Sequence[str]) -> None:
        self.out = out
        self.budget = budget
        self.seeds = list(seeds)
        self.rows = list(rows)
        env = dict(os.environ)
        env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out.resolve() / 'mlflow.db'}")
        env.setdefault("MLFLOW_EXPERIMENT_NAME", f"lfw-v1-{budget.name}")
        env["PYTHONUNBUFFERED"] = "1"
        self.stages = Stages(out, env)
        self.chain = budget_chain(out, budget)
        self.eval_sets = {spec.data: spec for spec in self.chain.params.eval_sets}
        self.pair_sets: dict[str, Any] = {}
        self.records: list[Record] = []

    def _shards(self, params: ShardsParams) -> str:
        self.stages.run(params.name, params.command(), [Path(params.out_dir) / "_info.json"])
        return params.out_dir

    def _train(self, name: str, params: StageParams, product: str) -> Path:
        self.stages.run(name, params.command(), [Path(params.out_dir) / product])  # type: ignore[attr-defined]
        return Path(params.out_dir) / product

    # --- data and the landmark model ---------------------------------------------------------------------------

    def prepare(self) -> tuple[str, str | None, str]:
        """k-shot list and shards, the k-shot Part fViT, the SSL shards with its landmarks: (k-shot shards,
        landmark CNN, SSL shards)."""
        subsets = self.chain.write_subsets()
        kshot = self._shards(self.chain.kshot_shards(subsets))
        landmark_stage = self.chain.landmark_stage(kshot)
        self._train("partfvit", landmark_stage, "landmark_cnn.pt")
        landmark_cnn = self.chain.landmark_model(landmark_stage.out_dir)
        pool = self._shards(self.chain.pool_shards(subsets, landmark_cnn))
        return kshot, landmark_cnn, pool

    # --- one row -----------------------------------------------------------------------------------------------

    def pretrain(self, row: str, seed: int, pool: str, landmark_cnn: str | None) -> Path:
        """SSL pretraining of ``row`` on the pool; returns the exported teacher."""
        extra = [f"seed={seed}", *PRETRAINED[row]]
        if row == "lafs-online":
            extra += ["landmarks=online", f"landmark_checkpoint={landmark_cnn}"]
        run_dir = str(self.out / "pretrain" / row / f"seed{seed}")
        return self._train(f"pretrain-{row}-seed{seed}", self.chain.pretrain(pool, run_dir, tuple(extra)), "teacher.pt")

    def finetune(self, row: str, seed: int, kshot: str, teacher: Path | None, landmark_cnn: str | None) -> Path:
        """Few-shot CosFace fine-tuning of ``row`` on the k-shot shards; returns ``last.pt``."""
        run_dir = str(self.out / "finetune" / row / f"seed{seed}")
        params = self.chain.finetune(kshot, str(teacher) if teacher else None, landmark_cnn, run_dir, (f"seed={seed}",))
        return self._train(f"finetune-{row}-seed{seed}", params, "last.pt")

    def evaluate(self, row: str, seed: int, checkpoint: Path, sets: Sequence[str] = SETS) -> None:
        """Score ``checkpoint`` on ``sets`` (reports kept as JSON; pair sets decoded once) and rewrite the results."""
        out_dir = self.out / "eval" / row / f"seed{seed}"
        for name in sets:
            if (out_dir / f"{name}.json").exists():
                continue
            spec: EvalSetParams = self.eval_sets[name]
            pairs = self.pair_set(name)
            start = time.time()
            metrics, _ = evaluate_checkpoint(str(checkpoint), spec, out_dir, self.budget.eval_batch, pairs)
            log.info("%s %s: accuracy %.4f (%.0f s)", checkpoint, name, metrics[f"{name}/acc"], time.time() - start)
        self.write_results()

    def pair_set(self, name: str) -> Any:
        """The evaluation pair set ``name``, decoded once."""
        if name not in self.pair_sets:
            self.pair_sets[name] = load_eval_pairs(self.eval_sets[name]).cached()
        return self.pair_sets[name]

    def evaluate_floors(self) -> None:
        """The classical floors (raw pixels, LBP) on every evaluation set, as rows of the table (no seed: fixed
        descriptors, recorded as seed 0)."""
        from experiments.baselines.classical import DESCRIPTORS, classical_report

        for kind in DESCRIPTORS:
            out_dir = self.out / "eval" / kind / "seed0"
            for name in SETS:
                path = out_dir / f"{name}.json"
                if not path.exists():
                    report = {**classical_report(self.pair_set(name), kind), "set": name}
                    out_dir.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(report, indent=2) + "\n")
        self.write_results()

    # --- the whole experiment ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Every stage in order; lfw-v1 right after each row, the cross-dataset checks once all rows are done."""
        kshot, landmark_cnn, pool = self.prepare()
        self.evaluate_floors()
        finished = []
        for seed in self.seeds:
            for row in self.rows:
                teacher = self.pretrain(row, seed, pool, landmark_cnn) if row in PRETRAINED else None
                checkpoint = self.finetune(row, seed, kshot, teacher, landmark_cnn)
                self.evaluate(row, seed, checkpoint, SETS[:1])
                finished.append((row, seed, checkpoint))
        for row, seed, checkpoint in finished:
            self.evaluate(row, seed, checkpoint, SETS[1:])
        return self.write_results()

    def read_records(self) -> list[Record]:
        """Every evaluation report on disk (``eval/<row>/seed<S>/<set>.json``), whichever process wrote it."""
        records = []
        for path in sorted((self.out / "eval").glob("*/seed*/*.json")):
            row, seed = path.parent.parent.name, int(path.parent.name.removeprefix("seed"))
            records.append(Record.from_report(row, seed, json.loads(path.read_text())))
        return records

    def write_results(self) -> dict[str, Any]:
        """``results.json`` (everything) and ``results.md`` (the table), written atomically; ``curves.png`` and
        ``curves.json`` (validation-pair learning curves, :mod:`experiments.lfw_v1.curves`)."""
        self.records = self.read_records()
        table = summarise(self.records)
        diffs = comparisons(self.records)
        stages = {p.stem: json.loads(p.read_text()) for p in sorted(self.stages.done_dir.glob("*.json"))}
        results = {
            "protocol": "lfw-v1 (protocols.md 1-2)",
            "budget": asdict(self.budget),
            "seeds": self.seeds,
            "rows": self.rows,
            "commit": git_commit(),
            "machine": machine(),
            "table": table,
            "comparisons": diffs,
            "records": [asdict(r) for r in self.records],
            "stage_seconds": {name: stage["seconds"] for name, stage in stages.items()},
            "commands": {name: " ".join(stage["command"]) for name, stage in stages.items()},
        }
        text = f"# lfw-v1 results ({self.budget.name} budget, preset {self.budget.preset})\n\n" + markdown(table, diffs)
        for name, content in (("results.json", json.dumps(results, indent=2) + "\n"), ("results.md", text)):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(content)
            tmp.replace(self.out / name)
        plot_curves(self.out)
        return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m experiments.lfw_v1.run", description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu-full", help="compute budget (budgets.py)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply SSL steps and supervised epochs")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--rows", default=",".join(RUN_ORDER), help="comma-separated rows, run in this order")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/lfw_v1/<budget>)")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the results from the reports on disk")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment; user errors print one line and exit 2."""
    args = parse_args(argv)
    configure_offline_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        print(f"error: unknown rows {unknown}; choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    budget = BUDGETS[args.budget].scaled(args.scale)
    out = (args.out or Path("runs") / "lfw_v1" / budget.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        experiment = Experiment(out, budget, [int(s) for s in args.seeds.split(",")], rows)
        results = experiment.write_results() if args.table_only else experiment.run()
    except LafsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((out / "results.md").read_text())
    print(f"results: {out / 'results.json'} (commit {results['commit']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
