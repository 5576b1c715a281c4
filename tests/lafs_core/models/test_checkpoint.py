"""Checkpoint import/export: official key names map one-to-one, files round-trip with unchanged outputs."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from lafs_core.config import ModelConfig, StageConfig, load_config
from lafs_core.errors import DataError
from lafs_core.models.build import build_dino_head, build_face_model
from lafs_core.models.checkpoint import (
    convert_checkpoint,
    export_official_state_dict,
    load_checkpoint,
    load_face_model,
    official_to_ours,
    save_model_checkpoint,
)
from lafs_core.models.margin import CosFace

OFFICIAL_TABLE = Path(__file__).parent / "data" / "official_state_dict_base.tsv"


def official_base_shapes() -> dict[str, tuple[int, ...]]:
    """Official key -> shape at base size, expanded over the 12 layers."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in OFFICIAL_TABLE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        dims = tuple(int(d) for d in re.findall(r"\d+", shape))
        for i in range(12) if "{i}" in key else [None]:
            shapes[key.replace("{i}", str(i))] = dims
    return shapes


def test_every_official_base_key_maps_to_a_parameter_of_the_same_shape() -> None:
    cfg = load_config(StageConfig, preset="base").model.model_copy(update={"sampler_convention": "official"})
    with torch.device("meta"):
        ours = {f"{k}": v.shape for k, v in build_face_model(cfg).state_dict().items()}
        ours |= {f"margin.{k}": v.shape for k, v in CosFace(768, 1000).state_dict().items()}
        ours |= {f"dino_head.{k}": v.shape for k, v in build_dino_head(cfg).state_dict().items()}
    official = official_base_shapes()
    assert len(official) == 320 - 11 + 12 * 11  # 320 table rows, 11 of them once per layer
    mapped = {}
    for key, shape in official.items():
        target = official_to_ours(key)
        assert target is not None, f"{key} has no mapping"
        assert target in ours, f"{key} -> {target} is not one of our keys"
        assert tuple(ours[target]) == shape, f"{key}: {shape} vs {tuple(ours[target])}"
        mapped[target] = key
    assert set(ours) == set(mapped), f"ours without an official key: {sorted(set(ours) - set(mapped))[:5]}"


def tiny_official_cfg() -> ModelConfig:
    return load_config(StageConfig, preset="tiny").model.model_copy(
        update={
            "sampler_convention": "official",
            "attn_scale": "dim",
            "init": "official",
            "dim_head": 64,
            "landmark_range": "image",
            "landmark_head_init": "default",
        }
    )


def randomise(module: torch.nn.Module) -> None:
    """Non-trivial BN statistics and weights so that a wrong mapping changes the outputs."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.2 + (0.9 if "running_var" in name else -0.1))


def test_official_part_fvit_file_round_trips_with_no_missing_keys(tmp_path: Path) -> None:
    cfg = tiny_official_cfg()
    model = build_face_model(cfg).eval()
    randomise(model)
    margin = CosFace(cfg.dim, 17)
    state = {f"module.{k}": v for k, v in export_official_state_dict(model, margin=margin).items()}
    assert "module.stn.features.1.conv.0.weight" in state and "module.loss.weight" in state
    path = tmp_path / "Backbone_VIT_Epoch_34.pth"
    torch.save(state, path)
    loaded = load_checkpoint(path)
    assert loaded.report.kind == "official"
    assert loaded.report.missing == [] and loaded.report.unexpected == []
    rebuilt = loaded.model.eval()
    assert rebuilt.convention == "official" and rebuilt.cfg.num_landmarks == cfg.num_landmarks
    assert rebuilt.cfg.heads == cfg.heads and rebuilt.cfg.depth == cfg.depth
    torch.testing.assert_close(loaded.margin_state["weight"], margin.weight.detach())
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(rebuilt(images), model(images))
    torch.testing.assert_close(rebuilt.landmark_cnn(images), model.landmark_cnn(images))


def test_lafs_ssl_teacher_and_insightface_dicts(tmp_path: Path) -> None:
    cfg = tiny_official_cfg()
    model = build_face_model(cfg, with_landmark_cnn=False).eval()
    head = build_dino_head(cfg)
    randomise(model)
    official = export_official_state_dict(model, dino_head=head)
    teacher = {(k if k.startswith("head.") else f"backbone.{k}"): v for k, v in official.items()}
    path = tmp_path / "checkpoint0040.pth"
    torch.save({"teacher": teacher, "student": teacher, "epoch": 40, "dino_loss": {"center": torch.zeros(3)}}, path)
    loaded = load_checkpoint(path)
    assert loaded.report.kind == "lafs-ssl" and loaded.report.missing == [] and loaded.report.unexpected == []
    assert loaded.model.landmark_cnn is None
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(loaded.model.eval()(images), model(images))
    fresh = build_dino_head(loaded.model.cfg)
    fresh.load_state_dict(loaded.dino_head_state)
    x = torch.randn(3, cfg.dim)
    torch.testing.assert_close(fresh(x), head(x))
    insight = {"state_dict_backbone": {f"module.{k}": v for k, v in official.items() if not k.startswith("head.")}}
    converted = convert_checkpoint(insight)
    assert converted.kind == "insightface" and converted.unmapped == []
    assert set(converted.state) == set(model.state_dict())


def test_own_format_round_trip_and_meta(tmp_path: Path) -> None:
    cfg = load_config(StageConfig, preset="tiny").model
    model = build_face_model(cfg).eval()
    randomise(model)
    margin = CosFace(cfg.dim, 5)
    path = save_model_checkpoint(tmp_path / "out" / "model.pt", model, preset="tiny", stage="finetune", margin=margin)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
    raw = torch.load(path, weights_only=True)
    meta = raw["meta"]
    assert meta["convention"] == "centered" and meta["channel_order"] == "RGB" and meta["num_landmarks"] == 49
    assert meta["preset"] == "tiny" and meta["stage"] == "finetune" and meta["model"]["dim"] == cfg.dim
    loaded = load_face_model(path).eval()
    assert loaded.cfg == cfg
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(loaded(images), model(images))
    full = load_checkpoint(path)
    assert full.report.missing == [] and full.report.unexpected == []
    torch.testing.assert_close(full.margin_state["weight"], margin.weight.detach())


class Payload:
    """An arbitrary class: a weights-only load must refuse to build it."""


def test_bad_files_raise_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.pt"
    with pytest.raises(DataError, match="not found"):
        load_face_model(missing)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Payload()}, protocol=2))
    with pytest.raises(DataError, match="refused by weights_only loading"):
        load_face_model(evil)
    cfg = tiny_official_cfg()
    state = export_official_state_dict(build_face_model(cfg))
    state["patch_to_embedding.weight"] = torch.zeros(5, 5)
    bad = tmp_path / "shape.pt"
    torch.save(state, bad)
    with pytest.raises(DataError, match="shape"):
        load_face_model(bad)
