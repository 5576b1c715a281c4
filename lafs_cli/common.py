"""Helpers shared by the CLI sub-commands: config options, JSON output, and loading a model for inference."""

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
    list[str] | None, typer.Argument(help="key=value overrides, e.g. max_steps=100 model.depth=4")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object instead of text")]
ModelOption = Annotated[Path, typer.Option("--model", "-m", help="model checkpoint (ours or an official file)")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass (x2 with flip)")]
WorkersOption = Annotated[int, typer.Option("--workers", min=0, help="image decoding worker processes")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")]


def stage_config(cls: type[C], config: Path | None, preset: str | None, overrides: list[str] | None) -> C:
    """Resolve a stage config from the CLI's --config, --preset and trailing overrides."""
    return load_config(cls, config_file=config, overrides=overrides or (), preset=preset)


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
