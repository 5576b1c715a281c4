"""``lafs eval``: verification, IJB, registry and comparison of runs."""

from __future__ import annotations

import typer

app = typer.Typer(help="Evaluate models: 10-fold verification, IJB-B/C, registry aliases.", no_args_is_help=True)
