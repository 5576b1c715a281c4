"""Per-iteration schedules (DINO style): computed once as arrays, indexed by the global step.

A schedule only depends on (epochs, iterations per epoch), never on the world size, so a run resumed on a
different number of ranks continues with the same values.
"""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: float = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warm-up from ``start_warmup_value`` to ``base_value``, then half-cosine to ``final_value``.

    Value at step ``i`` after warm-up: ``final + (base - final) * (1 + cos(pi * t / T)) / 2`` with ``t``
    counted from the end of warm-up and ``T`` the number of post-warm-up steps.
    """
    total = int(epochs * iters_per_epoch)
    warmup_iters = min(round(warmup_epochs * iters_per_epoch), total)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters, endpoint=False)
    steps = np.arange(total - warmup_iters)
    span = max(len(steps), 1)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / span))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def linear_then_constant(
    start_value: float, end_value: float, ramp_epochs: int, epochs: int, iters_per_epoch: int = 1
) -> np.ndarray:
    """Linear ramp from ``start_value`` to ``end_value`` over ``ramp_epochs``, then constant.

    The DINO teacher temperature schedule (indexed per epoch when ``iters_per_epoch`` is 1, as the official
    code does; LAFS ramps 0.07 -> 0.04, i.e. downward).
    """
    ramp = np.linspace(start_value, end_value, int(ramp_epochs * iters_per_epoch))
    rest = np.full(int((epochs - ramp_epochs) * iters_per_epoch), end_value)
    return np.concatenate([ramp, rest]).astype(np.float64)


def staged_weight(epoch: int, boundaries: list[int], values: list[float]) -> float:
    """A piecewise-constant weight: ``values[i]`` for ``boundaries[i-1] <= epoch < boundaries[i]``.

    ``len(values) == len(boundaries) + 1``; the landmark regulariser uses boundaries [8, 14, 21, 28] and
    values [1000, 100, 1, 0.11, 0].
    """
    if len(values) != len(boundaries) + 1:
        raise ValueError("staged_weight needs one more value than boundaries")
    index = int(np.searchsorted(np.asarray(boundaries), epoch, side="right"))
    return float(values[index])
