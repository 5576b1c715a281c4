"""The one precision rule: bf16 only where it is asked for or helps (CUDA with bf16), fp32 otherwise."""

from __future__ import annotations

import torch

from lafs_core.precision import autocast, autocast_dtype, full_precision


def test_precision_rule_on_cpu_and_the_contexts() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("none", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with autocast(torch.bfloat16, cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
        with full_precision(cpu):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(None, cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
