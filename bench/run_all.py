"""``make bench``: the six throughput benchmarks of protocols.md section 4, their targets and a summary.

Each benchmark runs as its own subprocess (fresh interpreter, no state shared between them) and prints JSON lines;
this script collects them, checks the issue's targets (ratios measured inside one benchmark run, so they hold on a
busy machine better than absolute figures) and prints a summary table plus one ``summary`` JSON line.

    python -m bench.run_all                 # CPU sizes: about 10 minutes on 2 cores
    python -m bench.run_all --gpu           # GPU sizes: absolute images/s and MFU against the bf16 peak
    python -m bench.run_all --only ssl,mfu --out runs/bench/cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import emit

Records = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class Bench:
    """One benchmark script and its arguments at CPU and GPU size."""

    key: str
    module: str
    cpu: tuple[str, ...]
    gpu: tuple[str, ...]
    timeout_s: int = 900


BENCHES = (
    Bench(
        "models",
        "bench.bench_models",
        ("--tiny-batch", "32", "--base-batch", "4", "--iters", "2"),
        ("--tiny-batch", "256", "--base-batch", "128", "--iters", "10"),
    ),
    Bench(
        "data",
        "bench.bench_data",
        ("--images", "4000", "--preset", "tiny", "--batch-size", "32", "--loader-batches", "8"),
        ("--images", "4000", "--preset", "base", "--workers", "8", "--batch-size", "128", "--loader-batches", "20"),
    ),
    Bench(
        "ssl",
        "bench.bench_ssl",
        ("--preset", "tiny", "--batch", "16", "--iters", "3"),
        ("--preset", "base", "--batch", "64"),
    ),
    Bench(
        "eval",
        "bench.bench_eval",
        ("--images", "128", "--batch-size", "64"),
        ("--images", "8192", "--batch-size", "512", "--device", "cuda"),
    ),
    Bench("mfu", "bench.bench_mfu", ("--presets", "tiny,small"), ("--gpu", "--presets", "small,base")),
)


def lookup(records: Records, bench: str, path: str, **match: Any) -> float | None:
    """Numeric field ``path`` (dots index nested dicts) of the first ``bench`` record whose fields equal ``match``."""
    for record in records.get(bench, []):
        if not all(record.get(k) == v for k, v in match.items()):
            continue
        value: Any = record
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return float(value) if isinstance(value, int | float) else None
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` when both are known and the denominator is positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Target:
    """A figure the issue asks for: ``figure(records) >= minimum`` (``minimum`` None: report only)."""

    name: str
    minimum: float | None
    figure: Callable[[Records], float | None]
    unit: str = "x"


def views_over_reference(records: Records) -> float | None:
    """LAFS view making (landmark views + batched photometric aug + sampler) over the official per-image PIL path.

    Both from bench_ssl's view-only timings on the same in-memory faces and threads; the official path includes
    the landmark CNN on its clean copies and the per-landmark sampling loop, as the official step does.
    """
    return ratio(
        lookup(records, "ssl_step", "views_images_per_s.precomputed"),
        lookup(records, "ssl_step", "views_images_per_s.reference"),
    )


def loader_over_ssl(records: Records) -> float | None:
    """Shard loader samples/s (what the pretraining stage's loader delivers; its step makes the views) over SSL step
    images/s."""
    return ratio(
        lookup(records, "shard_loader", "samples_per_s_without_photometric"),
        lookup(records, "ssl_step", "images_per_s.precomputed"),
    )


def mfu(step: str, preset: str) -> Callable[[Records], float | None]:
    """The MFU figure of one bench_mfu record."""
    return lambda records: lookup(records, "mfu", "mfu", step=step, preset=preset)


TARGETS = (
    Target("LAFS data path vs official PIL path", 10.0, views_over_reference),
    Target(
        "SSL step: precomputed vs online landmarks", 1.5, lambda r: lookup(r, "ssl_step", "precomputed_over_online")
    ),
    Target(
        "SSL step: precomputed vs looped sampler + PIL aug",
        3.0,
        lambda r: lookup(r, "ssl_step", "precomputed_over_reference"),
    ),
    Target("precompute vs decode-only", 0.5, lambda r: lookup(r, "precompute_vs_decode", "ratio")),
    Target("loader vs SSL step consumption", 2.0, loader_over_ssl),
    Target("MFU fine-tune step (tiny)", None, mfu("finetune", "tiny"), "%"),
    Target("MFU SSL step (tiny, model only)", None, mfu("ssl_model", "tiny"), "%"),
    Target("MFU SSL step (tiny, with views)", None, mfu("ssl_full", "tiny"), "%"),
    Target("MFU fine-tune step (small)", None, mfu("finetune", "small"), "%"),
    Target("MFU SSL step (small, model only)", None, mfu("ssl_model", "small"), "%"),
)


def check(records: Records, targets: Sequence[Target] = TARGETS) -> list[dict[str, Any]]:
    """Every target with its measured figure and whether it was met (None: not measured or report-only)."""
    rows = []
    for target in targets:
        value = target.figure(records)
        met = None if value is None or target.minimum is None else value >= target.minimum
        rows.append({"target": target.name, "figure": value, "minimum": target.minimum, "unit": target.unit})
        rows[-1]["met"] = met
    return rows


def run_bench(bench: Bench, gpu: bool, log_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Run one benchmark; its JSON lines, and an error text if it failed or printed none."""
    args = bench.gpu if gpu else bench.cpu
    command = [sys.executable, "-m", bench.module, *args]
    log_path = log_dir / f"{bench.key}.log"
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=bench.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {bench.timeout_s} s"
    log_path.write_text(f"$ {' '.join(command)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    lines = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            try:
                lines.append({**json.loads(line), "wall_s": round(time.perf_counter() - start, 1)})
            except json.JSONDecodeError:
                continue
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no stderr"]
        return lines, f"exit {proc.returncode}: {tail[0]} (log {log_path})"
    return lines, None if lines else f"printed no JSON line (log {log_path})"


def format_figure(row: dict[str, Any]) -> str:
    """A figure as ``12.3x`` or ``4.5 %``."""
    if row["figure"] is None:
        return "not measured"
    if row["unit"] == "%":
        return f"{100 * row['figure']:.1f} %"
    return f"{row['figure']:.2f}x"


def summary_table(rows: Sequence[dict[str, Any]], errors: dict[str, str]) -> str:
    """Plain-text table of the targets and any benchmark failures."""
    width = max(len(r["target"]) for r in rows)
    lines = [f"{'target':<{width}}  {'figure':>12}  {'minimum':>8}  status"]
    for row in rows:
        minimum = "report" if row["minimum"] is None else f">= {row['minimum']:g}"
        status = {True: "met", False: "MISSED", None: "-"}[row["met"]]
        lines.append(f"{row['target']:<{width}}  {format_figure(row):>12}  {minimum:>8}  {status}")
    lines += [f"benchmark {key} failed: {error}" for key, error in errors.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print their JSON lines, the target table and a summary JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="GPU sizes (needs CUDA)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(b.key for b in BENCHES)}")
    parser.add_argument("--out", type=Path, default=None, help="also write every JSON line to this file")
    parser.add_argument("--summarise", type=Path, nargs="+", default=None, help="only check saved JSON-line files")
    args = parser.parse_args(argv)
    if args.summarise:
        saved = [json.loads(x) for path in args.summarise for x in path.read_text().splitlines() if x.startswith("{")]
        grouped: Records = {}
        for line in saved:
            grouped.setdefault(str(line.get("bench")), []).append(line)
        print(summary_table(check(grouped), {}))
        return 0
    chosen = {k.strip() for k in args.only.split(",") if k.strip()} or {b.key for b in BENCHES}
    log_dir = (args.out.parent if args.out else Path("runs") / "bench") / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    records: Records = {}
    errors: dict[str, str] = {}
    collected: list[dict[str, Any]] = []
    for bench in BENCHES:
        if bench.key not in chosen:
            continue
        print(f"# {bench.key}: python -m {bench.module} {' '.join(bench.gpu if args.gpu else bench.cpu)}", flush=True)
        lines, error = run_bench(bench, args.gpu, log_dir)
        for line in lines:
            print(json.dumps(line), flush=True)
            records.setdefault(str(line.get("bench")), []).append(line)
        collected += lines
        if error:
            errors[bench.key] = error
            print(f"# {bench.key} failed: {error}", flush=True)
    rows = check(records)
    print("\n" + summary_table(rows, errors) + "\n")
    summary = emit("summary", mode="gpu" if args.gpu else "cpu", targets=rows, failed=errors)
    if args.out:
        args.out.write_text("".join(json.dumps(x) + "\n" for x in [*collected, summary]))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
