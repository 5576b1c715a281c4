"""Load, override, save and hash stage configurations.

Precedence: pydantic defaults <- preset file (``presets/<name>.yaml``: its ``model`` section and the stage's
own section) <- user YAML file <- ``key.sub=value`` overrides. The resolved config is what every run saves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lafs_core.config.model import ModelConfig
from lafs_core.errors import ConfigError

PRESETS = ("tiny", "small", "base")


class StageConfig(BaseModel):
    """Base of every stage's config: a preset name, the model, and the stage's own fields."""

    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = ""

    preset: str = "base"
    seed: int = 0
    model: ModelConfig = ModelConfig()


C = TypeVar("C", bound=StageConfig)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def preset_data(name: str) -> dict[str, Any]:
    """The raw contents of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("lafs_core.config").joinpath("presets", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, not {type(data).__name__}")
    return data


def _parse_value(raw: str) -> Any:
    """A YAML scalar/list, with numbers such as ``1e-3`` (a string in YAML 1.1) read as floats."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        value = _parse_value(raw)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested


def load_config(
    cls: type[C],
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    preset: str | None = None,
) -> C:
    """Resolve a stage config from defaults, a preset, a YAML file and CLI overrides."""
    user = read_yaml(config_file) if config_file else {}
    cli = parse_overrides(overrides)
    name = cli.get("preset") or preset or user.get("preset") or cls.model_fields["preset"].default
    layers: dict[str, Any] = {"preset": name}
    data = preset_data(name)
    if "model" in data:
        layers["model"] = data["model"]
    if cls.section and cls.section in data:
        layers = deep_merge(layers, data[cls.section])
    layers = deep_merge(layers, user)
    layers = deep_merge(layers, cli)
    layers["preset"] = name
    try:
        return cls.model_validate(layers)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        source = f" (from {config_file})" if config_file else ""
        raise ConfigError(f"invalid {cls.__name__}{source}: {problems}") from None


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A JSON-safe dict of a config (paths become strings)."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: BaseModel, path: str | Path | None = None) -> str:
    """The resolved config as YAML; written to ``path`` when given."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


def config_hash(cfg: BaseModel) -> str:
    """A stable sha256 of the resolved config, for cache keys and resume compatibility."""
    canonical = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
