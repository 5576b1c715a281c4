"""The running stack for tests/stack: one per module, stopped (and checked for leftover processes) after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stack_harness import Stack, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> Iterator[Stack]:
    """PostgreSQL, MLflow, Prefect and a process worker on 127.0.0.1 (tests/stack/stack_harness.py)."""
    with running_stack(tmp_path_factory.mktemp("stack"), shared_datasets.parent) as started:
        yield started
