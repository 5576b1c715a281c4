"""Run health: say so, once and loudly, when a training run is not learning.

A face model whose loss never leaves its starting value, or a DINO teacher that drifts to the uniform distribution,
still writes checkpoints and finishes "successfully"; without a check, that is only noticed at evaluation time.
Two checks, each made once, when a quarter of the schedule is done (``check_fraction``):

- **stalled loss**: the mean of the last ``window`` losses is not clearly below the mean of the first ``window``
  (it must fall by at least ``min_drop`` of the starting value);
- **collapsed teacher** (SSL): the teacher's mean output entropy over the last ``window`` steps is within
  ``entropy_margin`` of ln K (out_dim K), i.e. the teacher outputs the uniform distribution.

A finding is a short message; the loop logs it as a warning (the CLI prints it, the Prefect log carries it) and
tags the MLflow run (``lafs.health`` = ``stalled`` / ``collapsed``, ``lafs.health_message``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class HealthMonitor:
    """Collects per-step losses (and teacher entropies) and reports a stall or collapse once."""

    total_steps: int
    check_fraction: float = 0.25
    min_drop: float = 0.1
    window: int = 20
    out_dim: int | None = None
    entropy_margin: float = 0.02
    _first: list[float] = field(default_factory=list)
    _recent: deque[float] = field(default_factory=deque)
    _entropy: deque[float] = field(default_factory=deque)
    checked: bool = False
    findings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.window = max(1, min(self.window, self.total_steps // 8 or 1))
        self._recent = deque(maxlen=self.window)
        self._entropy = deque(maxlen=self.window)

    @property
    def check_step(self) -> int:
        """The step (1-based count of updates) at which the run is judged."""
        return max(2 * self.window, math.ceil(self.check_fraction * self.total_steps))

    def update(self, step: int, loss: float, teacher_entropy: float | None = None) -> dict[str, str]:
        """Record the loss of update number ``step`` (1-based); returns new findings (empty until the check)."""
        if len(self._first) < self.window:
            self._first.append(loss)
        self._recent.append(loss)
        if teacher_entropy is not None:
            self._entropy.append(teacher_entropy)
        if self.checked or step < self.check_step:
            return {}
        self.checked = True
        self.findings = self._judge(step)
        return self.findings

    def _judge(self, step: int) -> dict[str, str]:
        findings: dict[str, str] = {}
        start = sum(self._first) / len(self._first)
        now = sum(self._recent) / len(self._recent)
        if not (math.isfinite(now) and now <= start - self.min_drop * abs(start)):
            findings["stalled"] = (
                f"training loss has not fallen after {step} of {self.total_steps} steps: mean {now:.4g} over the "
                f"last {len(self._recent)} steps vs {start:.4g} over the first {len(self._first)} (needs a drop of "
                f"{100 * self.min_drop:.0f} %); check the learning rate, margin and data"
            )
        if self.out_dim and self._entropy:
            entropy = sum(self._entropy) / len(self._entropy)
            uniform = math.log(self.out_dim)
            if entropy >= (1 - self.entropy_margin) * uniform:
                findings["collapsed"] = (
                    f"the SSL teacher collapsed to the uniform distribution: mean entropy {entropy:.3f} over the "
                    f"last {len(self._entropy)} steps vs ln K = {uniform:.3f} (K = {self.out_dim}) at step {step}; "
                    "try a lower teacher_temp, weaker colour jitter or a higher learning rate"
                )
        return findings
