"""`lafs finetune`: initialisation from real checkpoint files, and a short end-to-end run on real LFW shards."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from _supervised_shards import lfw_k4_shards

from data_tools.pairsets import load_pair_set
from lafs_core.config import load_config
from lafs_core.config.finetune import FinetuneConfig
from lafs_core.errors import ConfigError
from lafs_core.models.build import build_face_model
from lafs_core.models.checkpoint import export_official_state_dict, load_face_model, save_model_checkpoint
from lafs_core.models.sampler import landmark_layout
from lafs_core.train.finetune import build_finetune_model, run_finetune


@pytest.fixture(scope="module")
def k4(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return lfw_k4_shards(lfw_root, tmp_path_factory.mktemp("k4"))


@pytest.fixture(scope="module")
def init_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A pretraining-style teacher export (backbone only) and a Part fViT checkpoint (backbone + landmark CNN)."""
    root = tmp_path_factory.mktemp("init")
    model_cfg = load_config(FinetuneConfig, preset="tiny").model
    torch.manual_seed(11)
    teacher = build_face_model(model_cfg, with_landmark_cnn=False)
    torch.manual_seed(12)
    partfvit = build_face_model(model_cfg)
    teacher_path = save_model_checkpoint(root / "teacher.pt", teacher, "tiny", "pretrain")
    partfvit_path = save_model_checkpoint(root / "partfvit.pt", partfvit, "tiny", "partfvit")
    return teacher_path, partfvit_path, {"teacher": teacher.state_dict(), "partfvit": partfvit.state_dict()}


def test_init_takes_the_vit_from_the_teacher_and_the_landmark_cnn_from_partfvit(init_files) -> None:
    teacher_path, partfvit_path, states = init_files
    cfg = load_config(
        FinetuneConfig, preset="tiny", overrides=[f"init_backbone={teacher_path}", f"init_landmarks={partfvit_path}"]
    )
    face, sources = build_finetune_model(cfg)
    state = face.state_dict()
    for key, value in states["teacher"].items():
        torch.testing.assert_close(state[key], value, msg=key)
    for key, value in states["partfvit"].items():
        if key.startswith("landmark_cnn."):
            torch.testing.assert_close(state[key], value, msg=key)
    assert not torch.equal(state["backbone.pos_embed"], states["partfvit"]["backbone.pos_embed"])
    assert sources["backbone"].startswith("lafs:") and sources["landmark_cnn"].startswith("lafs:")


def test_init_refuses_a_teacher_of_another_architecture(init_files) -> None:
    teacher_path, _, _ = init_files
    cfg = load_config(FinetuneConfig, preset="tiny", overrides=[f"init_backbone={teacher_path}", "model.depth=3"])
    with pytest.raises(ConfigError, match="depth=2"):
        build_finetune_model(cfg)


@pytest.mark.slow
def test_finetune_runs_verifies_logs_and_registers(k4, init_files, mlflow_store, tmp_path) -> None:
    faces, shards = k4
    teacher_path, partfvit_path, _ = init_files
    name = f"test-finetune-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        FinetuneConfig,
        preset="tiny",
        overrides=[
            f"data_dir={shards}",
            f"output_dir={tmp_path / 'run'}",
            f"init_backbone={teacher_path}",
            f"init_landmarks={partfvit_path}",
            "global_batch_size=8",
            "micro_batch_size=4",
            "max_steps=2",
            "val_every=1",
            "num_workers=0",
            "log_every=1",
            "augment.mixup_prob=1.0",
            "freeze_landmark_cnn=false",
            f"registered_model={name}",
        ],
    )
    summary = run_finetune(cfg, [load_pair_set(faces)])

    assert summary["steps"] == 2
    assert (summary["classes"], summary["samples"], summary["accum"]) == (12, 48, 2)
    acc = summary["metrics"]["faces/acc"]
    assert 0.0 <= acc <= 1.0
    run = mlflow_store.get_run(summary["run_id"])
    assert [m.step for m in mlflow_store.get_metric_history(run.info.run_id, "faces/acc")] == [1, 2]
    reg = mlflow_store.get_metric_history(run.info.run_id, "train/landmark_reg_weight")
    assert {m.value for m in reg} == {1000.0}
    assert run.data.params["augment.mixup_prob"] == "1.0"
    versions = mlflow_store.search_model_versions(f"name='{name}'")
    assert len(versions) == 1
    assert versions[0].run_id == run.info.run_id
    for file in ("best.pt", "last.pt"):
        model = load_face_model(tmp_path / "run" / file)
        assert model.landmark_cnn is not None
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["margin"]["weight"].shape == (12, cfg.model.dim)
    assert last["best"]["step"] in (1, 2)


def test_init_from_an_official_style_ssl_teacher_needs_the_official_convention(tmp_path) -> None:
    """The official LAFS file keeps the ViT under ``teacher`` with official key names and ``backbone.`` prefixes."""
    model_cfg = load_config(FinetuneConfig, preset="tiny").model
    torch.manual_seed(13)
    source = build_face_model(model_cfg, with_landmark_cnn=False)
    official = {f"backbone.{k}": v for k, v in export_official_state_dict(source).items()}
    path = tmp_path / "checkpoint0040.pth"
    torch.save({"teacher": official, "epoch": 40}, path)
    with pytest.raises(ConfigError, match="sampler_convention=official"):
        build_finetune_model(load_config(FinetuneConfig, preset="tiny", overrides=[f"init_backbone={path}"]))
    cfg = load_config(
        FinetuneConfig, preset="tiny", overrides=[f"init_backbone={path}", "model.sampler_convention=official"]
    )
    face, sources = build_finetune_model(cfg)
    assert sources["backbone"].startswith("lafs-ssl:")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(face.state_dict()[key], value, msg=key)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_model(k4, init_files, mlflow_store, tmp_path) -> None:
    """Loader shuffle, worker augmentation (2 workers) and numpy-drawn mixup are all seeded from ``seed``."""
    _, shards = k4
    _, partfvit_path, _ = init_files

    def train(name: str) -> dict[str, torch.Tensor]:
        overrides = [f"data_dir={shards}", f"output_dir={tmp_path / name}", f"init_landmarks={partfvit_path}"]
        overrides += ["global_batch_size=8", "micro_batch_size=8", "max_steps=3", "num_workers=2"]
        overrides += ["augment.mixup_prob=1.0", "freeze_landmark_cnn=false"]
        overrides += ["val_pairs=[]", "log_model=false"]
        run_finetune(load_config(FinetuneConfig, preset="tiny", overrides=overrides))
        return torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]

    first, second = train("a"), train("b")
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0, msg=key)


def test_without_a_landmark_model_the_grid_layout_is_sampled_and_said(init_files, caplog) -> None:
    """No untrained landmark CNN: the model samples the regular layout, and the log and the sources say so."""
    caplog.set_level("INFO", logger="lafs_core.train.finetune")
    face, sources = build_finetune_model(load_config(FinetuneConfig, preset="tiny"))
    assert face.landmark_cnn is None
    assert sources["landmark_cnn"] == "none: the regular 7x7 layout"
    assert "samples the regular 7x7 layout" in caplog.text
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(face.resolve_landmarks(images), landmark_layout(49, 112).expand(2, -1, -1))


@pytest.mark.slow
def test_a_frozen_landmark_cnn_stays_as_given(k4, init_files, mlflow_store, tmp_path) -> None:
    _, shards = k4
    _, partfvit_path, states = init_files
    overrides = [f"data_dir={shards}", f"output_dir={tmp_path}", f"init_landmarks={partfvit_path}"]
    overrides += ["global_batch_size=8", "micro_batch_size=8", "max_steps=2", "num_workers=0", "val_pairs=[]"]
    summary = run_finetune(load_config(FinetuneConfig, preset="tiny", overrides=[*overrides, "log_model=false"]))
    assert summary["init"]["landmark_cnn"].endswith("(frozen)")
    trained = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    for key, value in states["partfvit"].items():
        if key.startswith("landmark_cnn."):
            torch.testing.assert_close(trained[key], value, rtol=0, atol=0, msg=key)
        elif key.startswith("backbone.blocks.0.attn.qkv"):
            assert not torch.equal(trained[key], states["teacher"][key])
