"""No function of the packages is longer than 80 lines (docs/architecture.md): a longer one holds more than one step
of its job and is split. ``ruff``'s C901 (max-complexity 15, pyproject.toml) bounds their branching."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lafs_core", "data_tools", "flows", "lafs_cli", "experiments", "bench")
MAX_LINES = 80


def test_every_function_is_at_most_80_lines() -> None:
    long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)
