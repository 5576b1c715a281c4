"""The one precision rule of training and evaluation: bf16 autocast where it helps, fp32 otherwise."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Amp = Literal["auto", "bf16", "none"]


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``none``: fp32; ``bf16``: bf16 autocast on any device; ``auto``: bf16 on a CUDA device that supports it,
    fp32 elsewhere (CPU bf16 matmuls are slower than fp32 ones on most CPUs)."""
    if amp == "bf16":
        return torch.bfloat16
    if amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off (fp32) inside an autocast region: for the frozen landmark CNN, whose coordinates need it."""
    return torch.autocast(device.type, enabled=False)
