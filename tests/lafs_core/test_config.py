"""The config system: defaults <- preset <- YAML <- overrides, validation errors and the resolved dump."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lafs_core.config import StageConfig, config_hash, dump_config, load_config, parse_overrides
from lafs_core.config.loader import PRESETS, preset_data
from lafs_core.errors import ConfigError


class DemoConfig(StageConfig):
    section = "demo_stage"
    steps: int = 10
    lr: float = 1e-3


def test_base_preset_is_the_paper_model() -> None:
    cfg = load_config(DemoConfig, preset="base")
    model = cfg.model
    assert (model.dim, model.depth, model.heads, model.dim_head, model.mlp_dim) == (768, 12, 11, 64, 2048)
    assert (model.num_landmarks, model.patch_size, model.image_size) == (196, 8, 112)
    assert model.attn_scale == "dim"
    assert not model.qkv_bias


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates_and_is_distinct(name: str) -> None:
    cfg = load_config(DemoConfig, preset=name)
    assert cfg.preset == name
    assert cfg.model.local_landmarks <= cfg.model.num_landmarks
    assert (cfg.model.heads * cfg.model.dim_head) > 0
    assert preset_data(name)["model"]["dim"] == cfg.model.dim


def test_precedence_defaults_preset_file_overrides(tmp_path: Path) -> None:
    user = tmp_path / "run.yaml"
    user.write_text(yaml.safe_dump({"preset": "tiny", "steps": 50, "model": {"depth": 3}}))
    cfg = load_config(DemoConfig, config_file=user, overrides=["lr=0.5", "model.dim=128"])
    assert cfg.preset == "tiny"
    assert cfg.steps == 50  # file beats default
    assert cfg.lr == 0.5  # override beats default
    assert cfg.model.depth == 3  # file beats preset
    assert cfg.model.dim == 128  # override beats preset
    assert cfg.model.num_landmarks == preset_data("tiny")["model"]["num_landmarks"]  # preset beats default


def test_cli_preset_override_wins_over_file(tmp_path: Path) -> None:
    user = tmp_path / "run.yaml"
    user.write_text("preset: tiny\n")
    cfg = load_config(DemoConfig, config_file=user, overrides=["preset=small"])
    assert cfg.preset == "small"
    assert cfg.model.dim == preset_data("small")["model"]["dim"]


def test_stage_section_of_preset_is_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "lafs_core.config.loader.preset_data", lambda name: {"model": {"dim": 32}, "demo_stage": {"steps": 3}}
    )
    cfg = load_config(DemoConfig, preset="tiny")
    assert (cfg.steps, cfg.model.dim) == (3, 32)


def test_overrides_parse_yaml_values() -> None:
    parsed = parse_overrides(["a.b=1", "a.c=[1, 2]", "d=true", "e=text", "f=1e-3"])
    assert parsed == {"a": {"b": 1, "c": [1, 2]}, "d": True, "e": "text", "f": 1e-3}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["steps"], "not of the form key=value"),
        (["nosuchkey=1"], "nosuchkey"),
        (["model.depth=deep"], "model.depth"),
        (["preset=huge"], "unknown preset"),
    ],
)
def test_bad_overrides_raise_config_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(DemoConfig, overrides=overrides)


def test_bad_yaml_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(DemoConfig, config_file=bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(DemoConfig, config_file=tmp_path / "missing.yaml")


def test_dump_round_trips_and_hash_tracks_content(tmp_path: Path) -> None:
    cfg = load_config(DemoConfig, preset="tiny", overrides=["steps=7"])
    path = tmp_path / "resolved.yaml"
    dump_config(cfg, path)
    again = load_config(DemoConfig, config_file=path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(DemoConfig, preset="tiny", overrides=["steps=8"])) != config_hash(cfg)
