"""Helpers shared by the CLI sub-commands: config options and JSON output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from lafs_core.config import StageConfig, load_config

C = TypeVar("C", bound=StageConfig)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (overrides the preset)")]
PresetOption = Annotated[str | None, typer.Option("--preset", help="model preset: tiny, small or base")]
OverridesArgument = Annotated[
    list[str] | None, typer.Argument(help="key=value overrides, e.g. train.steps=100 model.depth=4")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object instead of text")]


def stage_config(cls: type[C], config: Path | None, preset: str | None, overrides: list[str] | None) -> C:
    """Resolve a stage config from the CLI's --config, --preset and trailing overrides."""
    return load_config(cls, config_file=config, overrides=overrides or (), preset=preset)


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
