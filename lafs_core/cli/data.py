"""``lafs data``: inspect and convert users' face data."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect face data, make few-shot subsets, write and check shards.", no_args_is_help=True)
