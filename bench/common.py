"""What every benchmark shares: one JSON line per result with the machine context, and timing helpers."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def git_commit() -> str:
    """The current commit of the checkout, or ``unknown``."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def context() -> dict[str, Any]:
    """Machine and software facts printed with every result."""
    return {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "commit": git_commit(),
    }


def emit(name: str, **fields: Any) -> dict[str, Any]:
    """Print one JSON line for benchmark ``name`` with its figures and the context."""
    record = {"bench": name, **fields, **context()}
    sys.stdout.write(json.dumps(record, default=float) + "\n")
    sys.stdout.flush()
    return record


def time_per_call(fn: Callable[[], Any], warmup: int = 1, iters: int = 5, min_seconds: float = 0.0) -> float:
    """Median-free simple timing: seconds per call after ``warmup`` calls (synchronising CUDA)."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    calls, start = 0, time.perf_counter()
    while calls < iters or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    sync()
    return (time.perf_counter() - start) / calls


def matmul_peak_flops(size: int = 2048, dtype: torch.dtype = torch.float32, iters: int = 5) -> float:
    """Measured dense matmul FLOP/s on this device (the denominator of model-FLOPs utilisation)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = time_per_call(lambda: a @ b, warmup=2, iters=iters)
    return 2 * size**3 / seconds
