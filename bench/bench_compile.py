"""What ``torch.compile`` of the transformer blocks buys per training step (``compile: true``).

Eager and compiled copies of the same steps (the ``bench_mfu`` steps: the stages' own, built with ``compile`` off and
on) are built side by side; after the compiled copy's first two steps (the compilation, timed
separately) the two are stepped alternately, so machine noise hits both alike. One JSON line per (preset, step) with
the median step times and their ratio.

    python -m bench.bench_compile --presets tiny,small
    python -m bench.bench_compile --gpu --presets small,base
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.bench_mfu import CPU_BATCH, SSLStep, finetune_step
from bench.common import emit


def seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call (synchronised on CUDA)."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(
    name: str, eager: Callable[[], Any], compiled: Callable[[], Any], iters: int, device: torch.device, **extra: Any
) -> dict[str, Any]:
    """Compile (two steps), warm the eager copy, then alternate ``iters`` timed steps of each; emit the medians."""
    compile_s = seconds(compiled, device) + seconds(compiled, device)
    seconds(eager, device)
    seconds(eager, device)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(iters):
        times["eager"].append(seconds(eager, device))
        times["compiled"].append(seconds(compiled, device))
    median = {key: statistics.median(values) for key, values in times.items()}
    return emit(
        "compile",
        step=name,
        eager_step_s=median["eager"],
        compiled_step_s=median["compiled"],
        speedup=median["eager"] / median["compiled"],
        first_two_compiled_steps_s=compile_s,
        iters=iters,
        **extra,
    )


def main() -> None:
    """Command line: presets, batch, timed steps, --gpu."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small", help="comma-separated presets")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 128 on GPU, CPU_BATCH)")
    parser.add_argument("--iters", type=int, default=5, help="timed steps of each copy")
    parser.add_argument("--gpu", action="store_true", help="run on CUDA with bf16 autocast")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device")
    device = torch.device("cuda" if args.gpu else "cpu")
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        batch = args.batch or (128 if args.gpu else CPU_BATCH.get(preset, 8))
        extra = {"preset": preset, "batch": batch, "dtype": "bf16" if args.gpu else "fp32"}
        torch.manual_seed(0)
        eager_ssl, compiled_ssl = (SSLStep(preset, batch, 8, device, compile_blocks=c) for c in (False, True))
        compare("ssl_model", eager_ssl.model, compiled_ssl.model, args.iters, device, **extra)
        compare("ssl_full", eager_ssl.full, compiled_ssl.full, args.iters, device, **extra)
        eager_step, compiled_step = (finetune_step(preset, batch, 453, device, compile_blocks=c) for c in (False, True))
        compare("finetune", eager_step, compiled_step, args.iters, device, **extra)


if __name__ == "__main__":
    main()
