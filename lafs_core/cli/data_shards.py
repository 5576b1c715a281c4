"""CLI commands of this stage (registered by lafs_core.cli.main)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
