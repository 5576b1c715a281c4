"""Entry point of the ``lafs`` console script."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape

from lafs_core.env import configure_offline_env
from lafs_core.errors import LafsError

app = typer.Typer(
    help="LAFS: landmark-based facial self-supervised learning, from raw faces to evaluated models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from lafs_cli import data, data_shards, embed, evaluate, export, finetune, pipeline, pretrain

    app.add_typer(data.app, name="data")
    data_shards.register(data.app)
    app.add_typer(evaluate.app, name="eval")
    finetune.register(app)
    pretrain.register(app)
    pipeline.register(app)
    embed.register(app)
    export.register(app)


_register()


def main() -> None:
    """Run the CLI; user errors print one line and exit with status 2; the stages' notices and warnings (e.g. a
    training run that is not learning) print to stderr as ``LEVEL <logger>: <what>``."""
    configure_offline_env()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for package in ("lafs_core", "data_tools"):  # what a stage decided (resumed, no landmark model, probe accuracy)
        logging.getLogger(package).setLevel(logging.INFO)
    try:
        app()
    except LafsError as exc:
        console = Console(stderr=True, soft_wrap=True)
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
