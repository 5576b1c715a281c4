"""Typed configuration: pydantic defaults <- preset <- YAML file <- ``key=value`` CLI overrides."""

from lafs_core.config.loader import StageConfig, config_hash, dump_config, load_config, parse_overrides
from lafs_core.config.model import ModelConfig

__all__ = ["ModelConfig", "StageConfig", "config_hash", "dump_config", "load_config", "parse_overrides"]
