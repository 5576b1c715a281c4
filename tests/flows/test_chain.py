"""The pipeline chain: the lfw-v1 configuration resolves to the protocol's data, each stage's parameters and its
``lafs`` command follow from it, and the lfw-v1 experiment runs the same chain with its budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.lfw_v1.budgets import BUDGETS
from experiments.lfw_v1.run import budget_chain
from flows.chain import CONFIGURATIONS, Chain, configuration
from flows.params import PipelineParams


def test_lfw_v1_is_a_configuration_of_the_general_chain(shared_datasets: Path, tmp_path: Path) -> None:
    chain = Chain.of(configuration("lfw-v1", work_dir=str(tmp_path), kshot_identities=5, pool_images=40))
    lfw = shared_datasets / "lfw_deepfunneled"
    assert chain.params.unlabelled == [str(lfw / "lfw-deepfunneled")] and chain.params.labelled == str(
        lfw / "lfw-deepfunneled"
    )
    assert chain.params.exclude_pairs == str(lfw / "pairsDevTest.txt")
    subsets = chain.write_subsets()
    kshot = chain.kshot_shards(subsets)
    assert kshot.source == subsets.kshot and kshot.exclude_pairs == [] and kshot.align == "lfw-deepfunneled"
    assert "--fewshot" not in kshot.command() and kshot.command()[:4] == [
        "data",
        "shards",
        subsets.kshot,
        kshot.out_dir,
    ]
    landmark_stage = chain.landmark_stage(kshot.out_dir)
    assert landmark_stage is not None and landmark_stage.overrides[0] == "val_pairs=[]"
    cnn = chain.landmark_model(landmark_stage.out_dir)
    assert cnn == str(tmp_path / "partfvit" / "landmark_cnn.pt")
    validation = chain.validation_file()
    assert validation is not None and Path(validation).is_file()
    pool = chain.pool_shards(subsets, cnn)
    assert (pool.source, pool.exclude_pairs, pool.landmarks) == (
        str(lfw / "lfw-deepfunneled"),
        [str(lfw / "pairsDevTest.txt"), validation],
        f"cnn:{cnn}",
    )
    assert "max_inputs=40" in pool.command()
    finetune = chain.finetune(kshot.out_dir, "teacher.pt", cnn)
    command = finetune.command()
    assert command[0] == "finetune"
    assert command.index("val_pairs=[lfw-v1-val]") < command.index(f"data_dir={kshot.out_dir}")
    assert "probe_set=lfw-v1-val" in chain.pretrain(pool.out_dir).command()
    assert f"init_landmarks={cnn}" in command and chain.final_checkpoint(finetune.out_dir).endswith("finetune/last.pt")


def test_a_given_landmark_model_or_the_grid_skips_the_part_fvit(tmp_path: Path) -> None:
    common = {"unlabelled": ["yaleb"], "labelled": "att", "eval_sets": [{"data": "yale"}], "work_dir": str(tmp_path)}
    grid = Chain.of(PipelineParams(**common, landmarks="grid"))
    assert grid.landmark_stage("kshot") is None and grid.landmark_model(None) is None
    assert grid.pool_shards(grid.write_subsets(), None).landmarks == "grid"
    given = Chain.of(PipelineParams(**common, landmarks="cnn:/models/official.pth"))
    assert given.landmark_model(None) == "/models/official.pth"
    with pytest.raises(ValueError, match="train, grid or cnn:"):
        PipelineParams(**common, landmarks="mediapipe")


def test_the_experiment_runs_the_same_chain_with_its_budget(shared_datasets: Path, tmp_path: Path) -> None:
    budget = BUDGETS["smoke"]
    chain = budget_chain(tmp_path, budget)
    assert chain.params.model_dump(include={"unlabelled", "labelled", "k", "exclude_pairs", "align"}) == Chain.of(
        configuration("lfw-v1")
    ).params.model_dump(include={"unlabelled", "labelled", "k", "exclude_pairs", "align"})
    assert chain.params.pretrain_on == "labelled"  # the smoke budget pretrains on the k-shot images
    assert [s.data for s in chain.params.eval_sets] == ["lfw-v1", "att", "yaleb"]
    pretrain = chain.pretrain("pool", str(tmp_path / "row"), ("seed=3", "method=dino-grid"))
    assert pretrain.command()[-4:] == ["method=dino-grid", "data_dir=pool", f"output_dir={tmp_path / 'row'}", "--json"]


def test_the_lfw_v1_deployment_form_is_the_named_configuration() -> None:
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    form = next(d for d in spec["deployments"] if d["name"] == "pipeline-lfw-v1")["parameters"]["params"]
    assert {key: form[key] for key in CONFIGURATIONS["lfw-v1"]} == CONFIGURATIONS["lfw-v1"]
